"""A package that is missing, or installed and unable to load, is named with the reason and the fix.

The broken torchvision is the real failure, without installing torchvision: a package on
PYTHONPATH whose import registers a fake kernel for `torchvision::nms` with the installed torch,
as torchvision's `_meta_registrations` does. A torchvision built for another torch fails there
with torch's own "operator torchvision::nms does not exist"; transformers finds the package,
imports it, and re-raises the error as a ModuleNotFoundError whose name is None.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.artifacts.environment import import_failure
from tests.helpers import REPO

transformers = pytest.importorskip("transformers")

# The package layout of torchvision's failing import, and the call in it that raises.
TORCHVISION = {
    "__init__.py": "from torchvision import _meta_registrations\n",
    "_meta_registrations.py": (
        "import torch\n\n\n"
        '@torch.library.register_fake("torchvision::nms")\n'
        "def meta_nms(dets, scores, iou_threshold):\n"
        "    return dets.new_empty(0)\n"
    ),
}
# Runs the command line with transformers missing from this Python.
WITHOUT_TRANSFORMERS = "import sys; sys.modules['transformers'] = None; from pipeline import cli; raise SystemExit(cli.main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny BERT classifier saved as save_pretrained saves it, with its tokenizer."""
    from tests.test_hf_checkpoint import BERT, save, tokenizer

    config = transformers.BertConfig(**BERT, max_position_embeddings=40, id2label={0: "no", 1: "yes"})
    return save(transformers.BertForSequenceClassification(config), tmp_path_factory.mktemp("hf") / "tiny", tokenizer())


def pipeline(args: list[str], cwd: Path, python_path: tuple[Path, ...] = (), code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (*python_path, REPO)))}
    command = [sys.executable, *(["-c", code] if code else ["-m", "pipeline"]), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def fake_package(folder: Path, name: str, modules: dict[str, str]) -> Path:
    (folder / name).mkdir(parents=True)
    for module, source in modules.items():
        (folder / name / module).write_text(source)
    return folder


@pytest.mark.parametrize("model", ["hf:{checkpoint}", "vit_b16"], ids=["checkpoint folder", "built-in"])
def test_a_torchvision_that_does_not_match_torch_is_named_with_the_fix(checkpoint, tmp_path, model):
    site = fake_package(tmp_path / "site", "torchvision", TORCHVISION)
    done = pipeline(["all", "--model", model.format(checkpoint=checkpoint), "--root", str(tmp_path / "project")], tmp_path, (site,))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "importing torchvision failed with RuntimeError: operator torchvision::nms does not exist" in done.stderr, done.stderr
    torch = importlib.metadata.version("torch")
    assert "pip uninstall torchvision" in done.stderr and f"the torchvision build made for the installed torch {torch}" in done.stderr
    assert "None" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "project").exists()


def test_a_missing_transformers_is_named_with_the_extra_to_install(checkpoint, tmp_path):
    done = pipeline(["all", "--model", f"hf:{checkpoint}", "--root", str(tmp_path / "project")], tmp_path, code=WITHOUT_TRANSFORMERS)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "lacks 'transformers' (import transformers)" in done.stderr and "pip install 'pipeline[transformers]'" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_a_package_the_command_line_imports_that_cannot_load_is_named_with_the_fix(tmp_path):
    """The command line's own imports go through the same naming: here an orjson whose library is missing."""
    site = fake_package(tmp_path / "site", "orjson", {"__init__.py": 'raise ImportError("liborjson.so: cannot open shared object file")\n'})
    done = pipeline(["--help"], tmp_path, (site,))
    assert done.returncode == 1, done.stdout + done.stderr
    # The version is the installed orjson's, which the fake one stands in front of.
    assert re.search(r"importing orjson [\d.]+ failed with ImportError: liborjson.so: cannot open shared object file", done.stderr), (
        done.stderr
    )
    assert "pip install --force-reinstall orjson" in done.stderr and "Traceback" not in done.stderr


def test_the_pipelines_own_error_is_not_blamed_on_a_package():
    with pytest.raises(AttributeError) as raised:  # as a module of the pipeline raises it at import
        exec(compile("raise AttributeError('no such field')", str(REPO / "pipeline" / "models" / "broken.py"), "exec"), {})
    assert import_failure(raised.value) is None
