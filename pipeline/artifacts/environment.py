"""What the artifacts were made with: versions, providers, CPU and GPU; and which package an
import failed in, when this Python lacks one or has one that cannot load (`import_failure`)."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import sys
import sysconfig
import traceback
from dataclasses import dataclass
from typing import Any

# What an import raises when a package is missing, or is installed and cannot load: a torchvision
# built for another torch raises RuntimeError ("operator torchvision::nms does not exist") from
# its own import, and transformers, which imports torchvision whenever it is installed, re-raises
# that as a ModuleNotFoundError whose name is None (or, for some names, an AttributeError).
IMPORT_FAILURES = (ImportError, RuntimeError, AttributeError)

# Where a module's name is not the name pip installs it by.
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "ts": "torchserve", "model_archiver": "torch-model-archiver"}


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


@dataclass(frozen=True)
class ImportFailure:
    """The package an import failed in, why, and whether it is missing or installed and broken."""

    package: str  # its top-level module: "torchvision", "PIL"
    module: str  # the module the import named, or the package where it named none
    reason: str  # the first line of the innermost exception: "RuntimeError: operator torchvision::nms does not exist"
    missing: bool  # not installed at all; else installed, and it fails to load

    @property
    def distribution(self) -> str:
        return DISTRIBUTIONS.get(self.package, self.package)

    def problem(self, needed_by: str) -> str:
        if self.missing:
            return f"{sys.executable} lacks {self.distribution!r} (import {self.module}), which {needed_by} needs"
        version = _version(self.distribution)
        installed = f"{self.distribution} {version}" if version else self.distribution
        return f"{needed_by} cannot load: importing {installed} failed with {self.reason}"

    def fix(self, install: str) -> str:
        """`install` where the package is missing; for one that cannot load, how to remove or replace it."""
        if self.missing:
            return install
        if self.package == "torchvision":
            return (
                "pip uninstall torchvision (the pipeline does not use it; transformers imports it whenever it is installed), "
                f"or install the torchvision build made for the installed torch {_version('torch')}"
            )
        return f"pip install --force-reinstall {self.distribution}; or, where nothing here needs it, pip uninstall {self.distribution}"


def import_failure(exc: BaseException) -> ImportFailure | None:
    """The package outside the pipeline that `exc`, raised by an import, failed in; None where it is the
    pipeline's own error. exc.name names it where the import says; else (None, as transformers re-raises)
    the innermost module being imported in the exception or its causes that lies on sys.path, not in the
    standard library, is the one that broke."""
    chain = _causes(exc)
    reason = "".join(traceback.format_exception_only(chain[-1])).strip().splitlines()[0]
    name = next((e.name for e in chain if isinstance(e, ImportError) and e.name), None)
    if name is not None and importlib.util.find_spec(name.split(".")[0]) is None:
        return ImportFailure(name.split(".")[0], name, reason, missing=True)
    importing = [_top_level(f.filename) for e in chain for f in traceback.extract_tb(e.__traceback__) if f.name == "<module>"]
    package = next((p for p in reversed(importing) if p not in (None, "pipeline")), None)
    if package is None:
        return None
    return ImportFailure(package, name if name and name.split(".")[0] == package else package, reason, missing=False)


def _causes(exc: BaseException) -> list[BaseException]:
    chain = [exc]
    while (cause := exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)) is not None and cause not in chain:
        chain.append(cause)
        exc = cause
    return chain


def _top_level(filename: str) -> str | None:
    """The top-level package a source file belongs to, by the sys.path entry it lies under; None for
    the standard library and for files on no entry (a model file of the user's, a frozen module)."""
    if filename.startswith("<"):
        return None
    stdlib = {os.path.realpath(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib")}
    path = os.path.realpath(filename)
    entries = sorted((os.path.realpath(e or os.getcwd()) for e in sys.path), key=len, reverse=True)
    for entry in entries:
        if path.startswith(entry + os.sep):
            if entry in stdlib:
                return None
            return os.path.relpath(path, entry).split(os.sep)[0].removesuffix(".py")
    return None
