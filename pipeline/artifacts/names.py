"""One table of artifact names: the manifest's keys and the files inside an archive."""

# Keys of artifacts/<model>/manifest.json, one per artifact a stage writes.
CHECKPOINT = "checkpoint"
TORCHSCRIPT = "torchscript"
ONNX = "onnx"
PARITY = "parity"
MAR = "mar"
KEYS = (CHECKPOINT, TORCHSCRIPT, ONNX, PARITY, MAR)

# The files inside model_store/<model>.mar.
ARCHIVE_MANIFEST = "MAR-INF/MANIFEST.json"
ARCHIVE_MODEL = "model.onnx"
ARCHIVE_CONTRACT = "io_contract.json"
ARCHIVE_CONFIG = "model-config.yaml"
ARCHIVE_HANDLER = "onnx_handler.py"
ARCHIVE_MEMBERS = frozenset({ARCHIVE_MANIFEST, ARCHIVE_MODEL, ARCHIVE_CONTRACT, ARCHIVE_CONFIG, ARCHIVE_HANDLER})
