"""The TorchServe handler: TorchServe's batch in, `Predictor.answer`, TorchServe's responses out.

The archive ships a thin entry module (`handlers/onnx_handler.py`) whose `handle` is an
`OnnxHandler` from here. Parsing, the ONNX Runtime session and encoding are
`pipeline.serving.predictor`, the code path every server shares, so every server answers
alike. Bad input gets HTTP 400 with {"error": ..., "code": 400}; with dynamic batching,
one bad request fails alone and the others in the batch are still answered.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pipeline.artifacts.names import ARCHIVE_CONTRACT, ARCHIVE_MODEL
from pipeline.serving.contract import Contract
from pipeline.serving.predictor import Predictor, open_model

# TorchServe's worker logs this line for every batch it receives (ts/protocol/otf_message_handler.py);
# its frontend then reads, parses and logs it again. It carries nothing the access log lacks.
PER_BATCH_LINE = "Backend received inference at: %d"


def drop_per_batch_line(record: logging.LogRecord) -> bool:
    """A logging filter: False for TorchServe's per-batch "Backend received inference" line."""
    return record.msg != PER_BATCH_LINE


class OnnxHandler:
    """initialize -> handle, one ONNX Runtime call per batch (per shape).

    An instance is TorchServe's entry point: `handler(data, context)`, called first with
    data None to initialise (one instance per worker; nothing happens at import).
    """

    def __init__(self):
        self.predictor: Predictor | None = None
        self.initialized = False

    @property
    def provider(self) -> str | None:
        return self.predictor.provider if self.predictor else None

    def initialize(self, context) -> None:
        """Load the contract and create the ONNX Runtime session on the worker's device."""
        props = context.system_properties
        model_dir = Path(props.get("model_dir", "."))
        contract = Contract(json.loads((model_dir / ARCHIVE_CONTRACT).read_text()))
        gpu_id = props.get("gpu_id")
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None
        # TorchServe assigns a GPU to every worker on a GPU machine; a CPU-only
        # onnxruntime there serves on the CPU, and says so.
        self.predictor = open_model(model_dir / ARCHIVE_MODEL, contract, None if gpu_id is None else int(gpu_id), threads)
        if os.environ.get("PIPELINE_WORKER_LOG_PER_BATCH") != "1":  # 1 keeps TorchServe's line, for debugging
            logging.getLogger().addFilter(drop_per_batch_line)
        self.initialized = True

    def __call__(self, data: list | None, context) -> list | None:
        if not self.initialized:
            self.initialize(context)
        if data is None:
            return None
        return self.handle(data, context)

    def handle(self, data: list, context) -> list:
        """Answer every request in the batch; a bad one gets its own status."""
        assert self.predictor is not None  # set by initialize(), which __call__ runs first
        answers = self.predictor.answer(data)
        if context is not None:
            for idx, answer in enumerate(answers):
                if answer.status != 200:
                    context.set_response_status(answer.status, "Bad Request" if answer.status == 400 else "Error", idx)
                context.set_response_content_type(idx, "application/json")
        return [a.body for a in answers]
