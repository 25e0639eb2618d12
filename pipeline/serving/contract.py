"""The served I/O contract: how a JSON request becomes arrays and arrays become a JSON answer.

The package stage writes the model's contract, `io_contract.json`, into the archive from
the model's spec; every server (the TorchServe handler, and any other front end) reads it
with `Contract` and answers bad input with a `RequestError` that names the problem.

Request (simple_nn):  {"x": 5.0}            -> {"y": 11.0}
                      {"x": [1.0, 2.0, 3.0]} -> {"y": [3.0, 5.0, 7.0]}
A value is one row (its row shape, trailing 1-sized axes optional) or a list of rows;
a named axis other than "batch" (e.g. "seq") takes any length, the same for every row
of a request. JSON keys are the contract's input and output names.
Bad input gets HTTP 400 with {"error": ..., "code": 400}; with dynamic batching, one bad
request fails alone and the others in the batch are still answered.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import numpy as np
import orjson


class RequestError(ValueError):
    """A request the handler refuses; the message goes back to the client."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code


def _reject_constant(name: str):
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
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(body, parse_constant=_reject_constant)
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
        example = data.get("example_request") or {t["name"]: "..." for t in self.inputs}
        self.example = json.dumps(example)
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

    def to_rows(self, tensor: dict, value) -> tuple[np.ndarray, bool]:
        """(array of rows in the full row shape, whether the request sent a single row)."""
        name = tensor["name"]
        dtype, integer, kind, row, short = self._layout[name]
        _check_leaves(name, value, kind)
        try:
            arr = np.array(value, dtype=np.float64)
        except OverflowError:  # a JSON integer beyond float64, e.g. 400 digits
            raise RequestError(f"'{name}' holds numbers too large for {dtype.name}") from None
        except ValueError:
            hint = "; send rows of different lengths as separate requests" if any(isinstance(d, str) for d in row) else ""
            raise RequestError(f"'{name}' is a ragged nested list; every row must have the same shape{hint}") from None
        ones = (1,) * (len(row) - len(short))
        if _fits(arr.shape, short) and not (isinstance(value, list) and not short):
            single, rows = True, arr.reshape((1, *arr.shape, *ones))
        elif arr.ndim == len(short) + 1 and _fits(arr.shape[1:], short):
            single, rows = False, arr.reshape((*arr.shape, *ones))
        elif arr.ndim == len(row) + 1 and _fits(arr.shape[1:], row):
            single, rows = False, arr
        else:
            want = "a number" if not short else f"an array of shape {list(short)}"
            raise RequestError(f"'{name}' has shape {list(arr.shape)}; expected {want} for one row, or a list of those")
        if rows.shape[0] == 0:
            raise RequestError(f"'{name}' is an empty list; send at least one row")
        if rows.shape[0] > self.max_rows:
            raise RequestError(f"'{name}' has {rows.shape[0]} rows; at most {self.max_rows} per request")
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
        answer = {}
        for tensor in self.outputs:
            _, short = self.row_shapes(tensor)
            rows = outputs[tensor["name"]]
            rows = rows.reshape(rows.shape[: 1 + len(short)])  # drops only the trailing 1-sized axes
            answer[tensor["name"]] = rows[0].tolist() if single else rows.tolist()
        return answer
