"""The served I/O contract: how a JSON request becomes arrays and arrays become a JSON answer.

The package stage writes the model's contract, `io_contract.json`, into the archive from
the model's spec; every server (the TorchServe handler, and any other front end) reads it
with `Contract` and answers bad input with a `RequestError` that names the problem.

Request (simple_nn):  {"x": 5.0}            -> {"y": 11.0}
                      {"x": [1.0, 2.0, 3.0]} -> {"y": [3.0, 5.0, 7.0]}
A value is one row (its row shape, trailing 1-sized axes optional) or a list of rows;
a named axis other than "batch" (e.g. "seq") takes any length up to the contract's
`max_lengths` for it, the same for every row of a request. JSON keys are the contract's
input and output names.
Bad input gets HTTP 400 with {"error": ..., "code": 400}; with dynamic batching, one bad
request fails alone and the others in the batch are still answered.

The contract also declares the sizes its servers must carry (`limits`): the largest request
body, the largest answer, and the most one batch's answers may total. `python -m pipeline
serve` writes the first two into TorchServe's config.properties; an answer over them is a
413 for its own request only, never a TooLongFrameException that kills the worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson

from pipeline.spec import Generation, ModelSpec, tokenizer_file

MIB = 1 << 20
# TorchServe's frontend refuses a worker's message holding any one answer over its
# max_response_size, and then marks the worker dead (TooLongFrameException). Real answers
# as JSON take about 20 bytes a float32: BERT-base's 512 x 768 hidden states are ~8 MB,
# GPT-2's logits ~1 MB a token (50257 of them). 16 MiB carries both at batch 1.
MAX_RESPONSE_BYTES = 16 * MIB
# The worker sends a whole batch's answers in one message, which the frontend holds whole
# before it answers anyone, and decodes again from its start each time more of it arrives
# (copying every answer already complete). Measured with 15 MB answers in one batch: 1 took
# 0.2 s, 2 took 1.6 s, 4 took 8.5 s, and 8 (120 MB) passed the 30 s response timeout, so
# the frontend killed the worker and failed all 8. Past this, an answer is a 503 to send again.
MAX_BATCH_RESPONSE_BYTES = 32 * MIB
# The request cap, at least: 4096 rows of a small model fit in 1 MiB. Netty buffers a body
# before the token check, so the cap stays as small as the model's inputs allow.
MIN_REQUEST_BYTES = MIB
# The request cap of a model that takes images, at least: a phone's 12 MP JPEG is 3-5 MB
# (a 640 x 480 one 50-200 KB); base64 in JSON adds a third. The spec may declare more.
IMAGE_REQUEST_BYTES = 4 * MIB
# A float32 goes out as the float64 it widens to: "0.10000000149011612, " is 21 bytes; 24 covers signs and exponents.
JSON_BYTES_PER_NUMBER = 24
EXAMPLE_MAX_BYTES = 64 << 10  # larger example requests stay out of io_contract.json (the spec keeps them)
_HINT_MAX_CHARS = 1024  # an error's "send e.g." quotes the example only up to this


def request_bytes(inputs: Sequence[Mapping[str, Any]], max_lengths: Mapping[str, int]) -> int:
    """The default request cap: one row of every input as JSON (at its declared maximum
    length), rounded up to a MiB, and at least 1 MiB. A 224 x 224 RGB image is 4 MiB."""
    numbers = sum(math.prod(d if isinstance(d, int) else max_lengths.get(d, 1) for d in t["shape"][1:]) for t in inputs)
    return max(MIN_REQUEST_BYTES, -(-numbers * JSON_BYTES_PER_NUMBER // MIB) * MIB)


LIMITS = ("max_request_bytes", "max_response_bytes", "max_batch_response_bytes")
# A dynamic axis other than batch that the spec leaves unbounded gets this maximum:
# attention is quadratic in it, and one row of 16,000 tokens took 6.1 GB in seq_encoder.
DEFAULT_MAX_LENGTH = 4096
# Elements of one input in one request (rows times every other axis) where the spec
# declares no max_elements_per_request; never less than one row at its longest.
DEFAULT_MAX_ELEMENTS = 1 << 20


def max_lengths(inputs: Sequence[Mapping[str, Any]], declared: Mapping[str, int]) -> dict[str, int]:
    """The longest each dynamic axis other than batch may be: as declared, else DEFAULT_MAX_LENGTH."""
    axes = dict.fromkeys(d for t in inputs for d in t["shape"][1:] if isinstance(d, str))
    return {axis: int(declared.get(axis, DEFAULT_MAX_LENGTH)) for axis in axes}


def max_elements(inputs: Sequence[Mapping[str, Any]], lengths: Mapping[str, int], declared: int | None) -> int:
    """Elements one input may have in one request: as declared, else DEFAULT_MAX_ELEMENTS or one longest row."""
    if declared is not None:
        return int(declared)
    longest_row = max((math.prod(d if isinstance(d, int) else lengths[d] for d in t["shape"][1:]) for t in inputs), default=1)
    return max(DEFAULT_MAX_ELEMENTS, longest_row)


def limits(inputs: Sequence[Mapping[str, Any]], max_lengths: Mapping[str, int]) -> dict[str, int]:
    """The sizes a contract declares by default (`declare` writes them into the archive)."""
    return {
        "max_request_bytes": request_bytes(inputs, max_lengths),
        "max_response_bytes": MAX_RESPONSE_BYTES,
        "max_batch_response_bytes": MAX_BATCH_RESPONSE_BYTES,
    }


def small_example(example: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The example request if it is small enough to travel in io_contract.json, else None.

    A zero 224 x 224 image is 2.3 MB of JSON that compresses 350:1, which the archive's
    members check rightly takes for a zip bomb; `python -m pipeline serve` writes the spec's
    example to run/<model>/example_request.json instead.
    """
    if example is None or len(json.dumps(dict(example))) > EXAMPLE_MAX_BYTES:
        return None
    return dict(example)


def generation_section(spec: ModelSpec) -> dict[str, Any]:
    """A generation model's cache layout, token ids, caps and tokenizer: what the loop needs besides the graph."""
    gen = spec.generation
    assert gen is not None
    return {
        "tokenizer": "tokenizer.json",
        "sha256": hashlib.sha256(tokenizer_file(spec).read_bytes()).hexdigest(),
        "past": gen.cache_names("past_key_values"),
        "present": gen.cache_names("present"),
        "layers": gen.layers,
        "kv_heads": gen.kv_heads,
        "head_size": gen.head_size,
        "dtype": gen.dtype,
        "vocab_size": gen.vocab_size,
        "eos_ids": list(gen.eos_ids),
        "pad_id": gen.pad_id,
        "bos_id": gen.bos_id,
        "max_length": gen.max_length,
        "max_new_tokens": gen.max_new_tokens,
        "max_batch": gen.max_batch,
        "max_streams": gen.max_streams,
        "max_queued": gen.max_queued,
        "request_timeout_s": gen.request_timeout_s,
        "chat_template": gen.chat_template,
        "defaults": {"do_sample": gen.do_sample, "temperature": gen.temperature, "top_k": gen.top_k, "top_p": gen.top_p},
    }


def generation_layout(section: Mapping[str, Any], tokenizer: Path) -> Generation:
    """The `Generation` a contract's generation section describes (`generation_section`'s reverse), its tokenizer at `tokenizer`."""
    defaults = section.get("defaults", {})
    return Generation(
        tokenizer=tokenizer,
        layers=int(section["layers"]),
        kv_heads=int(section["kv_heads"]),
        head_size=int(section["head_size"]),
        vocab_size=int(section["vocab_size"]),
        eos_ids=tuple(int(i) for i in section["eos_ids"]),
        pad_id=int(section["pad_id"]),
        max_length=int(section["max_length"]),
        bos_id=None if section.get("bos_id") is None else int(section["bos_id"]),
        dtype=str(section["dtype"]),
        max_new_tokens=int(section["max_new_tokens"]),
        max_batch=int(section["max_batch"]),
        max_streams=int(section.get("max_streams", Generation.max_streams)),
        max_queued=int(section.get("max_queued", Generation.max_queued)),
        request_timeout_s=int(section.get("request_timeout_s", Generation.request_timeout_s)),
        chat_template=section.get("chat_template"),
        do_sample=bool(defaults.get("do_sample", False)),
        temperature=float(defaults.get("temperature", 1.0)),
        top_k=int(defaults.get("top_k", 0)),
        top_p=float(defaults.get("top_p", 1.0)),
    )


def declare(spec: ModelSpec, cuda_precision: str | None = None) -> dict[str, Any]:
    """The I/O contract a model's spec declares: what the handler reads from inside the archive.

    It declares the sizes every server must carry (`limits`), and carries the example
    request only while it is small: a 224 x 224 image stays in the spec.
    """
    inputs = [t.to_json() for t in spec.inputs]
    contract = {
        "model": spec.name,
        "inputs": inputs,
        "outputs": [t.to_json() for t in spec.outputs],
        "max_rows_per_request": spec.max_rows_per_request,
        "max_lengths": (lengths := max_lengths(inputs, spec.max_lengths)),
        "max_elements_per_request": max_elements(inputs, lengths, spec.max_elements_per_request),
        **limits(inputs, spec.max_lengths),
        **{k: v for k in ("max_request_bytes", "max_response_bytes") if (v := getattr(spec, k)) is not None},
        "cuda_precision": cuda_precision or spec.cuda_precision,
    }
    if spec.image_input is not None and spec.max_request_bytes is None:
        contract["max_request_bytes"] = max(contract["max_request_bytes"], IMAGE_REQUEST_BYTES)
    example = small_example(spec.example_request)
    if example is not None:
        contract["example_request"] = example
    # Real inputs (pipeline.serving.common.preprocess) and class names: the tokenizer travels in
    # the archive as tokenizer.json, and its hash here is what every server checks it against.
    if spec.text_input is not None:
        tokenizer = tokenizer_file(spec)
        contract["text_input"] = {
            "tokenizer": "tokenizer.json",
            "sha256": hashlib.sha256(tokenizer.read_bytes()).hexdigest(),
            "max_length": spec.text_input.max_length,
            "truncate": spec.text_input.truncate,
            "max_texts": spec.text_input.max_texts,
        }
    if spec.generation is not None:
        contract["generation"] = generation_section(spec)
    if spec.image_input is not None:
        image = dataclasses.asdict(spec.image_input)
        contract["image_input"] = {k: list(v) if isinstance(v, tuple) else v for k, v in image.items()}
    if spec.labels is not None:
        contract["labels"] = {"output": spec.labels.output, "names": list(spec.labels.names), "top_k": spec.labels.top_k}
    return contract


def _example_hint(example: Mapping[str, Any] | None, inputs: Sequence[Mapping[str, Any]]) -> str:
    """What an error suggests sending: the example when it is short, else each input's row shape."""
    if example is not None:
        text = json.dumps(example)
        if len(text) <= _HINT_MAX_CHARS:
            return text
    shapes = {t["name"]: list(Contract.row_shapes(dict(t))[1]) for t in inputs}
    return "{" + ", ".join(f'"{name}": <{f"an array of shape {shape}" if shape else "a number"}>' for name, shape in shapes.items()) + "}"


class RequestError(ValueError):
    """A request the handler refuses; the message goes back to the client."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code


def reject_constant(name: str):
    """json.loads' parse_constant: NaN and Infinity are not JSON numbers, so a request holding one is refused."""
    raise RequestError(f"{name} is not a number JSON allows; send finite numbers")


def decode_body(item: dict, example: str = '{"<input name>": <value>}') -> dict:
    """The request's JSON object, whether TorchServe already parsed it or not."""
    if not isinstance(item, dict) or ("body" not in item and "data" not in item):
        # TorchServe splits form-encoded bodies (curl -d's default type) into fields.
        raise RequestError(
            "send the request as JSON with the header Content-Type: application/json (curl -d sends a form unless told otherwise)"
        )
    body = item.get("body", item.get("data"))
    if isinstance(body, (bytes, bytearray, str)):
        if not body:
            raise RequestError(f"empty body; send a JSON object such as {example}")
        try:
            body = orjson.loads(body)  # the fast parser; it rejects what the standard one does, and more
        except orjson.JSONDecodeError:
            body = _parse_strictly(body)  # the same outcome, with the message that says why
    if body is None:
        raise RequestError(f"empty body; send a JSON object such as {example}")
    if not isinstance(body, dict):
        raise RequestError(f"body must be a JSON object with the model's inputs, got a JSON {_json_type(body)}")
    return body


def _parse_strictly(body: bytes | bytearray | str):
    """Python's own parser, for a body orjson refused: it says what is wrong (NaN, invalid UTF-8,
    an integer too long, nesting too deep) or, for what only orjson refuses (integers beyond
    64 bits, lone surrogates), parses it as before."""
    return strict_json(body, "body")


def strict_json(body: bytes | bytearray | str, what: str):
    """JSON with Python's parser, every failure a RequestError saying what is wrong with `what`."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(body, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise RequestError("JSON nested too deeply") from None
    except ValueError as exc:  # not a JSONDecodeError: an integer over Python's 4300-digit limit
        raise RequestError(f"unreadable JSON: {exc}") from None


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def _check_leaves(name: str, value, kind: str, depth: int = 0) -> None:
    """Every leaf must be a number, or true/false for a bool input (never a string, object or null); depth is bounded."""
    if depth > 32:
        raise RequestError(f"'{name}' is nested too deeply")
    if isinstance(value, list):
        for v in value:
            _check_leaves(name, v, kind, depth + 1)
        return
    if kind == "bool":
        if not (isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))):
            found = value if isinstance(value, (int, float)) else f"a {_json_type(value)}"
            raise RequestError(f"'{name}' must hold true or false (or 0 and 1), found {found}")
        return
    integer = kind == "int"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{name}' must hold numbers, found a {_json_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"'{name}' holds {value}; only finite numbers are accepted")
    if integer and isinstance(value, float) and not value.is_integer():
        raise RequestError(f"'{name}' must hold integers, found {value}")


def _fits(shape: tuple[int, ...], pattern: tuple[int | str, ...]) -> bool:
    """Whether an array shape matches a declared one; a named (dynamic) axis fits any length."""
    return len(shape) == len(pattern) and all(isinstance(p, str) or p == s for s, p in zip(shape, pattern))


def list_shape(value) -> tuple[int, ...]:
    """The shape a nested JSON list has if it is not ragged, read along its first elements only."""
    shape: list[int] = []
    while isinstance(value, list) and len(shape) <= 33:  # deeper is refused by _check_leaves
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _form(shape: tuple[int, ...], value, row: tuple[int | str, ...], short: tuple[int | str, ...]) -> tuple[bool, tuple[int, ...]] | None:
    """(whether it is one row, its shape as rows in the full row shape) for a value of this
    shape, or None if it is neither one row nor a list of rows."""
    ones = (1,) * (len(row) - len(short))
    if _fits(shape, short) and not (isinstance(value, list) and not short):
        return True, (1, *shape, *ones)
    if len(shape) == len(short) + 1 and _fits(shape[1:], short):
        return False, (*shape, *ones)
    if len(shape) == len(row) + 1 and _fits(shape[1:], row):
        return False, shape
    return None


class _InputLayout(NamedTuple):
    dtype: np.dtype
    integer: bool
    kind: str  # what its JSON leaves must be: "bool", "int" or "float"
    row: tuple[int | str, ...]
    short: tuple[int | str, ...]

    @classmethod
    def of(cls, tensor: dict) -> _InputLayout:
        dtype = np.dtype(tensor["dtype"])
        integer = bool(np.issubdtype(dtype, np.integer))
        row, short = Contract.row_shapes(tensor)
        return cls(dtype, integer, "bool" if dtype == np.bool_ else "int" if integer else "float", row, short)


class Contract:
    """The model's inputs and outputs as declared in io_contract.json."""

    def __init__(self, data: dict):
        self.model = data["model"]
        self.inputs = data["inputs"]
        self.outputs = data["outputs"]
        self.max_rows = int(data["max_rows_per_request"])
        # "fp32" or "tf32": the CUDA precision parity verified; servers create their session with it.
        self.cuda_precision = data.get("cuda_precision", "fp32")
        # A smaller variant ("int8", "fp16") says so, and names the one device its gate ran on.
        self.variant: str | None = data.get("variant")
        self.device: str | None = data.get("device")
        # What serves it: "onnxruntime" (model.onnx) or "aotinductor" (model.pt2, whose sha256 and
        # tied_to, the machine it was compiled for, are in `pt2`).
        self.engine: str = data.get("engine", "onnxruntime")
        self.pt2: dict | None = data.get("pt2")
        # ONNX Runtime intra-op threads per session, as packaged (python -m pipeline tune picks them); None: the server's choice.
        threads = data.get("intra_op_threads")
        self.intra_op_threads: int | None = None if threads is None else int(threads)
        declared = dict(data.get("max_lengths") or {})
        # Sizes in bytes (see `limits`); an archive made before they were declared gets the defaults.
        sizes = {**limits(self.inputs, declared), **{k: data[k] for k in LIMITS if k in data}}
        # The longest each dynamic axis other than batch may be ({"seq": 512}), and the elements
        # one input may have per request; an archive made before they were declared gets the defaults.
        self.max_lengths = max_lengths(self.inputs, declared)
        self.max_elements = max_elements(self.inputs, self.max_lengths, data.get("max_elements_per_request"))
        self.max_request_bytes = int(sizes["max_request_bytes"])  # the largest request body
        self.max_response_bytes = int(sizes["max_response_bytes"])  # the largest answer
        self.max_batch_response_bytes = int(sizes["max_batch_response_bytes"])  # one batch's answers together
        self.example = _example_hint(data.get("example_request"), self.inputs)
        # {"output", "names", "top_k"}: class names for a classifier's output (answers carry the top k).
        self.labels: dict | None = data.get("labels")
        # Texts or images in (pipeline.serving.common.preprocess reads them): their settings, or None.
        self.text_input: dict | None = data.get("text_input")
        # A decoder that generates (pipeline.generation): its cache layout, token ids and caps, or None.
        self.generation: dict | None = data.get("generation")
        self.image_input: dict | None = data.get("image_input")
        # Per input, what every request's checks need: worked out once, not per request.
        self._layout = {t["name"]: _InputLayout.of(t) for t in self.inputs}

    @staticmethod
    def row_shapes(tensor: dict) -> tuple[tuple[int | str, ...], tuple[int | str, ...]]:
        """The per-row shape (names for dynamic axes), and the same without trailing 1-sized axes (the short form)."""
        row = tuple(tensor["shape"][1:])
        short = row
        while short and short[-1] == 1:
            short = short[:-1]
        return row, short

    def check_extent(self, name: str, shape: Sequence[int]) -> None:
        """Refuse a request whose input `name` has this shape (batch axis first) if it has more
        rows, or is longer along a dynamic axis, than the contract declares. Every route checks
        it from the request's own description, before converting or allocating anything."""
        if shape and shape[0] > self.max_rows:
            raise RequestError(f"'{name}' has {shape[0]} rows; at most {self.max_rows} per request")
        for dim, length in zip(self._layout[name].row, shape[1:]):
            limit = self.max_lengths.get(dim) if isinstance(dim, str) else None
            if limit is not None and length > limit:
                raise RequestError(
                    f"'{name}' is {length} long along '{dim}'; this model takes at most {limit} "
                    f"(max_lengths in its contract): shorten it, or split it into pieces of at most {limit}"
                )
        elements = math.prod(shape)  # Python ints: no wrap-around, whatever the client declared
        if elements > self.max_elements:
            raise RequestError(
                f"'{name}' has {elements:,} elements in this request; this model takes at most {self.max_elements:,} "
                "per request (max_elements_per_request in its contract): send fewer rows, or shorter ones"
            )

    def to_rows(self, tensor: dict, value) -> tuple[np.ndarray, bool]:
        """(array of rows in the full row shape, whether the request sent a single row)."""
        name = tensor["name"]
        dtype, _, kind, row, short = self._layout[name]
        if isinstance(value, np.ndarray):  # a binary tensor (pipeline.serving.common.oip): typed already, no leaves to walk
            return self._array_rows(tensor, value)
        listed = _form(list_shape(value), value, row, short)
        if listed is not None:  # too many rows, a sequence past the model's positions: refused before any work on the values
            self.check_extent(name, listed[1])
        _check_leaves(name, value, kind)
        try:
            arr = np.array(value, dtype=np.float64)
        except OverflowError:  # a JSON integer beyond float64, e.g. 400 digits
            raise RequestError(f"'{name}' holds numbers too large for {dtype.name}") from None
        except ValueError:
            hint = "; send rows of different lengths as separate requests" if any(isinstance(d, str) for d in row) else ""
            raise RequestError(f"'{name}' is a ragged nested list; every row must have the same shape{hint}") from None
        form = _form(arr.shape, value, row, short)
        if form is None:
            want = "a number" if not short else f"an array of shape {list(short)}"
            raise RequestError(f"'{name}' has shape {list(arr.shape)}; expected {want} for one row, or a list of those")
        return self._rows(tensor, arr, form)

    def _array_rows(self, tensor: dict, value: np.ndarray) -> tuple[np.ndarray, bool]:
        name = tensor["name"]
        _, _, _, row, short = self._layout[name]
        form = _form(value.shape, value, row, short)
        if form is None:
            want = "a number" if not short else f"an array of shape {list(short)}"
            raise RequestError(f"'{name}' has shape {list(value.shape)}; expected {want} for one row, or a list of those")
        self.check_extent(name, form[1])
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise RequestError(f"'{name}' holds NaN or infinity; only finite numbers are accepted")
        return self._rows(tensor, value, form)

    def _rows(self, tensor: dict, arr: np.ndarray, form: tuple[bool, tuple[int, ...]]) -> tuple[np.ndarray, bool]:
        """The rows of a value read as `form`, their range and dtype checked."""
        name = tensor["name"]
        dtype, integer, _, row, _ = self._layout[name]
        single, rows = form[0], arr.reshape(form[1])
        if rows.shape[0] == 0:
            raise RequestError(f"'{name}' is an empty list; send at least one row")
        for axis, dim in enumerate(row, 1):
            if isinstance(dim, str) and rows.shape[axis] == 0:
                raise RequestError(f"'{name}' is empty along '{dim}'; send at least one element")
        low, high = tensor.get("low"), tensor.get("high")
        # Checked here, per request: out of range (an embedding index past its table)
        # ONNX Runtime would fail the whole batch instead of this one request.
        if (low is not None and rows.min() < low) or (high is not None and rows.max() > high):
            bad = rows.min() if low is not None and rows.min() < low else rows.max()
            raise RequestError(f"'{name}' holds {bad:g}; values must lie in [{low}, {high}]")
        if integer:
            info = np.iinfo(dtype)
            if rows.min() < info.min or rows.max() > info.max:
                raise RequestError(f"'{name}' holds integers outside {dtype.name}")
        with np.errstate(over="ignore"):
            cast = rows.astype(dtype)
        if not integer and not np.all(np.isfinite(cast)):
            raise RequestError(f"'{name}' holds numbers too large for {dtype.name}")
        return cast, single

    def parse(self, body: dict) -> tuple[dict[str, np.ndarray], bool]:
        expected = [t["name"] for t in self.inputs]
        unknown = sorted(set(body) - set(expected))
        if unknown:
            raise RequestError(f"unknown field(s) {unknown}; this model takes {expected}")
        missing = [n for n in expected if n not in body]
        if missing:
            raise RequestError(f'missing field(s) {missing}; send e.g. {{"{missing[0]}": ...}}')
        feed, forms = {}, set()
        for tensor in self.inputs:
            feed[tensor["name"]], single = self.to_rows(tensor, body[tensor["name"]])
            forms.add(single)
        counts = {name: len(a) for name, a in feed.items()}
        if len(set(counts.values())) > 1 or len(forms) > 1:
            raise RequestError(f"inputs disagree on the number of rows: {counts}")
        lengths: dict[str, dict[str, int]] = {}
        for tensor in self.inputs:
            for axis, dim in enumerate(tensor["shape"][1:], 1):
                if isinstance(dim, str):
                    lengths.setdefault(dim, {})[tensor["name"]] = feed[tensor["name"]].shape[axis]
        for dim, by_input in lengths.items():
            if len(set(by_input.values())) > 1:
                raise RequestError(f"inputs disagree on the length of '{dim}': {by_input}")
        return feed, forms.pop()

    def to_json(self, outputs: dict[str, np.ndarray], single: bool) -> dict:
        """The answer: each output by name, and "labels" beside them where the contract names classes (see `top_labels`)."""
        answer: dict[str, Any] = {}
        for tensor in self.outputs:
            _, short = self.row_shapes(tensor)
            rows = outputs[tensor["name"]]
            rows = rows.reshape(rows.shape[: 1 + len(short)])  # drops only the trailing 1-sized axes
            answer[tensor["name"]] = rows[0].tolist() if single else rows.tolist()
        if self.labels is not None:
            found = top_labels(outputs[self.labels["output"]], self.labels["names"], int(self.labels["top_k"]))
            answer["labels"] = found[0] if single else found
        return answer


def top_labels(scores: np.ndarray, names: Sequence[str], top_k: int) -> list:
    """The top-k class names and softmax scores along the last axis, best first, nested like the rest.

    A classifier's logits [batch, classes] give one list per row:
        [[{"label": "POSITIVE", "score": 0.93}, {"label": "NEGATIVE", "score": 0.07}], ...]
    and a token classifier's [batch, seq, classes] one such list per token of each row.
    """
    logits = np.asarray(scores, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = shifted / shifted.sum(axis=-1, keepdims=True)
    k = min(top_k, probs.shape[-1])
    best = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    picked = np.take_along_axis(probs, best, axis=-1)

    def nest(ids: np.ndarray, values: np.ndarray) -> list:
        if ids.ndim == 1:
            return [{"label": names[i], "score": float(v)} for i, v in zip(ids.tolist(), values.tolist())]
        return [nest(i, v) for i, v in zip(ids, values)]

    return nest(best, picked)
