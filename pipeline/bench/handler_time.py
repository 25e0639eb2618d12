"""The archive's handler timed on its own, without a server: µs per request at each batch size.

Run in a fresh process (`measure_in_child`), so nothing the benchmark loaded before (torch and
its threads, other sessions) shares the interpreter; p50 of single `handle` calls, after a
warm-up, with the session made as a TorchServe worker makes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pipeline.artifacts.archive import extract_model, inspect_archive
from pipeline.artifacts.names import ARCHIVE_CONTRACT
from pipeline.errors import PipelineError

BATCHES = (1, 8)
CALLS = 2000
WARMUP = 200


def measure(mar: Path, body: str, batches: tuple[int, ...] = BATCHES, calls: int = CALLS) -> dict:
    """{"us_per_request": {batch: p50 µs per request}} for the archive's handler in this process."""
    from pipeline.serving.handler import OnnxHandler

    inspect_archive(mar)  # members and model checked before anything in it is read
    out: dict = {"calls": calls, "body": body, "us_per_request": {}}
    with tempfile.TemporaryDirectory(prefix="bench-handler-") as tmp:
        extract_model(mar, Path(tmp))  # model.onnx, and model.onnx.data where it has one
        with zipfile.ZipFile(mar) as zf:
            zf.extract(ARCHIVE_CONTRACT, tmp)
        handler = OnnxHandler()
        handler(None, SimpleNamespace(system_properties={"model_dir": tmp}))
        for batch in batches:
            data = [{"body": body.encode()} for _ in range(batch)]
            for _ in range(WARMUP):
                handler.handle(data, None)
            times = np.empty(calls)
            for i in range(calls):
                start = time.perf_counter_ns()
                handler.handle(data, None)
                times[i] = time.perf_counter_ns() - start
            out["us_per_request"][str(batch)] = float(np.percentile(times, 50)) / 1e3 / batch
    return out


def measure_in_child(mar: Path, body: str, timeout: float = 300) -> dict:
    command = [sys.executable, "-m", "pipeline.bench.handler_time", str(mar), body]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise PipelineError(
            "bench", f"timing the handler failed:\n{proc.stderr.strip()[-800:]}", "run make export, then the benchmark again"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]), sys.argv[2])))
