"""Checks on untrusted model files that run before any library loads them.

ONNX Runtime follows an initializer's external-data `location` wherever it points
(`../../etc/passwd`, `/dev/zero`), so a model file is refused here, before a
session or `onnx.load` with external data ever sees it. The pipeline's own exports
embed their weights, so any external data means the file did not come from us.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import onnx

from pipeline.errors import IntegrityError

STAGE = "load"
_FIX = "use the ONNX file the export stage wrote (weights embedded): python -m pipeline export --force"


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
        yield from ((where, s.values) for s in attr.sparse_tensors)
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


def check_onnx_model(model: onnx.ModelProto, where: str, folder: Path | None = None) -> None:
    """Refuse a model whose tensors keep their data outside the file (external data)."""
    for what, tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL and not tensor.external_data:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if _escapes(location, folder):
            problem = f"points outside the model's folder ({location!r})"
        else:
            problem = f"is kept in an external file ({location!r})"
        raise IntegrityError(STAGE, f"{where}: {what} {problem}; refusing to load it: this pipeline only loads "
                             "ONNX files with their weights embedded", _FIX)


def check_onnx_bytes(data: bytes, where: str) -> onnx.ModelProto:
    """Parse a serialized model without following external data, and check it."""
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise IntegrityError(STAGE, f"{where} is not a readable ONNX model: {type(exc).__name__}: {exc}", _FIX) from None
    check_onnx_model(model, where)
    return model


def check_onnx_file(path: Path) -> onnx.ModelProto:
    """Parse `path` without loading external data and refuse it if it has any."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise IntegrityError(STAGE, f"{path} is not a readable ONNX model: {type(exc).__name__}: {exc}", _FIX) from None
    check_onnx_model(model, str(path), path.parent)
    return model
