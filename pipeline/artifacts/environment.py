"""What the artifacts were made with: versions, providers, CPU and GPU."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def fingerprint() -> dict[str, Any]:
    """The environment recorded with every artifact."""
    import onnxruntime
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "onnx": _version("onnx"),
        "onnxscript": _version("onnxscript"),
        "onnxruntime": onnxruntime.__version__,
        # onnxruntime-gpu lists the CUDA provider whether or not a GPU is present;
        # `cuda_available` says whether one really is.
        "onnxruntime_available_providers": onnxruntime.get_available_providers(),
        "torchserve": _version("torchserve"),
        "torch_model_archiver": _version("torch-model-archiver"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }
