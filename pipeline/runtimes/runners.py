"""Runners: one `infer(feed) -> {output name: array}` shape for eager, TorchScript, ONNX Runtime and AOTInductor packages."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.runtimes.pt2 import Pt2Session
from pipeline.runtimes.session import SessionConfig, create_session
from pipeline.spec import ModelSpec


class Runner(Protocol):
    name: str

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def cuda_available() -> bool:
    return torch.cuda.is_available()


def _named(spec: ModelSpec, result) -> dict[str, np.ndarray]:
    values = result if isinstance(result, (tuple, list)) else (result,)
    if len(values) != len(spec.outputs):
        raise PipelineError(
            "runtime",
            f"{spec.name} returned {len(values)} outputs, the spec declares {len(spec.outputs)}",
            "make forward() return the outputs listed in the spec, in order",
        )
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


class Pt2Runner:
    """An AOTInductor package (`pipeline.runtimes.pt2.Pt2Session`), numpy in, numpy out."""

    def __init__(self, name: str, path: Path, spec: ModelSpec, device: str = "cpu", threads: int | None = None):
        self.name = name
        self.spec = spec
        self.session = Pt2Session(path, [t.name for t in spec.inputs], device, threads)
        self.provider = self.session.provider

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [t.name for t in self.spec.outputs]
        return dict(zip(names, self.session.run(names, feed)))


class OrtRunner:
    """ONNX Runtime with a plain `session.run` (numpy in, numpy out)."""

    def __init__(self, name: str, path: Path, spec: ModelSpec, config: SessionConfig = SessionConfig()):
        self.name = name
        self.spec = spec
        self.config = config
        self.session = create_session(path, config)
        self.provider = self.session.get_providers()[0]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [t.name for t in self.spec.outputs]
        values = self.session.run(names, {t.name: feed[t.name] for t in self.spec.inputs})
        return dict(zip(names, values))
