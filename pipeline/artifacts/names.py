"""One table of artifact names: the manifest's keys and the files inside an archive."""

# Keys of artifacts/<model>/manifest.json, one per artifact a stage writes.
CHECKPOINT = "checkpoint"
TORCHSCRIPT = "torchscript"
ONNX = "onnx"
PT2 = "pt2"  # the AOTInductor package compiled for the CPU; pt2_key("cuda") for CUDA's
PARITY = "parity"
MAR = "mar"
KEYS = (CHECKPOINT, TORCHSCRIPT, ONNX, PT2, PARITY, MAR)


def pt2_key(device: str) -> str:
    """The manifest key of the AOTInductor package compiled for `device` ("cpu" or "cuda")."""
    return PT2 if device == "cpu" else f"{PT2}-{device}"


# Smaller variants of the verified model (python -m pipeline variants), each with three
# records of its own: its ONNX file ("int8"), its gate ("gate-int8"), its archive ("mar-int8").
VARIANTS = ("int8", "fp16")


def gate_key(variant: str) -> str:
    return f"gate-{variant}"


def archive_key(variant: str | None) -> str:
    """The manifest key of the model's archive, or of one variant's."""
    return f"mar-{variant}" if variant else MAR


def tune_key(variant: str | None) -> str:
    """The manifest key of the serving config `python -m pipeline tune` measured and chose (per archive)."""
    return f"tune-{variant}" if variant else "tune"


# An ONNX file over protobuf's 2 GiB keeps its weights in one external-data file beside
# it, named after it (model.onnx -> model.onnx.data); no other external location is loaded.
# Its record's details name that file under EXTERNAL_DATA: {"path", "sha256", "bytes"}.
EXTERNAL_DATA = "external_data"


def data_file_name(model_file: str) -> str:
    """The one external-data file an ONNX file may have: `model.onnx` -> `model.onnx.data`."""
    return f"{model_file}.data"


# The files inside model_store/<model>.mar.
ARCHIVE_MANIFEST = "MAR-INF/MANIFEST.json"
ARCHIVE_MODEL = "model.onnx"
ARCHIVE_CONTRACT = "io_contract.json"
ARCHIVE_CONFIG = "model-config.yaml"
ARCHIVE_HANDLER = "onnx_handler.py"
ARCHIVE_MEMBERS = frozenset({ARCHIVE_MANIFEST, ARCHIVE_MODEL, ARCHIVE_CONTRACT, ARCHIVE_CONFIG, ARCHIVE_HANDLER})
# Exactly ARCHIVE_MEMBERS, plus this one when the model keeps its weights in external data.
ARCHIVE_DATA = data_file_name(ARCHIVE_MODEL)
# And this one when the contract serves the AOTInductor package (engine "aotinductor") instead of the graph.
ARCHIVE_PT2 = "model.pt2"
# And this one when the model takes texts: the checkpoint's tokenizer, its sha256 in the contract.
ARCHIVE_TOKENIZER = "tokenizer.json"
