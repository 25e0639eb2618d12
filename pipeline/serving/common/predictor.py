"""The one serving code path: a batch of requests in, one ONNX Runtime call per shape, answers out.

Every front end uses it: the TorchServe handler (`pipeline.serving.torchserve.handler`) and the Ray
Serve application (`pipeline.serving.ray.app`). `open_model` makes the session the way
parity verified it (the contract's CUDA precision, a CUDA session that lands on the CPU
refused); `Predictor.answer` reads each request (JSON tensors, or texts and images through
`pipeline.serving.common.preprocess`), runs, and encodes (with class names where the contract has
them), so a bad request gets the same 400 and message from every server, and fails alone
in its batch.
An answer over the contract's `max_response_bytes` is a 413 for its own request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import orjson

from pipeline.artifacts.names import ARCHIVE_PT2, ARCHIVE_TOKENIZER
from pipeline.errors import PipelineError
from pipeline.runtimes.session import SessionConfig, create_session, cuda_provider_available
from pipeline.serving.common import preprocess
from pipeline.serving.common.contract import Contract, RequestError

if TYPE_CHECKING:
    from pipeline.serving.common.generation import GenerationPredictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """One request's HTTP status and JSON body."""

    status: int
    body: bytes

    @classmethod
    def error(cls, code: int, message: str) -> Answer:
        return cls(code, orjson.dumps({"error": message, "code": code}))


def session_threads(contract: Contract, threads: int | None, default_threads: int | None = None) -> int | None:
    """Intra-op threads: the operator's explicit choice (`threads`), else the archive's contract
    (what it was packaged, and tuned, with), else the server's own default (None: ONNX Runtime's)."""
    for choice in (threads, contract.intra_op_threads, default_threads):
        if choice is not None:
            return choice
    return None


def session_config(contract: Contract, gpu_id: int | None, threads: int | None, default_threads: int | None = None) -> SessionConfig:
    """CUDA on the given GPU where this onnxruntime can, else the CPU (and a warning saying why).

    A variant runs only where its gate verified it: an int8 archive on the CPU even on a
    GPU worker, an fp16 archive on CUDA or not at all. Threads: see `session_threads`.
    """
    on_gpu = gpu_id is not None and cuda_provider_available() and contract.device != "cpu"
    if contract.device == "cuda" and not on_gpu:
        raise PipelineError(
            "serve",
            f"{contract.model} is the {contract.variant} variant, verified on CUDA only, and this worker has no CUDA "
            f"({'no GPU was assigned' if gpu_id is None else 'this onnxruntime has no CUDA provider'})",
            "serve it on a GPU machine with onnxruntime-gpu, or serve the fp32 archive (drop VARIANT=)",
        )
    if gpu_id is not None and not on_gpu and contract.device != "cpu":
        import onnxruntime as ort

        log.warning(
            "assigned GPU %s but this onnxruntime has no CUDA provider (%s): serving on the CPU", gpu_id, ort.get_available_providers()
        )
    return SessionConfig(
        device="cuda" if on_gpu else "cpu",
        threads=session_threads(contract, threads, default_threads),
        gpu_id=int(gpu_id or 0),
        precision=contract.cuda_precision,
    )


class Predictor:
    """A model's contract and its ONNX Runtime session; `answer` serves a batch of requests."""

    def __init__(self, contract: Contract, session, reader: preprocess.RequestReader | None = None):
        self.contract = contract
        self.session = session
        # Tensors as JSON; and texts or images, where the contract takes them (pipeline.serving.common.preprocess).
        self.reader = reader or preprocess.RequestReader(contract)
        self.provider = session.get_providers()[0]
        self.input_names = [t["name"] for t in contract.inputs]
        self.output_names = [t["name"] for t in contract.outputs]

    def answer(self, items: list, content_types: Sequence[str | None] | None = None) -> list[Answer]:
        """Answer every request; each item is TorchServe's {"body": bytes | str | dict} form (or its
        multipart fields), with its Content-Type where the server knows it."""
        answers: list[Answer | None] = [None] * len(items)
        parsed: list[tuple[int, dict[str, np.ndarray], bool]] = []
        for idx, item in enumerate(items):
            try:
                feed, single = self.reader.read(item, content_types[idx] if content_types else None)
                parsed.append((idx, feed, single))
            except RequestError as exc:
                answers[idx] = Answer.error(exc.code, str(exc))
        for idx, outputs, single in self.run(parsed):
            answers[idx] = self.encode(outputs, single)
        assert all(a is not None for a in answers)
        return answers  # type: ignore[return-value]  # every slot was filled above

    def run(self, parsed: list[tuple[int, dict[str, np.ndarray], bool]]):
        """(index, that request's outputs, single) for every parsed request, one ONNX Runtime call per shape.

        Requests can differ along a dynamic axis other than batch (a sequence length):
        those cannot be stacked, so each shape gets its own call. Padding would change
        the answers of a model that does not mask it.
        """
        groups: dict[tuple, list] = {}
        for entry in parsed:
            groups.setdefault(tuple(entry[1][n].shape[1:] for n in self.input_names), []).append(entry)
        for group in groups.values():
            if len(group) == 1:  # the common lone request: its arrays as they are
                batch = group[0][1]
            else:
                batch = {n: np.concatenate([feed[n] for _, feed, _ in group]) for n in self.input_names}
            outputs = dict(zip(self.output_names, self.session.run(self.output_names, batch)))
            start = 0
            for idx, feed, single in group:
                rows = len(feed[self.input_names[0]])
                yield idx, {n: v[start : start + rows] for n, v in outputs.items()}, single
                start += rows

    def encode(self, outputs: dict[str, np.ndarray], single: bool) -> Answer:
        # JSON has no NaN or Infinity (orjson would write null): refuse them here.
        if not all(np.isfinite(v).all() for v in outputs.values() if v.dtype.kind == "f"):
            return Answer.error(500, "the model produced a non-finite output for this input")
        # Every number takes at least 2 bytes ("0,"): an answer sure to be too large is not encoded to find out.
        at_least = 2 * sum(v.size for v in outputs.values())
        if at_least > self.contract.max_response_bytes:
            return self.too_large(f"at least {at_least}")
        body = orjson.dumps(self.contract.to_json(outputs, single))
        if len(body) > self.contract.max_response_bytes:
            return self.too_large(str(len(body)))
        return Answer(200, body)

    def too_large(self, size: str) -> Answer:
        """413 for an answer over the contract's limit: TorchServe's frontend would drop the worker for it."""
        axes = sorted({d for t in self.contract.inputs for d in t["shape"][1:] if isinstance(d, str)})
        less = "fewer rows" + "".join(f" or a shorter '{a}'" for a in axes)
        return Answer.error(
            413,
            f"the answer would be {size} bytes of JSON, over this model's {self.contract.max_response_bytes} "
            f"(max_response_bytes in its io_contract.json); ask for less per request: {less}",
        )


# What a server holds: a model's predictor, or a decoder's that generates.
Served = Union[Predictor, "GenerationPredictor"]


def open_model(
    model_path: Path, contract: Contract, gpu_id: int | None = None, threads: int | None = None, default_threads: int | None = None
) -> Served:
    """The predictor for an unpacked archive's model, on the GPU it was given if there is one
    (threads: `session_threads`)."""
    import onnxruntime as ort

    config = session_config(contract, gpu_id, threads, default_threads)
    tokenizer = model_path.parent / ARCHIVE_TOKENIZER  # beside the model, where the archive has one
    if contract.generation is not None:
        from pipeline.serving.common.generation import GenerationPredictor

        generator = GenerationPredictor(contract, create_session(model_path, config), config, tokenizer)
        log.info(
            "model %s (generation): ONNX Runtime %s on %s (%s)", contract.model, ort.__version__, generator.provider, config.describe()
        )
        return generator
    reader = preprocess.reader(contract, tokenizer.read_bytes() if contract.text_input else None)
    if contract.engine == "aotinductor":
        predictor = Predictor(contract, open_package(model_path.parent / ARCHIVE_PT2, contract, gpu_id, threads), reader)
        log.info("model %s: %s", contract.model, predictor.provider)
        return predictor
    predictor = Predictor(contract, create_session(model_path, config), reader)
    log.info("model %s: ONNX Runtime %s on %s (%s)", contract.model, ort.__version__, predictor.provider, config.describe())
    return predictor


def open_package(path: Path, contract: Contract, gpu_id: int | None, threads: int | None):
    """The archive's AOTInductor package, on the CPU it was compiled for, once this machine is checked against its record.

    torch is imported here, not with the module: a worker serving ONNX Runtime does not load it.
    """
    from pipeline.runtimes.pt2 import Pt2Session, check_tied

    assert contract.pt2 is not None  # the archive's inspection required the section with the engine
    check_tied(
        contract.pt2.get("tied_to", {}), "cpu", f"{contract.model}'s model.pt2", "python -m pipeline all --engine aotinductor", "serve"
    )
    if gpu_id is not None:
        log.warning(
            "assigned GPU %s, but %s serves its AOTInductor package compiled for the CPU: serving on the CPU", gpu_id, contract.model
        )
    return Pt2Session(path, [t["name"] for t in contract.inputs], "cpu", session_threads(contract, threads))
