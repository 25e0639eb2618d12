"""The TorchServe handler: TorchServe's batch in, `Predictor.answer`, TorchServe's responses out.

The archive ships a thin entry module (`handlers/onnx_handler.py`) whose `handle` is an
`OnnxHandler` from here. Parsing, the ONNX Runtime session and encoding are
`pipeline.serving.common.predictor`, the code path every server shares, so every server answers
alike. Bad input gets HTTP 400 with {"error": ..., "code": 400}; with dynamic batching,
one bad request fails alone and the others in the batch are still answered.

TorchServe's worker sends the whole batch's answers to its frontend in one message
(ts/protocol/otf_message_handler.py, `create_predict_response`). The frontend refuses the
message if any one answer is over its max_response_size, and then drops the worker and
every request of the batch; it holds the whole message in memory either way. So before an
answer leaves, its size is checked against the contract's limits (`fit_batch`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.artifacts.names import ARCHIVE_CONTRACT, ARCHIVE_MANIFEST, ARCHIVE_MODEL
from pipeline.artifacts.version import archive_version
from pipeline.serving.common import VERSION_HEADER, oip
from pipeline.serving.common.contract import Contract, RequestError
from pipeline.serving.common.generation import NATIVE, GenerationPredictor
from pipeline.serving.common.metrics import Recorder
from pipeline.serving.common.predictor import Answer, open_model

if TYPE_CHECKING:
    from pipeline.serving.common.predictor import Served

# TorchServe's worker logs this line for every batch it receives (ts/protocol/otf_message_handler.py);
# its frontend then reads, parses and logs it again. It carries nothing the access log lacks.
PER_BATCH_LINE = "Backend received inference at: %d"
# The proxy in front of TorchServe (pipeline/serving/torchserve/proxy.py) turns `POST /v2/models/<model>/infer`
# into a prediction with this header; a client's own header of that name is removed first.
OIP_HEADER = "X-Pipeline-Protocol"


def drop_per_batch_line(record: logging.LogRecord) -> bool:
    """A logging filter: False for TorchServe's per-batch "Backend received inference" line."""
    return record.msg != PER_BATCH_LINE


def fit_batch(answers: list[Answer], budget: int) -> list[Answer]:
    """The batch's answers, with those past `budget` bytes in all turned into a 503 each.

    Each answer is already within the contract's per-answer limit (`Predictor.encode`);
    this bounds what the frontend must decode for one batch. An answer that did not fit
    beside the others would fit alone (the first one always goes), so its client is told
    to send it again.
    """
    total, fitted, sent = 0, [], False
    for answer in answers:
        if answer.status == 200 and sent and total + len(answer.body) > budget:
            answer = Answer.error(
                503,
                f"this answer ({len(answer.body)} bytes) did not fit beside the others batched with it: TorchServe takes "
                f"at most {budget} bytes of answers from one batch (max_batch_response_bytes in the model's "
                "io_contract.json); send the request again, or ask for less per request",
            )
        total += len(answer.body)
        sent = sent or answer.status == 200
        fitted.append(answer)
    return fitted


def request_header(context, idx: int, name: str) -> str | None:
    """One of the request's own headers (any case), as TorchServe hands them to the worker."""
    read = getattr(context, "get_all_request_header", None)
    headers = (read(idx) if read is not None else None) or {}
    return next((v for k, v in headers.items() if k.lower() == name.lower() and isinstance(v, str)), None)


def raw_body(item) -> bytes:
    """The request body as bytes: TorchServe has already parsed a JSON one."""
    body = item.get("body", item.get("data")) if isinstance(item, dict) else item
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    return body.encode() if isinstance(body, str) else json.dumps(body).encode()


def content_type(context, idx: int, item) -> str | None:
    """A request's Content-Type as TorchServe hands it over (ts/service.py, retrieve_data_for_inference):
    the body's own under its parameter name ({"body": {"content-type": ...}}), else the request's header."""
    read = getattr(context, "get_all_request_header", None)
    headers = (read(idx) if read is not None else None) or {}
    for name in ("body", "data"):
        if isinstance(item, dict) and name in item and isinstance(headers.get(name), dict):
            return headers[name].get("content-type")
    return next((v for k, v in headers.items() if k.lower() == "content-type" and isinstance(v, str)), None)


def read_manifest(model_dir: Path) -> dict:
    """The unpacked archive's MANIFEST.json ({} where there is none: a model folder made by hand)."""
    path = model_dir / ARCHIVE_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


class OnnxHandler:
    """initialize -> handle, one ONNX Runtime call per batch (per shape).

    An instance is TorchServe's entry point: `handler(data, context)`, called first with
    data None to initialise (one instance per worker; nothing happens at import).
    """

    def __init__(self):
        self.predictor: Served | None = None
        self.recorder: Recorder | None = None
        self.version = "unknown"
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
        # An explicit OMP_NUM_THREADS overrides the threads the archive was packaged (and tuned) with.
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None
        # TorchServe assigns a GPU to every worker on a GPU machine; a CPU-only
        # onnxruntime there serves on the CPU, and says so.
        self.predictor = open_model(model_dir / ARCHIVE_MODEL, contract, None if gpu_id is None else int(gpu_id), threads)
        # The archive's version (archive.content_version), as TorchServe registered it: in every answer and in the metrics.
        self.version = archive_version(getattr(context, "manifest", None) or read_manifest(model_dir)) or "unknown"
        self.recorder = Recorder(contract.model, self.version)
        if isinstance(self.predictor, GenerationPredictor):
            self.predictor.recorder = self.recorder
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
        """Answer every request in the batch; a bad one, or one too large to send, gets its own status.

        An Open Inference Protocol request (`POST /v2/models/<model>/infer`, which the proxy
        hands over as a prediction marked with OIP_HEADER) is decoded to the project's JSON
        body first, and its answer encoded back as OIP tensors, binary where the client asked.
        """
        predictor, recorder = self.predictor, self.recorder
        assert predictor is not None and recorder is not None  # set by initialize(), which __call__ runs first
        if isinstance(predictor, GenerationPredictor):
            return self.generate(predictor, data, context)
        started = time.perf_counter()
        recorder.batch.observe(len(data))
        with recorder.working(len(data)):
            fitted = self.answer(predictor, data, context)
        seconds = time.perf_counter() - started
        for idx, answer in enumerate(fitted):
            recorder.answered(answer.status, seconds)
            if context is not None:
                context.set_response_header(idx, VERSION_HEADER, self.version)
        return [a.body for a in fitted]

    def answer(self, predictor: Served, data: list, context) -> list[Answer]:
        """The batch's answers, statuses and content types set on the context."""
        items, types = list(data), [content_type(context, idx, item) for idx, item in enumerate(data)]
        answers: list[Answer | None] = [None] * len(items)
        plans: dict[int, dict] = {}
        for idx, item in enumerate(data):
            if context is not None and request_header(context, idx, OIP_HEADER) == "oip":
                try:
                    body, plans[idx] = oip.decode_infer(raw_body(item), request_header(context, idx, oip.HEADER_LENGTH), predictor.contract)
                except RequestError as exc:
                    answers[idx] = Answer.error(exc.code, str(exc))
                    continue
                items[idx], types[idx] = {"body": body}, "application/json"
        todo = [idx for idx, answer in enumerate(answers) if answer is None]
        for idx, answer in zip(todo, predictor.answer([items[i] for i in todo], [types[i] for i in todo])):
            answers[idx] = answer
        binary: dict[int, int] = {}
        for idx, plan in plans.items():
            done = answers[idx]
            if done is not None and done.status == 200:
                payload, header_length = oip.encode_infer(json.loads(done.body), plan, predictor.contract, self.version)
                answers[idx] = Answer(200, payload)
                if header_length is not None:
                    binary[idx] = header_length
        fitted = fit_batch([a for a in answers if a is not None], predictor.contract.max_batch_response_bytes)
        if context is not None:
            for idx, answer in enumerate(fitted):
                if answer.status != 200:
                    context.set_response_status(answer.status, HTTPStatus(answer.status).phrase, idx)
                if idx in binary and answer.status == 200:
                    context.set_response_content_type(idx, "application/octet-stream")
                    context.set_response_header(idx, oip.HEADER_LENGTH, str(binary[idx]))
                else:
                    context.set_response_content_type(idx, "application/json")
        return fitted

    def generate(self, predictor: GenerationPredictor, data: list, context) -> list:
        """One decode step for every request TorchServe's continuous batching hands over.

        A request seen for the first time is opened (refused with its status, at once, if
        anything is wrong); one that was open and is missing from this batch lost its client
        (TorchServe drops a job whose connection closed), so its generation stops here. Each
        open request gets this step's bytes; "ts_stream_next" keeps it coming back until it
        ends. A request that ends in its first step is answered whole, as any other.
        """
        ids = [context.request_ids[idx] for idx in range(len(data))]
        for gone in set(predictor.jobs) - set(ids):
            predictor.cancel(gone)
        refused: dict[int, tuple[int, bytes]] = {}
        protocols = {}
        for idx, (ident, item) in enumerate(zip(ids, data)):
            protocols[idx] = request_header(context, idx, OIP_HEADER) or NATIVE
            if ident in predictor.jobs:
                continue
            try:
                predictor.open(item, protocols[idx], ident)
            except RequestError as exc:
                refused[idx] = (exc.code, predictor.error(protocols[idx], exc.code, str(exc)))
        jobs = {ident: predictor.jobs.get(ident) for ident in ids}
        started = {ident: job is not None and job.started for ident, job in jobs.items()}
        stepped = predictor.step()
        out: list[bytes] = []
        ends: list[bool | None] = []  # TorchServe's stopping criterion: None answers whole, False streams on, True ends the stream
        for idx, ident in enumerate(ids):
            job = jobs[ident]
            if idx in refused or job is None:
                status, body = refused.get(idx, (500, predictor.error(protocols[idx], 500, "the request was lost")))
                context.set_response_status(status, HTTPStatus(status).phrase, idx)
                context.set_response_content_type(idx, "application/json")
                context.set_response_header(idx, VERSION_HEADER, self.version)
                out.append(body)
                ends.append(None)
                continue
            body, done = stepped.get(ident, (b"", False))
            if not started[ident]:
                context.set_response_status(job.status, HTTPStatus(job.status).phrase, idx)
                context.set_response_content_type(idx, job.media_type)
                context.set_response_header(idx, VERSION_HEADER, self.version)
            out.append(body)
            ends.append(None if done and not started[ident] else done)
        context.stopping_criteria = [lambda _, end=end: end for end in ends]
        return out
