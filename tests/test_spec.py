import pytest

from pipeline.errors import SpecError
from pipeline.spec import ModelSpec, load_spec


def test_builtin_default_model_contract():
    spec = load_spec("simple_nn")
    assert isinstance(spec, ModelSpec)
    assert [t.name for t in spec.inputs] == ["x"]
    assert [t.name for t in spec.outputs] == ["y"]
    assert spec.inputs[0].dynamic_axes() == {0: "batch"}
    assert spec.contract()["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 1]}]
    assert spec.source is not None and spec.source_sha256()


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(SpecError, match="(?s)no built-in model named 'nope'.*simple_nn"):
        load_spec("nope")


def test_missing_model_file():
    with pytest.raises(SpecError, match="does not exist"):
        load_spec("/nonexistent/my_model.py")


def test_file_without_spec(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("x = 1\n")
    with pytest.raises(SpecError, match="does not define SPEC"):
        load_spec(str(f))


def test_spec_of_wrong_type(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("SPEC = {'name': 'm'}\n")
    with pytest.raises(SpecError, match="SPEC is a dict, not a pipeline.spec.ModelSpec"):
        load_spec(str(f))


def test_spec_without_batch_axis(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "from pipeline.spec import ModelSpec, TensorSpec\n"
        "from pipeline.models.simple_nn import build, train, sample_inputs\n"
        "SPEC = ModelSpec(name='m', inputs=(TensorSpec('x', 'float32', (4, 1)),),\n"
        "    outputs=(TensorSpec('y', 'float32', ('batch', 1)),), build=build, train=train, sample_inputs=sample_inputs)\n"
    )
    with pytest.raises(SpecError, match=r"must start with the dynamic 'batch' axis"):
        load_spec(str(f))


def test_spec_with_unknown_dtype(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "from pipeline.spec import ModelSpec, TensorSpec\n"
        "from pipeline.models.simple_nn import build, train, sample_inputs\n"
        "SPEC = ModelSpec(name='m', inputs=(TensorSpec('x', 'float99', ('batch', 1)),),\n"
        "    outputs=(TensorSpec('y', 'float32', ('batch', 1)),), build=build, train=train, sample_inputs=sample_inputs)\n"
    )
    with pytest.raises(SpecError, match="unknown dtype 'float99'"):
        load_spec(str(f))


def test_a_model_path_that_is_not_python_is_a_clear_error(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("SPEC = None\n")
    with pytest.raises(SpecError, match=r"is not a Python module \(it must end in .py\)"):
        load_spec(str(path))
