"""The Open Inference Protocol (v2, REST) over the model's contract.

KServe's and Triton's clients speak it: `GET /v2/models/<model>` for metadata and
`POST /v2/models/<model>/infer` with tensors as {"name", "shape", "datatype", "data"}.
The binary tensor extension (raw bytes after a JSON header whose length is in the
`Inference-Header-Content-Length` header) is what `tritonclient` sends by default.

An infer request becomes the project's own body ({input name: nested rows, or an array for
a binary tensor}), so the contract's checks, and their messages, are the same as on the JSON
route; the answer's arrays go back as OIP tensors.

Whatever the request holds is refused with a RequestError (a 400) rather than failing later:
NaN and Infinity anywhere (JSON has neither), nesting too deep to parse, an "id" that is
not a string, "parameters" that are not an object of booleans, numbers and strings. A tensor's
declared shape is checked first, before any of its data is read or anything allocated: its rank
and fixed axes must be the contract's, and its rows, lengths and element count within the
contract's limits; then its data (JSON values or binary bytes) must hold exactly that many values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

from pipeline.serving.common.contract import Contract, RequestError, list_shape, strict_json

HEADER_LENGTH = "Inference-Header-Content-Length"
# OIP datatype <-> numpy; BYTES (strings) has no place in a numeric contract.
DATATYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_BY_DTYPE = {np.dtype(v).name: k for k, v in DATATYPES.items()}


def datatype(dtype: str) -> str:
    return _BY_DTYPE[np.dtype(dtype).name]


def _shape(tensor: dict) -> list[int]:
    """The contract's shape with -1 for every named (dynamic) axis, as OIP writes it."""
    return [d if isinstance(d, int) else -1 for d in tensor["shape"]]


def metadata(contract: Contract, version: str, platform: str = "onnxruntime_onnx") -> dict:
    """GET /v2/models/<model>: `version` is the served archive's (archive.content_version)."""
    return {
        "name": contract.model,
        "versions": [version],
        "platform": platform,
        "inputs": [{"name": t["name"], "datatype": datatype(t["dtype"]), "shape": _shape(t)} for t in contract.inputs],
        "outputs": [{"name": t["name"], "datatype": datatype(t["dtype"]), "shape": _shape(t)} for t in contract.outputs],
    }


def _what(value) -> str:
    """A JSON value named for an error message, without quoting all of it."""
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else "null"


def _parameters(value, where: str) -> dict:
    """An OIP "parameters" object: string keys to booleans, numbers or strings (the KServe v2 spec)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f'{where}"parameters" must be an object, got {_what(value)}')
    for key, v in value.items():
        if not isinstance(v, (bool, int, float, str)):
            raise RequestError(f"{where}parameter {key!r} must be a boolean, a number or a string, got {_what(v)}")
    return value


def _flag(parameters: dict, key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(f"{where}parameter {key!r} must be true or false, got {_what(value)}")
    return value


def _split(raw: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header and the binary tail of an infer request."""
    if header_length is None:
        cut = len(raw)
    else:
        try:
            cut = int(header_length)
        except ValueError:
            raise RequestError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < cut <= len(raw):
            raise RequestError(f"{HEADER_LENGTH} is {cut}, but the body has {len(raw)} bytes")
    head = strict_json(raw[:cut], "the JSON header")
    if not isinstance(head, dict):
        raise RequestError('an OIP infer request is a JSON object: {"inputs": [{"name", "shape", "datatype", "data"}]}')
    return head, raw[cut:]


def _nest(flat: list, shape: list[int]) -> list:
    """A flat list as nested lists of `shape` (row-major), without converting its values."""
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _checked_count(name: str, shape: list[int], declared: dict, contract: Contract) -> int:
    """The values a tensor of this shape holds, once its rank, fixed axes, rows, lengths and element
    count are within the contract's: all checked from the shape alone, before any data is read."""
    rank = len(declared["shape"])
    if len(shape) != rank:  # fewer axes would otherwise pass the checks below, which read the axes by position
        raise RequestError(f"input {name!r} has {len(shape)} axes; this model's {name!r} has {rank}: {_shape(declared)}")
    fixed = [
        (axis, d, want) for axis, (d, want) in enumerate(zip(shape, declared["shape"])) if axis and isinstance(want, int) and d != want
    ]
    if fixed:
        axis, d, want = fixed[0]
        raise RequestError(f"input {name!r} is {d} long on axis {axis}; this model's {name!r} takes {want} there: {_shape(declared)}")
    contract.check_extent(name, shape)
    count = math.prod(shape)  # exact: np.prod wraps around int64 (to 0 for [2**32, 2**32])
    if count == 0:  # nesting nothing into [2**30, 0, 0] would still build 2**30 lists
        raise RequestError(f"input {name!r} has shape {shape}, which holds no values; send at least one row")
    return count


def decode_infer(raw: bytes, header_length: str | None, contract: Contract) -> tuple[dict, dict]:
    """(the project's JSON body for this request, how to answer it) from an OIP infer request."""
    head, tail = _split(raw, header_length)
    body = _decode_inputs(head.get("inputs"), tail, contract)
    binary = _binary_outputs(head, contract)
    request_id = head.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f'"id" must be a string, got {_what(request_id)}')
    return body, {"id": request_id, "binary": binary}


def _decode_inputs(inputs, tail: bytes, contract: Contract) -> dict:
    """{input name: nested rows, or an array for a binary tensor}; every byte of `tail` claimed by an input."""
    if not isinstance(inputs, list) or not inputs:
        raise RequestError('"inputs" must be a non-empty list of tensors {"name", "shape", "datatype", "data"}')
    declared = {t["name"]: t for t in contract.inputs}
    body: dict = {}
    offset = 0
    for tensor in inputs:
        name, shape, want, count = _declared_tensor(tensor, declared, body, contract)
        size = _parameters(tensor.get("parameters"), f"input {name!r}: ").get("binary_data_size")
        if size is not None:
            body[name] = _binary_tensor(name, shape, want, count, size, tail, offset)
            offset += size
        else:
            body[name] = _json_tensor(name, shape, count, tensor.get("data"))
    if offset != len(tail):
        raise RequestError(f"{len(tail) - offset} bytes of binary data follow the inputs that no input claims")
    return body


def _declared_tensor(tensor, declared: dict, body: dict, contract: Contract) -> tuple[str, list[int], str, int]:
    """(name, shape, datatype, value count) of one input tensor, checked against the contract before its data is read."""
    if not isinstance(tensor, dict):
        raise RequestError('each entry of "inputs" must be an object {"name", "shape", "datatype", "data"}')
    name = tensor.get("name")
    if not isinstance(name, str):
        raise RequestError(f"each input's name must be a string, got {_what(name)}; this model takes {list(declared)}")
    if name not in declared:
        raise RequestError(f"unknown input {name!r}; this model takes {list(declared)}")
    if name in body:
        raise RequestError(f"input {name!r} is given twice")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(f'input {name!r}: "shape" must be a list of non-negative integers, got {shape!r}')
    want = datatype(declared[name]["dtype"])
    if tensor.get("datatype") != want:
        raise RequestError(f"input {name!r} is {want}, not {tensor.get('datatype')!r}")
    return name, shape, want, _checked_count(name, shape, declared[name], contract)


def _binary_tensor(name: str, shape: list[int], want: str, count: int, size, tail: bytes, offset: int) -> np.ndarray:
    """The `size` bytes at `offset` in the binary tail, once they are exactly the tensor's."""
    item = np.dtype(DATATYPES[want]).itemsize
    if isinstance(size, bool) or not isinstance(size, int) or size != count * item or offset + size > len(tail):
        raise RequestError(
            f"input {name!r}: binary_data_size {size!r} does not match shape {shape} of {want} "
            f"({count * item} bytes) within the {len(tail) - offset} bytes left"
        )
    # Kept as an array: the contract reads it without a list per value (a 224 x 224 image is 150,528 of them).
    return np.frombuffer(tail[offset : offset + size], dtype=DATATYPES[want]).reshape(shape)


def _json_tensor(name: str, shape: list[int], count: int, values) -> list:
    """A tensor's JSON "data", once it holds exactly `count` values."""
    if not isinstance(values, list):
        raise RequestError(f'input {name!r} has no "data" list (or binary_data_size)')
    nested = any(isinstance(v, list) for v in values)
    found = math.prod(list_shape(values)) if nested else len(values)
    if found != count:  # no data at all included: nesting nothing into a large shape would build its lists anyway
        raise RequestError(f"input {name!r} has {found} values for shape {shape} ({count}); send exactly {count}")
    # Already nested: the contract checks its shape (and depth); else nested here, its size now known to be bounded.
    return values if nested else _nest(values, shape)


def _binary_outputs(head: dict, contract: Contract) -> dict[str, bool]:
    """{output name: whether to answer it as binary data}, for the outputs the request asks for (all by default)."""
    parameters = _parameters(head.get("parameters"), "")
    requested = head.get("outputs")
    outputs = [t["name"] for t in contract.outputs]
    binary: dict[str, bool] = {n: _flag(parameters, "binary_data_output", "") for n in outputs}
    if requested is not None:
        if not isinstance(requested, list) or not all(isinstance(o, dict) and o.get("name") in outputs for o in requested):
            raise RequestError(f'"outputs" must name outputs of this model: {outputs}')
        binary = {}
        for o in requested:
            where = f"output {o['name']!r}: "
            binary[o["name"]] = _flag(_parameters(o.get("parameters"), where), "binary_data", where)
    return binary


def encode_infer(answer: dict, plan: dict, contract: Contract, version: str) -> tuple[bytes, int | None]:
    """(response body, JSON header length when binary data follows) for the project's JSON answer."""
    outputs, tails = [], []
    for tensor in contract.outputs:
        name = tensor["name"]
        if name not in plan["binary"]:
            continue
        row, short = Contract.row_shapes(tensor)
        arr = np.asarray(answer[name], dtype=tensor["dtype"])
        if arr.ndim == len(short):  # a single row was answered as one row: give it its batch axis
            arr = arr[None]
        arr = arr.reshape(arr.shape + (1,) * (len(row) - len(short)))
        entry: dict = {"name": name, "datatype": datatype(tensor["dtype"]), "shape": list(arr.shape)}
        if plan["binary"][name]:
            data = np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            tails.append(data)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        outputs.append(entry)
    head: dict = {"model_name": contract.model, "model_version": version, "outputs": outputs}
    if plan.get("id") is not None:
        head["id"] = plan["id"]
    text = json.dumps(head, allow_nan=False).encode("utf-8")
    if not tails:
        return text, None
    return text + b"".join(tails), len(text)


def encode_request(feed: Mapping[str, np.ndarray], binary_output: bool = True) -> tuple[bytes, int]:
    """(body, JSON header length) of an infer request carrying `feed` as binary tensors, as tritonclient sends it."""
    inputs, tails = [], []
    for name, arr in feed.items():
        data = np.ascontiguousarray(arr).tobytes()
        inputs.append(
            {"name": name, "shape": list(arr.shape), "datatype": datatype(arr.dtype.name), "parameters": {"binary_data_size": len(data)}}
        )
        tails.append(data)
    head = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": binary_output}}).encode("utf-8")
    return head + b"".join(tails), len(head)
