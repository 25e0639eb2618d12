"""TorchServe's entry point, shipped in every archive as onnx_handler.py.

It holds no logic: `pipeline.serving.torchserve.handler` does the work, so the handler that
serves is the one the tests exercise. TorchServe's Python must have this project
installed (`make serve` uses the project's own environment).
"""

try:
    from pipeline.serving.torchserve.handler import OnnxHandler
except ImportError as exc:  # a worker started from a Python without the project
    raise ImportError(
        f"{exc}; this archive's handler needs the pipeline package in TorchServe's Python: "
        "pip install the project's wheel there (pip install pipeline-*.whl)"
    ) from exc

# TorchServe calls handle(data, context); one handler per worker process.
handle = OnnxHandler()
