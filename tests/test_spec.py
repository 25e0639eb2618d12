import pytest

from pipeline.errors import SpecError
from pipeline.models import load_spec
from pipeline.serving.common.contract import declare
from pipeline.spec import ModelSpec
from tests.helpers import REPO


def test_builtin_default_model_contract():
    spec = load_spec("simple_nn")
    assert isinstance(spec, ModelSpec)
    assert [t.name for t in spec.inputs] == ["x"]
    assert [t.name for t in spec.outputs] == ["y"]
    assert spec.inputs[0].dynamic_axes() == {0: "batch"}
    assert declare(spec)["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 1]}]
    assert spec.source is not None and spec.source_sha256()


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(SpecError, match="(?s)no built-in model named 'nope'.*simple_nn"):
        load_spec("nope")


def test_missing_model_file():
    with pytest.raises(SpecError, match="does not exist\n"):
        load_spec("/nonexistent/my_model.py")


def test_a_mistyped_name_suggests_what_is_there(tmp_path):
    with pytest.raises(SpecError, match="no built-in model named 'simple_mn'; did you mean simple_nn\\?"):
        load_spec("simple_mn")
    (tmp_path / "my_model.py").write_text("x = 1\n")
    (tmp_path / "unrelated.py").write_text("x = 1\n")
    with pytest.raises(SpecError, match=f"model file {tmp_path}/my_modle.py does not exist; did you mean {tmp_path}/my_model.py\\?"):
        load_spec(str(tmp_path / "my_modle.py"))
    (tmp_path / "my-checkpoint").mkdir()
    with pytest.raises(SpecError, match="my-chekpoint does not exist; did you mean .*/my-checkpoint\\?"):
        load_spec(f"hf:{tmp_path / 'my-chekpoint'}")
    with pytest.raises(SpecError, match="zzz.py does not exist\n"):  # nothing close: no guess
        load_spec(str(tmp_path / "zzz.py"))


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


def test_editing_a_serving_only_field_repackages_and_retrains_nothing(project, tmp_path):
    """The example request is read by the archive only: the stages before it stay up to date."""
    import dataclasses

    from pipeline.stages import run_all, train

    source = REPO / "pipeline" / "models" / "simple_nn.py"
    model = tmp_path / "my_nn.py"
    model.write_text(source.read_text())
    # A copy of the session's simple_nn project: the same model, now a file of the user's, is up to date there.
    settings = dataclasses.replace(project[0], model=str(model))
    assert all(r.skipped for r in run_all(settings))
    model.write_text(source.read_text().replace('example_request={"x": 5.0}', 'example_request={"x": [1.0, 2.0]}') + "# a comment\n")
    again = {r.stage: r.skipped for r in run_all(settings)}
    assert again == {"train": True, "trace": True, "export": True, "pt2": True, "parity": True, "package": False}
    model.write_text(source.read_text().replace("def __init__(self, hidden: int = 16)", "def __init__(self, hidden: int = 8)"))
    assert not train.run(settings).skipped  # the model itself changed: it retrains


def test_code_hash_ignores_serving_only_arguments_and_the_names_only_they_use():
    from pipeline.spec import code_sha256

    base = b"EXAMPLE = {'x': 5.0}\nW = 3\nSPEC = ModelSpec(name='m', build=W, example_request=EXAMPLE, max_rows_per_request=10)\n"
    assert code_sha256(base) == code_sha256(base.replace(b"5.0", b"6.0").replace(b"=10", b"=20") + b"# note\n")
    assert code_sha256(base) != code_sha256(base.replace(b"W = 3", b"W = 4"))
    shared = base.replace(b"build=W", b"build=EXAMPLE")  # EXAMPLE is used by a stage too: it counts
    assert code_sha256(shared) != code_sha256(shared.replace(b"5.0", b"6.0"))


def test_the_archive_limits_can_be_set_per_model():
    import dataclasses

    spec = load_spec("bert_base")
    assert declare(spec)["max_response_bytes"] == 16 << 20
    bigger = declare(dataclasses.replace(spec, max_response_bytes=64 << 20, max_request_bytes=2 << 20))
    assert bigger["max_response_bytes"] == 64 << 20 and bigger["max_request_bytes"] == 2 << 20
    assert bigger["max_lengths"] == {"seq": 512}


def test_a_model_without_an_example_request_gets_one_row_of_its_sample_inputs():
    spec = load_spec("resnet50")
    body = spec.request_example()
    assert list(body) == ["pixel_values"] and len(body["pixel_values"]) == 3 and len(body["pixel_values"][0][0]) == 224
    assert load_spec("simple_nn").request_example() == {"x": 5.0}


def test_a_model_file_runs_once_per_version_of_it(tmp_path):
    """Every stage of one command resolves the spec: the file runs once, and again only once it changes."""
    import shutil

    path = tmp_path / "counted_model.py"
    runs = tmp_path / "runs.txt"
    body = (REPO / "pipeline" / "models" / "simple_nn.py").read_text()
    counter = f"\nwith open({str(runs)!r}, 'a') as _f:\n    _f.write('x')\n"
    path.write_text(body + counter)
    first = load_spec(str(path))
    assert load_spec(str(path)) is first and runs.read_text() == "x"
    path.write_text(body + counter + "\n# changed\n")
    assert load_spec(str(path)) is not first and runs.read_text() == "xx"
    shutil.copy(path, tmp_path / "other.py")  # the same content at another path is another model file
    load_spec(str(tmp_path / "other.py"))
    assert runs.read_text() == "xxx"
