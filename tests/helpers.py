"""What several test modules share: the repository root, measured figures, a fake TorchServe context."""

from __future__ import annotations

import importlib.util
import shutil
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# TorchServe's frontend is Java: tests that start a real server skip cleanly without it.
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs java (.ci/run installs it)")

# Figures measured by tests (restart time, latency ratios), printed after the run.
MEASUREMENTS: list[str] = []


class FakeContext:
    """The parts of ts.context.Context the handler uses."""

    def __init__(self, model_dir, gpu_id=None):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": 8}
        self.status: dict[int, tuple[int, str]] = {}
        self.content_type: dict[int, str] = {}

    def set_response_status(self, code=200, phrase="", idx=0):
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_type[idx] = value


def archive_handler(mar: Path, folder: Path, gpu_id=None):
    """The entry module from an archive, loaded as TorchServe loads it and initialised; and its context."""
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(folder)
    module_spec = importlib.util.spec_from_file_location(f"onnx_handler_{Path(mar).stem}_{id(folder)}", folder / "onnx_handler.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    ctx = FakeContext(folder, gpu_id)
    assert module.handle(None, ctx) is None  # TorchServe's initialise call
    return module, ctx
