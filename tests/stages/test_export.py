import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pipeline.artifacts.manifest import Manifest


def test_batch_axis_is_symbolic_in_saved_file(built):
    _, layout = built
    model = onnx.load(str(layout.onnx))
    for value in (*model.graph.input, *model.graph.output):
        first = value.type.tensor_type.shape.dim[0]
        assert first.HasField("dim_param") and first.dim_param, f"{value.name} batch axis is fixed"
        assert not first.HasField("dim_value")
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["y"]


def test_checker_passes(built):
    _, layout = built
    onnx.checker.check_model(str(layout.onnx), full_check=True)


@pytest.mark.parametrize("batch", [1, 1000])
def test_onnxruntime_accepts_batch(built, batch):
    _, layout = built
    session = ort.InferenceSession(str(layout.onnx), providers=["CPUExecutionProvider"])
    x = np.linspace(-10, 10, batch, dtype=np.float32).reshape(batch, 1)
    (y,) = session.run(["y"], {"x": x})
    assert y.shape == (batch, 1)
    np.testing.assert_allclose(y, 2 * x + 1, atol=0.1)


def test_manifest_records_opset_and_ir(built):
    _, layout = built
    rec = Manifest(layout.root, "simple_nn").records["onnx"]
    assert rec.details["opset"]["ai.onnx"] >= 18
    assert rec.details["ir_version"] >= 8
    assert rec.details["dims"]["x"][0] == "batch"
    assert rec.settings["dynamo"] is True
