"""Checks on untrusted model files that run before any library loads them.

ONNX Runtime follows an initializer's external-data `location` wherever it points
(`../../etc/passwd`, `/dev/zero`, even `*/_ORT_MEM_ADDR_/*`, which it reads as a raw
memory address), so a model file is checked here before a session or `onnx.load` with
external data ever sees it. The one location allowed is the model's own data file,
written by the export stage for models over protobuf's 2 GiB: `<model file name>.data`
(`model.onnx.data`), a plain name beside the model, a regular file and not a link, long
enough for every tensor that points into it. Anything else is refused.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import onnx

from pipeline.artifacts.names import data_file_name
from pipeline.errors import IntegrityError

STAGE = "load"
_FIX = "use the ONNX file the export stage wrote (weights embedded, or in its own .data file beside it): python -m pipeline export --force"
_RULE = "this pipeline only loads ONNX files with their weights embedded or in the model's own data file"


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    for t in graph.initializer:
        yield f"initializer '{t.name}'", t
    for s in graph.sparse_initializer:
        yield f"sparse initializer '{s.values.name}'", s.values
        yield f"sparse initializer '{s.values.name}' indices", s.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    for attr in node.attribute:
        where = f"node '{node.name or node.op_type}' attribute '{attr.name}'"
        if attr.HasField("t"):
            yield where, attr.t
        yield from ((where, t) for t in attr.tensors)
        if attr.HasField("sparse_tensor"):
            yield where, attr.sparse_tensor.values
            yield f"{where} indices", attr.sparse_tensor.indices
        for s in attr.sparse_tensors:
            yield where, s.values
            yield f"{where} indices", s.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def _all_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _escapes(location: str, folder: Path | None) -> bool:
    if Path(location).is_absolute() or location.startswith("\\"):
        return True
    base = (folder or Path(".")).resolve()
    return not (base / location).resolve().is_relative_to(base)


def _span(tensor: onnx.TensorProto, where: str, data_file: str) -> int:
    """Where the tensor's bytes end in the data file; refuses keys repeated or numbers that are not."""
    entries: dict[str, str] = {}
    for e in tensor.external_data:
        if e.key in entries:
            # Readers differ on which of two entries wins: one checked here, the other followed.
            raise IntegrityError(STAGE, f"{where} names its external-data key {e.key!r} twice; refusing to load it", _FIX)
        entries[e.key] = e.value
    try:
        offset, length = int(entries.get("offset", "0")), int(entries["length"])
    except (KeyError, ValueError):
        raise IntegrityError(
            STAGE, f"{where} points into {data_file!r} without a whole-number offset and length ({entries}); refusing to load it", _FIX
        ) from None
    if offset < 0 or length < 0:
        raise IntegrityError(STAGE, f"{where} has a negative offset or length in {data_file!r} ({entries}); refusing to load it", _FIX)
    return offset + length


def check_onnx_model(model: onnx.ModelProto, where: str, folder: Path | None = None, data_file: str | None = None) -> int | None:
    """Refuse a model whose tensors keep data anywhere but `data_file` (a plain name beside it).

    Returns how many bytes of `data_file` its tensors need, or None when it has no external data.
    """
    need: int | None = None
    for what, tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL and not tensor.external_data:
            continue
        locations = [e.value for e in tensor.external_data if e.key == "location"]
        location = locations[0] if locations else ""
        if data_file is None or locations != [data_file]:
            if _escapes(location, folder):
                problem = f"points outside the model's folder ({location!r})"
            else:
                problem = f"is kept in an external file ({location!r})"
            own = f" ({data_file!r} beside it)" if data_file else ""
            raise IntegrityError(STAGE, f"{where}: {what} {problem}; refusing to load it: {_RULE}{own}", _FIX)
        need = max(need or 0, _span(tensor, f"{where}: {what}", data_file))
    return need


def check_data_size(need: int, size: int | None, where: str, data_file: str) -> None:
    """Refuse a data file that is missing or shorter than the model's tensors need."""
    if size is None:
        raise IntegrityError(
            STAGE,
            f"{where} keeps its weights in {data_file!r}, which is not beside it",
            f"put the model's {data_file} beside it, or {_FIX}",
        )
    if need > size:
        raise IntegrityError(
            STAGE,
            f"{where}: its tensors need {need} bytes of {data_file!r}, which holds {size}; the data file is truncated "
            "or belongs to another model",
            _FIX,
        )


def check_onnx_bytes(data: bytes, where: str, data_file: str | None = None) -> tuple[onnx.ModelProto, int | None]:
    """Parse a serialized model without following external data, and check it (see `check_onnx_model`)."""
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise IntegrityError(STAGE, f"{where} is not a readable ONNX model: {type(exc).__name__}: {exc}", _FIX) from None
    return model, check_onnx_model(model, where, None, data_file)


def data_file_size(path: Path) -> int | None:
    """The size of the data file at `path`, None if there is none; refused unless it is a regular file, not a link."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise IntegrityError(STAGE, f"{path} is {kind}; refusing to read a model's weights through it", _FIX)
    return info.st_size


def check_onnx_file(path: Path) -> onnx.ModelProto:
    """Parse `path` without loading external data; refuse it unless any is in its own data file beside it."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise IntegrityError(STAGE, f"{path} is not a readable ONNX model: {type(exc).__name__}: {exc}", _FIX) from None
    data_file = data_file_name(path.name)
    need = check_onnx_model(model, str(path), path.parent, data_file)
    if need is not None:
        check_data_size(need, data_file_size(path.parent / data_file), str(path), data_file)
    return model
