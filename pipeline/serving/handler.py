"""The TorchServe handler: JSON in, ONNX Runtime, JSON out.

The archive ships a thin entry module (`handlers/onnx_handler.py`) whose `handle` is an
`OnnxHandler` from here; the request format and its errors are `pipeline.serving.contract`,
the session comes from `pipeline.runtimes.session`, so every server answers alike.
Bad input gets HTTP 400 with {"error": ..., "code": 400}; with dynamic batching, one bad
request fails alone and the others in the batch are still answered.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from pipeline.artifacts.names import ARCHIVE_CONTRACT, ARCHIVE_MODEL
from pipeline.runtimes.session import SessionConfig, create_session, cuda_provider_available
from pipeline.serving.contract import Contract, RequestError, decode_body

log = logging.getLogger(__name__)


class OnnxHandler:
    """initialize -> handle(preprocess, inference, postprocess), one ORT call per batch.

    An instance is TorchServe's entry point: `handler(data, context)`, called first with
    data None to initialise (one instance per worker; nothing happens at import).
    """

    def __init__(self):
        self.session = None
        self.contract: Contract | None = None
        self.provider = None
        self.initialized = False

    def initialize(self, context) -> None:
        """Load the contract and create the ONNX Runtime session on the worker's device."""
        import onnxruntime as ort

        props = context.system_properties
        model_dir = Path(props.get("model_dir", "."))
        self.contract = Contract(json.loads((model_dir / ARCHIVE_CONTRACT).read_text()))
        gpu_id = props.get("gpu_id")
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None
        # TorchServe assigns a GPU to every worker on a GPU machine; a CPU-only
        # onnxruntime there serves on the CPU, and says so.
        on_gpu = gpu_id is not None and cuda_provider_available()
        if gpu_id is not None and not on_gpu:
            log.warning(
                "worker was assigned GPU %s but this onnxruntime has no CUDA provider (%s): serving on the CPU",
                gpu_id,
                ort.get_available_providers(),
            )
        # The same factory and the same precision parity verified: a CUDA session
        # that lands on the CPU is refused, not served.
        config = SessionConfig(
            device="cuda" if on_gpu else "cpu", threads=threads, gpu_id=int(gpu_id or 0), precision=self.contract.cuda_precision
        )
        self.session = create_session(model_dir / ARCHIVE_MODEL, config)
        self.provider = self.session.get_providers()[0]
        log.info("model %s: ONNX Runtime %s on %s (%s)", self.contract.model, ort.__version__, self.provider, config.describe())
        self.initialized = True

    def __call__(self, data: list | None, context) -> list | None:
        if not self.initialized:
            self.initialize(context)
        if data is None:
            return None
        return self.handle(data, context)

    def handle(self, data: list, context) -> list:
        """Answer every request in the batch; a bad one gets its own 400."""
        assert self.contract is not None and self.session is not None  # set by initialize(), which __call__ runs first
        responses: list = [None] * len(data)
        parsed: list[tuple[int, dict[str, np.ndarray], bool]] = []
        for idx, item in enumerate(data):
            try:
                feed, single = self.contract.parse(decode_body(item, self.contract.example))
                parsed.append((idx, feed, single))
            except RequestError as exc:
                responses[idx] = self._error(context, idx, exc.code, str(exc))
        names = [t["name"] for t in self.contract.inputs]
        # Requests can differ along a dynamic axis other than batch (a sequence length):
        # those cannot be stacked, so each shape gets its own ONNX Runtime call. Padding
        # would change the answers of a model that does not mask it.
        groups: dict[tuple, list] = {}
        for entry in parsed:
            groups.setdefault(tuple(entry[1][n].shape[1:] for n in names), []).append(entry)
        for group in groups.values():
            batch = {n: np.concatenate([feed[n] for _, feed, _ in group]) for n in names}
            out_names = [t["name"] for t in self.contract.outputs]
            outputs = dict(zip(out_names, self.session.run(out_names, batch)))
            start = 0
            for idx, feed, single in group:
                rows = len(feed[names[0]])
                mine = {n: v[start : start + rows] for n, v in outputs.items()}
                start += rows
                responses[idx] = self._ok(context, idx, self.contract.to_json(mine, single))
        return responses

    @classmethod
    def _ok(cls, context, idx: int, answer: dict) -> bytes:
        try:
            body = json.dumps(answer, allow_nan=False).encode("utf-8")
        except ValueError:
            return cls._error(context, idx, 500, "the model produced a non-finite output for this input")
        if context is not None:
            context.set_response_content_type(idx, "application/json")
        return body

    @staticmethod
    def _error(context, idx: int, code: int, message: str) -> bytes:
        if context is not None:
            context.set_response_status(code, "Bad Request" if code == 400 else "Error", idx)
            context.set_response_content_type(idx, "application/json")
        return json.dumps({"error": message, "code": code}).encode("utf-8")
