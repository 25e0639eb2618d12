"""What several test modules share: the repository root, measured figures, a fake TorchServe context."""

from __future__ import annotations

import importlib.util
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# TorchServe's frontend is Java: tests that start a real server skip cleanly without it.
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs java (.ci/run installs it)")


class FakeContext:
    """The parts of ts.context.Context the handler uses."""

    def __init__(self, model_dir, gpu_id=None):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": 8}
        self.status: dict[int, tuple[int, str]] = {}
        self.content_type: dict[int, str] = {}
        self.headers: dict[int, dict[str, str]] = {}

    def set_response_status(self, code=200, phrase="", idx=0):
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_type[idx] = value

    def set_response_header(self, idx, key, value):
        self.headers.setdefault(idx, {})[key] = value


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


def interleaved_p50_us(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """name -> median µs of each call, timed in turn within every round after one untimed round: a machine
    that slows down part way slows every call alike, so the figures compare with each other on a loaded machine."""
    for call in calls.values():
        call()
    times = {name: np.empty(rounds) for name in calls}
    for i in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter_ns()
            call()
            times[name][i] = time.perf_counter_ns() - start
    return {name: float(np.median(t)) / 1e3 for name, t in times.items()}


def copy_root(built: Path, dest: Path) -> Path:
    """A private copy at `dest` of a project folder a shared fixture built (which no test may modify), free to write
    into; `dest` may exist already (a test's tmp_path). A server's run/ folder (sockets, pid files) stays behind."""
    shutil.copytree(built, dest, ignore=lambda folder, names: ["run"] if Path(folder) == Path(built) else [], dirs_exist_ok=True)
    return Path(dest)


def small_wide_mlp(folder: Path, width: int = 16, depth: int = 3) -> Path:
    """A copy of tests/fixtures/wide_mlp.py (2.4 GB) with a small WIDTH and DEPTH: the same code, kilobytes of weights."""
    source = (REPO / "tests" / "fixtures" / "wide_mlp.py").read_text()
    small = source.replace("\nWIDTH = 8192\n", f"\nWIDTH = {width}\n").replace("\nDEPTH = 9\n", f"\nDEPTH = {depth}\n")
    assert small.count(f"WIDTH = {width}\n") == 1 and small.count(f"DEPTH = {depth}\n") == 1, "wide_mlp.py's constants moved"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "wide_mlp.py"
    path.write_text(small)
    return path


def external_data_project(root: Path):
    """(Settings, Layout) of a project where every stage ran for the small wide MLP, its weights forced into model.onnx.data."""
    from pipeline.settings import Layout, Settings
    from pipeline.stages import export, package, parity, trace, train

    settings = Settings(model=str(small_wide_mlp(root / "models")), root=root, parity_batch_sizes=(1, 2, 7))
    train.run(settings)
    trace.run(settings)
    export.run(settings, external_data_threshold=0)
    parity.run(settings)
    package.run(settings)
    return settings, Layout(root.resolve(), "wide_mlp")
