"""External data: exactly the model's own data file beside it is loaded, nothing else.

Also the archive's size rules for a data member over 2 GiB, and `files.atomic_files`,
which writes a model and its data file as one pair.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.artifacts import archive, files
from pipeline.artifacts.safety import check_onnx_bytes, check_onnx_file
from pipeline.errors import IntegrityError
from pipeline.runtimes.session import create_session

W = np.arange(12, dtype=np.float32).reshape(3, 4)  # y = x @ W, 48 bytes of weights


def write_model(folder, name="model.onnx", location="model.onnx.data"):
    """y = x @ W with W in external data at `location`; the data file is written beside the model."""
    weight = numpy_helper.from_array(W, "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(W.nbytes))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    path = folder / name
    path.write_bytes(model.SerializeToString())
    (folder / f"{name}.data").write_bytes(W.tobytes())
    return path


def with_location(path, *locations, **entries):
    """The model at `path` rewritten so its weight's external-data entries are `locations` (and `entries`)."""
    model = onnx.load(str(path), load_external_data=False)
    tensor = model.graph.initializer[0]
    del tensor.external_data[:]
    for value in locations:
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", value
    for key, value in {"offset": "0", "length": str(W.nbytes), **entries}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    path.write_bytes(model.SerializeToString())
    return path


def test_the_models_own_data_file_beside_it_is_loaded(tmp_path):
    path = write_model(tmp_path)
    check_onnx_file(path)
    onnx.checker.check_model(str(path), full_check=True)
    x = np.ones((2, 3), dtype=np.float32)
    (y,) = create_session(path).run(["y"], {"x": x})
    np.testing.assert_allclose(y, x @ W)


@pytest.mark.parametrize(
    "location, problem",
    [
        ("/etc/passwd", "points outside the model's folder"),
        ("/dev/zero", "points outside the model's folder"),
        ("../model.onnx.data", "points outside the model's folder"),
        ("../../../etc/passwd", "points outside the model's folder"),
        ("sub/model.onnx.data", "is kept in an external file"),
        ("./model.onnx.data", "is kept in an external file"),
        ("weights.bin", "is kept in an external file"),
        ("other.onnx.data", "is kept in an external file"),
        ("*/_ORT_MEM_ADDR_/*", "is kept in an external file"),  # ONNX Runtime's in-memory address tag
        ("", "is kept in an external file"),
    ],
)
def test_any_other_location_is_refused_before_onnx_runtime(tmp_path, location, problem):
    path = with_location(write_model(tmp_path), location)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.onnx.data").write_bytes(W.tobytes())
    (tmp_path / "weights.bin").write_bytes(W.tobytes())
    with pytest.raises(
        IntegrityError,
        match=rf"initializer 'W' {problem} .*only loads ONNX files with their weights embedded or in the model's own data file \('model.onnx.data' beside it\)",
    ):
        create_session(path)


def test_a_second_location_entry_is_refused_whichever_comes_first(tmp_path):
    path = write_model(tmp_path)
    for locations in (("model.onnx.data", "/etc/passwd"), ("/etc/passwd", "model.onnx.data"), ("model.onnx.data", "model.onnx.data")):
        with_location(path, *locations)
        with pytest.raises(IntegrityError, match="refusing to load it"):
            check_onnx_file(path)


def test_the_data_file_is_named_after_the_model_file(tmp_path):
    path = write_model(tmp_path, name="other.onnx")  # writes other.onnx.data, refers to model.onnx.data
    (tmp_path / "model.onnx.data").write_bytes(W.tobytes())
    with pytest.raises(IntegrityError, match=r"is kept in an external file \('model.onnx.data'\).*'other.onnx.data' beside it"):
        check_onnx_file(path)


def test_a_symlinked_data_file_is_refused(tmp_path):
    path = write_model(tmp_path)
    data = tmp_path / "model.onnx.data"
    real = tmp_path / "elsewhere.bin"
    data.rename(real)
    data.symlink_to(real)  # the same bytes: only the link check stops it
    with pytest.raises(IntegrityError, match=r"model.onnx.data is a symbolic link; refusing to read a model's weights through it"):
        create_session(path)


def test_a_data_file_that_is_not_a_regular_file_is_refused(tmp_path):
    path = write_model(tmp_path)
    data = tmp_path / "model.onnx.data"
    data.unlink()
    os.mkfifo(data)
    with pytest.raises(IntegrityError, match="model.onnx.data is not a regular file"):
        check_onnx_file(path)


def test_a_missing_or_short_data_file_is_refused(tmp_path):
    path = write_model(tmp_path)
    data = tmp_path / "model.onnx.data"
    data.write_bytes(W.tobytes()[:-4])
    with pytest.raises(IntegrityError, match=r"need 48 bytes of 'model.onnx.data', which holds 44; the data file is truncated"):
        check_onnx_file(path)
    data.unlink()
    with pytest.raises(IntegrityError, match=r"keeps its weights in 'model.onnx.data', which is not beside it"):
        check_onnx_file(path)


@pytest.mark.parametrize("entries", [{"offset": "-8"}, {"length": "lots"}, {"offset": "0x10"}], ids=["negative", "words", "hex"])
def test_offsets_and_lengths_must_be_plain_numbers(tmp_path, entries):
    path = with_location(write_model(tmp_path), "model.onnx.data", **entries)
    with pytest.raises(IntegrityError, match="offset|length"):
        check_onnx_file(path)


def test_parsed_bytes_allow_external_data_only_where_a_data_file_is_named(tmp_path):
    data = write_model(tmp_path).read_bytes()
    with pytest.raises(IntegrityError, match=r"is kept in an external file \('model.onnx.data'\)"):
        check_onnx_bytes(data, "x.mar:model.onnx")
    _, need = check_onnx_bytes(data, "x.mar:model.onnx", "model.onnx.data")
    assert need == W.nbytes


# --- the archive's sizes -----------------------------------------------------------------


def entry(name, size, compressed, method=zipfile.ZIP_STORED):
    info = zipfile.ZipInfo(name)
    info.file_size, info.compress_size, info.compress_type = size, compressed, method
    return info


@pytest.fixture
def big_file(tmp_path):
    """A sparse 3 GB file: room for the sizes the entries declare, no disk spent."""
    path = tmp_path / "model.mar"
    with open(path, "wb") as f:
        f.truncate(3 * 10**9)
    return path


GB = 10**9


def test_a_stored_data_member_of_2_4_gb_is_admitted(big_file):
    archive.check_members(big_file, [entry("model.onnx", 20_000, 20_000), entry("model.onnx.data", int(2.4 * GB), int(2.4 * GB))])
    deflated = int(2.4 * GB / 1.08)  # what deflate makes of random float32 weights
    archive.check_members(big_file, [entry("model.onnx.data", int(2.4 * GB), deflated, zipfile.ZIP_DEFLATED)])


@pytest.mark.parametrize(
    "entries, message",
    [
        ([entry("model.onnx.data", int(2.4 * GB), 1 << 20, zipfile.ZIP_DEFLATED)], "refusing a possible zip bomb"),  # 2400:1
        ([entry("model.onnx", int(2.4 * GB), int(2.4 * GB))], r"'model.onnx' declares 2400000000 bytes .*at most 2147483648 bytes"),
        ([entry("notes.txt", int(2.4 * GB), int(2.4 * GB))], "refusing a possible zip bomb"),
        ([entry("model.onnx.data", 17 << 30, 17 << 30)], r"at most 17179869184 bytes"),
        ([entry("model.onnx.data", int(2.9 * GB), int(2.9 * GB)), entry("model.onnx", int(0.2 * GB), int(0.2 * GB))], "headers lie"),
    ],
    ids=["data-bomb", "model-over-2GiB", "other-member-over-2GiB", "data-over-16GiB", "more-than-the-file"],
)
def test_what_no_real_archive_declares_is_refused(big_file, entries, message):
    with pytest.raises(IntegrityError, match=message):
        archive.check_members(big_file, entries)


# --- writing the pair --------------------------------------------------------------------


def test_atomic_files_moves_the_data_in_first_then_the_model(tmp_path, monkeypatch):
    moved = []
    replace = os.replace
    monkeypatch.setattr(files.os, "replace", lambda src, dst: (moved.append(os.path.basename(dst)), replace(src, dst)))
    with files.atomic_files(tmp_path / "model.onnx.data", tmp_path / "model.onnx") as (data, model):
        assert data.parent == model.parent != tmp_path and files.TEMP_NAME.match(data.parent.name)
        assert (data.name, model.name) == ("model.onnx.data", "model.onnx")
        data.write_bytes(b"weights")
        model.write_bytes(b"graph")
    assert moved == ["model.onnx.data", "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_atomic_files_removes_a_target_it_did_not_write(tmp_path):
    (tmp_path / "model.onnx.data").write_bytes(b"old weights")
    with files.atomic_files(tmp_path / "model.onnx.data", tmp_path / "model.onnx") as (_, model):
        model.write_bytes(b"graph")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_atomic_files_failure_keeps_the_previous_pair_and_no_folder(tmp_path):
    (tmp_path / "model.onnx.data").write_bytes(b"old weights")
    (tmp_path / "model.onnx").write_bytes(b"old graph")
    with pytest.raises(RuntimeError), files.atomic_files(tmp_path / "model.onnx.data", tmp_path / "model.onnx") as (data, model):
        data.write_bytes(b"new weights")
        raise RuntimeError("the check failed")
    assert (tmp_path / "model.onnx.data").read_bytes() == b"old weights"
    assert (tmp_path / "model.onnx").read_bytes() == b"old graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_a_dead_writers_folder_and_legacy_data_are_swept(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    folder = tmp_path / f".model.onnx-{dead}.abcd1234"
    folder.mkdir()
    (folder / "model.onnx.data").write_bytes(b"half")
    legacy = tmp_path / f".model.onnx.{dead}.x1y2z3w4.tmp.data"
    legacy.write_bytes(b"half")
    live = tmp_path / f".model.onnx-{os.getpid()}.abcd1234"
    live.mkdir()
    assert sorted(files.sweep_stale(tmp_path)) == sorted([folder, legacy])
    assert [p.name for p in tmp_path.iterdir()] == [live.name]


def test_a_node_attributes_sparse_indices_pointing_outside_are_refused(tmp_path):
    """A Constant node's sparse_value keeps its indices in a file of their own: they are checked too."""
    values = numpy_helper.from_array(np.ones(2, np.float32), "v")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "i")
    indices.ClearField("raw_data")
    indices.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "16")):
        entry = indices.external_data.add()
        entry.key, entry.value = key, value
    sparse = helper.make_sparse_tensor(values, indices, [4])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], sparse_value=sparse)],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString())
    with pytest.raises(IntegrityError, match=r"attribute 'sparse_value' indices points outside the model's folder"):
        check_onnx_file(path)
