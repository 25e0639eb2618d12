"""The archive's handler timed on its own, without a server: µs per request at each batch size.

Run in a fresh process (`measure_in_child`), so nothing the benchmark loaded before (torch and
its threads, other sessions) shares the interpreter; p50 of single `handle` calls, after a
warm-up, with the session made as a TorchServe worker makes it. Where the request is an image
or a text, its preprocessing alone (the archive's reader: decoding and resizing, or
tokenizing) is timed too, so the report shows it apart from the model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pipeline.artifacts.archive import extract_model, inspect_archive
from pipeline.artifacts.names import ARCHIVE_CONTRACT
from pipeline.errors import PipelineError

BATCHES = (1, 8)
CALLS = 2000
MIN_CALLS = 20
BUDGET_S = 4.0


def p50_us(call: Callable[[], object], calls: int) -> float:
    """The median of up to `calls` timed calls, after a tenth as many untimed ones, in µs; fewer
    where one call is slow (a real model), so that each measurement takes about BUDGET_S."""
    start = time.perf_counter()
    call()
    calls = int(min(calls, max(MIN_CALLS, BUDGET_S / max(time.perf_counter() - start, 1e-9))))
    for _ in range(calls // 10):
        call()
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter_ns()
        call()
        times[i] = time.perf_counter_ns() - start
    return float(np.percentile(times, 50)) / 1e3


def measure(mar: Path, body: bytes, preprocessed: bool = False, batches: tuple[int, ...] = BATCHES, calls: int = CALLS) -> dict:
    """{"us_per_request": {batch: p50 µs per request}} for the archive's handler in this process,
    and "preprocess_us_per_request" (the reader alone, one request) where `preprocessed`."""
    from pipeline.serving.common.predictor import Predictor
    from pipeline.serving.torchserve.handler import OnnxHandler

    inspect_archive(mar)  # members and model checked before anything in it is read
    out: dict = {"calls": calls, "body_bytes": len(body), "us_per_request": {}}
    with tempfile.TemporaryDirectory(prefix="bench-handler-") as tmp:
        extract_model(mar, Path(tmp))  # model.onnx, model.onnx.data and tokenizer.json where it has them
        with zipfile.ZipFile(mar) as zf:
            zf.extract(ARCHIVE_CONTRACT, tmp)
        handler = OnnxHandler()
        handler(None, SimpleNamespace(system_properties={"model_dir": tmp}))
        predictor = handler.predictor
        assert predictor is not None
        # Each call gets its own items, as TorchServe hands them over; a JPEG's type is read from its first bytes.
        for batch in batches:
            items = [{"body": body} for _ in range(batch)]
            out["us_per_request"][str(batch)] = p50_us(lambda: handler.handle(list(items), None), calls) / batch  # noqa: B023
        if preprocessed and isinstance(predictor, Predictor):  # a decoder's prompts are read by its generation loop
            out["preprocess_us_per_request"] = p50_us(lambda: predictor.reader.read({"body": body}, None), calls)
    return out


def measure_in_child(mar: Path, body: bytes, preprocessed: bool = False, timeout: float = 600) -> dict:
    with tempfile.NamedTemporaryFile(prefix="bench-body-") as f:
        f.write(body)
        f.flush()
        command = [sys.executable, "-m", "pipeline.bench.handler_time", str(mar), f.name, "preprocessed" if preprocessed else "tensors"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise PipelineError(
            "bench", f"timing the handler failed:\n{proc.stderr.strip()[-800:]}", "run python -m pipeline all, then the benchmark again"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]), Path(sys.argv[2]).read_bytes(), sys.argv[3] == "preprocessed")))
