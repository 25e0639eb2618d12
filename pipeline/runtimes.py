"""Runners: one `infer(feed) -> {output name: array}` shape for every engine."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .errors import PipelineError
from .safety import check_onnx_file
from .spec import ModelSpec


class Runner(Protocol):
    name: str

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def cuda_available() -> bool:
    return torch.cuda.is_available()


def _named(spec: ModelSpec, result) -> dict[str, np.ndarray]:
    values = result if isinstance(result, (tuple, list)) else (result,)
    if len(values) != len(spec.outputs):
        raise PipelineError("runtime", f"{spec.name} returned {len(values)} outputs, the spec declares {len(spec.outputs)}",
                            "make forward() return the outputs listed in the spec, in order")
    return {t.name: v.detach().cpu().numpy() for t, v in zip(spec.outputs, values)}


class TorchRunner:
    """Eager PyTorch or a TorchScript module, under `torch.inference_mode`."""

    def __init__(self, name: str, module, spec: ModelSpec, device: str = "cpu"):
        self.name = name
        self.spec = spec
        self.device = torch.device(device)
        self.module = module.to(self.device)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feed[t.name])).to(self.device) for t in self.spec.inputs]
        with torch.inference_mode():
            return _named(self.spec, self.module(*args))


def ort_session(path: Path, device: str = "cpu", threads: int | None = None):
    """An ONNX Runtime session on `device`; fails loudly instead of falling back to CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    if device == "cuda":
        if not cuda_available():
            raise PipelineError("runtime", "CUDA was requested but no CUDA device is visible to torch",
                                "run on a machine with an NVIDIA GPU, or use --device cpu")
        # onnxruntime-gpu needs CUDA and cuDNN libraries; reuse the ones torch ships.
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    # ORT follows external-data paths wherever they point: refuse such a file first.
    check_onnx_file(path)
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    # ORT silently falls back to the CPU when the CUDA provider fails to load.
    if session.get_providers()[0] != providers[0]:
        raise PipelineError("runtime", f"ONNX Runtime was asked for {providers[0]} but runs on {session.get_providers()}",
                            "check the CUDA 13 / cuDNN 9 libraries (import torch first, or onnxruntime.preload_dlls())")
    return session


class OrtRunner:
    """ONNX Runtime with a plain `session.run` (numpy in, numpy out)."""

    def __init__(self, name: str, path: Path, spec: ModelSpec, device: str = "cpu", threads: int | None = None):
        self.name = name
        self.spec = spec
        self.session = ort_session(path, device, threads)
        self.provider = self.session.get_providers()[0]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [t.name for t in self.spec.outputs]
        values = self.session.run(names, {t.name: feed[t.name] for t in self.spec.inputs})
        return dict(zip(names, values))
