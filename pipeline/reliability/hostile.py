"""Hostile files handed to the pipeline's loaders: each must be refused by our own check.

The attacker here can write the artifacts folder and the manifest alike, so hashes
match: what stops them is the check that runs before a library parses the file.
- a checkpoint that is a pickle (torch.save or plain): loading must not run it;
- an ONNX model whose weights are "external data" pointing anywhere on the disk;
- a `.mar` with `../`, absolute or backslash paths, symlinks, duplicate names, a
  zip bomb or a lying size header, an extra member, a model with external data, or a
  handler hidden between the last member and the central directory (which `zipfile`
  never sees and TorchServe unpacks last, over the checked one);
- an artifact replaced by a symbolic link, or a manifest path leading outside;
- a Hugging Face checkpoint folder (`hf:PATH`) whose tokenizer or weights link out of it,
  or whose safetensors index names a pickle or a file outside.
Each case returns a `HostileCase`; `pipeline.reliability` reports them, tests assert.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import shutil
import stat
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.artifacts.names import ARCHIVE_HANDLER, ARCHIVE_MANIFEST, ONNX
from pipeline.errors import PipelineError
from pipeline.reliability.faults import Project

MARKER = "PAYLOAD_RAN"


@dataclass(frozen=True)
class HostileCase:
    """One hostile input: what it was, whether our check refused it, and with what message."""

    kind: str  # checkpoint | onnx | mar | artifact
    name: str
    refused: bool
    message: str
    payload_ran: bool = False

    @property
    def survived(self) -> bool:
        return self.refused and not self.payload_ran


class _Payload:
    """Unpickling this creates a marker file: proof that a loader ran pickled code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _attempt(kind: str, name: str, load: Callable[[], object], marker: Path | None = None) -> HostileCase:
    try:
        load()
    except PipelineError as exc:
        refused, message = True, exc.problem
    except Exception as exc:  # a library's own error is not our check refusing it
        refused, message = False, f"not refused by our check: {type(exc).__name__}: {exc}"
    else:
        refused, message = False, "accepted"
    return HostileCase(kind, name, refused, message, bool(marker and marker.exists()))


def vouch_for(project: Project, key: str) -> None:
    """Make the manifest vouch for the file now at `key`'s path, as an attacker would."""
    manifest = project.manifest()
    rec = manifest.records[key]
    manifest.record(key, project.root / rec.path, rec.stage, rec.inputs, rec.settings, rec.seconds, rec.details)


# --- checkpoints ---------------------------------------------------------------------------


def pickle_checkpoints(project: Project) -> list[HostileCase]:
    """torch.save and plain-pickle files posing as the checkpoint; the next stage must refuse them."""
    import torch

    from pipeline.stages import trace

    cases: list[HostileCase] = []
    path = project.layout.checkpoint
    good = path.read_bytes()
    writers = {
        "torch.save pickle as checkpoint": lambda p, m: torch.save({"layer1.weight": _Payload(m)}, p),
        "plain pickle as checkpoint": lambda p, m: p.write_bytes(pickle.dumps({"layer1.weight": _Payload(m)})),
    }
    for name, write in writers.items():
        marker = project.root / f"{MARKER}-{len(cases)}"
        write(path, marker)
        vouch_for(project, "checkpoint")
        cases.append(_attempt("checkpoint", name, lambda: trace.run(project.settings), marker))
        path.write_bytes(good)
        vouch_for(project, "checkpoint")
    return cases


def payload_is_live(tmp: Path) -> bool:
    """Control: plain unpickling of the same payload does create the marker."""
    marker = tmp / f"{MARKER}-control"
    pickle.loads(pickle.dumps(_Payload(marker)))
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


# --- ONNX external data --------------------------------------------------------------------

EXTERNAL_LOCATIONS = {
    "external data outside the folder (../../../etc/passwd)": "../../../etc/passwd",
    "external data at an absolute path (/etc/passwd)": "/etc/passwd",
    "external data inside the folder (weights.bin)": "weights.bin",
}


def external_data_model(model_bytes: bytes, location: str) -> bytes:
    """The serialized model with its first initializer moved to external data at `location`."""
    import onnx

    model = onnx.load_model_from_string(model_bytes)
    tensor = model.graph.initializer[0]
    length = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def onnx_external_data(project: Project) -> list[HostileCase]:
    """Models whose weights point at other files; parity (ONNX Runtime) must refuse to load them."""
    from pipeline.stages import parity

    path = project.layout.onnx
    good = path.read_bytes()
    weights = path.parent / "weights.bin"
    weights.write_bytes(b"\0" * 64)
    cases = []
    for name, location in EXTERNAL_LOCATIONS.items():
        path.write_bytes(external_data_model(good, location))
        vouch_for(project, "onnx")
        cases.append(_attempt("onnx", name, lambda: parity.run(replace(project.settings, force=True))))
    path.write_bytes(good)
    vouch_for(project, "onnx")
    weights.unlink()
    return cases


# --- archives ------------------------------------------------------------------------------


def rebuild_archive(src: Path, dst: Path, edit: Callable[[list[tuple[zipfile.ZipInfo, bytes]]], list]) -> Path:
    with zipfile.ZipFile(src) as zin:
        members = [(info, zin.read(info)) for info in zin.infolist()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate we add on purpose
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
            for info, data in edit(members):
                zout.writestr(info, data)
    return dst


def add_member(name: str, data: bytes = b"print('owned')\n"):
    return lambda members: [*members, (zipfile.ZipInfo(name), data)]


def replace_member(name: str, make: Callable[[zipfile.ZipInfo, bytes], tuple[zipfile.ZipInfo, bytes]]):
    return lambda members: [make(info, data) if info.filename == name else (info, data) for info, data in members]


def as_symlink(info: zipfile.ZipInfo, data: bytes) -> tuple[zipfile.ZipInfo, bytes]:
    link = zipfile.ZipInfo(info.filename)
    link.create_system = 3  # unix, so external_attr carries the file type
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return link, b"/etc/passwd"


def as_zip_bomb(info: zipfile.ZipInfo, data: bytes) -> tuple[zipfile.ZipInfo, bytes]:
    bomb = zipfile.ZipInfo(info.filename)
    bomb.compress_type = zipfile.ZIP_DEFLATED
    return bomb, b"\0" * (64 << 20)  # 64 MiB that deflate to ~64 KiB


def _lie_about_size(path: Path, name: str, size: int) -> Path:
    """Patch the central directory so `name` declares `size` bytes uncompressed."""
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")  # end of central directory: the directory's offset is at +16
    at = data.find(b"PK\x01\x02", struct.unpack_from("<I", data, end + 16)[0])
    while at != -1:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len] == name.encode():
            struct.pack_into("<I", data, at + 24, size)
            path.write_bytes(bytes(data))
            return path
        at = data.find(b"PK\x01\x02", at + 46)
    raise ValueError(f"{name} not found in {path}")


def _directory_offset(data: bytes) -> int:
    """Where the central directory starts, from an end record with no comment and no ZIP64."""
    return struct.unpack_from("<I", data, len(data) - 22 + 16)[0]


def hide_member(src: Path, dst: Path, name: str, data: bytes) -> Path:
    """`src` with a member slipped in after its last one, before its central directory, which does not list it.

    Python's `zipfile` never sees it; a reader walking local headers from the start
    (TorchServe's frontend) unpacks it last, over the listed member of the same name.
    """
    with io.BytesIO() as buf:
        with zipfile.ZipFile(buf, "w") as one:
            one.writestr(name, data)
        single = buf.getvalue()
    hidden = single[: _directory_offset(single)]  # its local header and data
    good = src.read_bytes()
    at = _directory_offset(good)
    out = bytearray(good[:at] + hidden + good[at:])
    struct.pack_into("<I", out, len(out) - 22 + 16, at + len(hidden))
    dst.write_bytes(bytes(out))
    return dst


def smuggled_handler(marker: Path) -> bytes:
    """The installed handler, plus a line that creates `marker` when a worker imports it."""
    from pipeline.artifacts.archive import handler_source

    return handler_source() + f"\nimport pathlib\npathlib.Path({str(marker)!r}).touch()\n".encode()


def _other_handler(info: zipfile.ZipInfo, data: bytes) -> tuple[zipfile.ZipInfo, bytes]:
    manifest = json.loads(data)
    manifest["model"]["handler"] = "ts.torch_handler.base_handler"  # TorchServe's own, which unpickles
    return info, json.dumps(manifest).encode()


def archive_cases(project: Project, work: Path) -> list[HostileCase]:
    """Hostile variants of the real archive, each handed to inspect_archive (what serve.start runs)."""
    from pipeline.artifacts.archive import inspect_archive
    from pipeline.artifacts.names import ARCHIVE_MODEL as MODEL_NAME

    mar = project.layout.mar
    good_model = zipfile.ZipFile(mar).read(MODEL_NAME)
    external = external_data_model(good_model, "../../../etc/passwd")
    variants = {
        "entry with ../ (../evil.py)": add_member("../evil.py"),
        "absolute entry (/tmp/evil.py)": add_member("/tmp/evil.py"),
        "backslash entry (..\\evil.py)": add_member("..\\evil.py"),
        "symlink entry (handler -> /etc/passwd)": replace_member("onnx_handler.py", as_symlink),
        "duplicate entry (second model.onnx)": add_member(MODEL_NAME, good_model),
        "zip bomb (64 MiB of zeros as model.onnx)": replace_member(MODEL_NAME, as_zip_bomb),
        "unexpected extra member (notes.txt)": add_member("notes.txt", b"hello"),
        "model with external data inside the archive": replace_member(MODEL_NAME, lambda i, d: (i, external)),
        "handler that runs os.system": replace_member(ARCHIVE_HANDLER, lambda i, d: (i, d + b"\nimport os\nos.system('id')\n")),
        "MANIFEST.json naming another handler": replace_member(ARCHIVE_MANIFEST, _other_handler),
    }
    work.mkdir(parents=True, exist_ok=True)
    cases: list[HostileCase] = []
    for i, (name, edit) in enumerate(variants.items()):
        path = rebuild_archive(mar, work / f"hostile-{i}.mar", edit)
        cases.append(_attempt("mar", name, functools.partial(inspect_archive, path)))
    lying = _lie_about_size(shutil.copyfile(mar, work / "hostile-size.mar"), MODEL_NAME, 0xFFFF_FFF0)
    cases.append(_attempt("mar", "size header declaring 4 GiB for model.onnx", lambda: inspect_archive(lying)))
    marker = work / f"{MARKER}-handler"
    hidden = hide_member(mar, work / "hostile-hidden.mar", ARCHIVE_HANDLER, smuggled_handler(marker))
    cases.append(_attempt("mar", "hidden entry (onnx_handler.py before the central directory)", lambda: inspect_archive(hidden), marker))
    twice = rebuild_archive(mar, work / "hostile-twice.mar", add_member(ARCHIVE_HANDLER, smuggled_handler(marker)))
    cases.append(_attempt("mar", "duplicate entry (second onnx_handler.py)", lambda: inspect_archive(twice), marker))
    return cases


# --- links and paths out of the project ---------------------------------------------------


def escaping_artifacts(project: Project, outside: Path) -> list[HostileCase]:
    """An artifact swapped for a symlink to an identical file outside, and a manifest path with `..`."""
    from pipeline.stages import parity

    cases = []
    path = project.layout.onnx
    outside.mkdir(parents=True, exist_ok=True)
    target = Path(shutil.copyfile(path, outside / "model.onnx"))
    good = path.read_bytes()
    path.unlink()
    path.symlink_to(target)  # same bytes, so the hash matches: only the link check stops it
    cases.append(
        _attempt(
            "artifact", "model.onnx replaced by a symlink out of the project", lambda: parity.run(replace(project.settings, force=True))
        )
    )
    path.unlink()
    path.write_bytes(good)
    manifest = project.manifest()
    rec = manifest.records[ONNX]
    escaped = Path("..") / ".." / ".." / ".." / target.relative_to("/") if target.is_absolute() else target
    manifest.records[ONNX] = replace(rec, path=str(Path(rec.path).parent / escaped))
    manifest.save()
    cases.append(
        _attempt(
            "artifact", "manifest path leading out of the project (../../..)", lambda: parity.run(replace(project.settings, force=True))
        )
    )
    manifest.records[ONNX] = rec
    manifest.save()
    return cases


# --- Hugging Face checkpoint folders -------------------------------------------------------


def tiny_checkpoint(folder: Path) -> Path:
    """A tiny BERT sentiment checkpoint as save_pretrained writes it: config, safetensors weights, a fast tokenizer."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "hello", "world"]
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    config = BertConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, vocab_size=len(words), max_position_embeddings=16
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", model_max_length=16).save_pretrained(folder)
    return folder


def _link_out(name: str) -> Callable[[Path, Path], None]:
    """The folder's `name` moved outside it, a symbolic link left in its place."""

    def edit(folder: Path, marker: Path) -> None:
        outside = shutil.move(folder / name, folder.parent / f"outside-{name}")
        (folder / name).symlink_to(outside)

    return edit


def _index_naming(shard: str) -> Callable[[Path, Path], None]:
    """model.safetensors replaced by an index that maps every tensor to `shard`, a pickle or a file outside."""

    def edit(folder: Path, marker: Path) -> None:
        import torch
        from safetensors.torch import load_file

        tensors = load_file(folder / "model.safetensors")
        if shard.endswith(".bin"):  # torch.save's pickle, with a payload beside the tensors
            torch.save({**tensors, "payload": _Payload(marker)}, folder / shard)
        else:
            shutil.move(folder / "model.safetensors", folder / shard)
        (folder / "model.safetensors").unlink(missing_ok=True)
        index = {"metadata": {}, "weight_map": dict.fromkeys(tensors, shard)}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))

    return edit


CHECKPOINT_EDITS = {
    "tokenizer.json linked to a file outside the folder": _link_out("tokenizer.json"),
    "model.safetensors linked to a file outside the folder": _link_out("model.safetensors"),
    "safetensors index naming pytorch_model.bin": _index_naming("pytorch_model.bin"),
    "safetensors index naming ../outside.safetensors": _index_naming("../outside.safetensors"),
}


def _train_from(folder: Path) -> object:
    from pipeline.models import load_spec

    return load_spec(f"hf:{folder}").train(0)


def checkpoint_folders(work: Path) -> list[HostileCase]:
    """Hostile `hf:PATH` folders: the spec (or train, which loads the weights) must refuse them before reading outside."""
    good = tiny_checkpoint(work / "good")
    cases = []
    for i, (name, edit) in enumerate(CHECKPOINT_EDITS.items()):
        folder = Path(shutil.copytree(good, work / f"case-{i}" / "checkpoint"))
        marker = work / f"{MARKER}-checkpoint-{i}"
        edit(folder, marker)
        cases.append(_attempt("checkpoint", name, functools.partial(_train_from, folder), marker))
    return cases


def all_cases(project: Project, work: Path) -> list[HostileCase]:
    return [
        *pickle_checkpoints(project),
        *onnx_external_data(project),
        *archive_cases(project, work / "archives"),
        *escaping_artifacts(project, work / "outside"),
        *checkpoint_folders(work / "hf"),
    ]
