"""What every stage shares: its settings, where files go, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import ModelSpec, Tolerance, load_spec

DEFAULT_MODEL = "simple_nn"
PARITY_BATCH_SIZES = (1, 2, 7, 64, 1000)


@dataclass(frozen=True)
class Settings:
    """Options for a pipeline run; each stage records the ones it uses."""

    model: str = DEFAULT_MODEL
    root: Path = Path(".")
    force: bool = False
    seed: int = 0
    atol: float | None = None
    rtol: float | None = None
    parity_batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES
    # Serving defaults written into the archive's model-config.yaml. A lone request
    # waits the whole batch delay: 5 ms cost 4.8 ms of p50 in sequential requests,
    # 1 ms keeps batching under load at a fifth of that.
    serve_batch_size: int = 8
    serve_max_batch_delay_ms: int = 1
    serve_workers: int = 1
    serve_response_timeout_s: int = 30


@dataclass(frozen=True)
class Layout:
    """Fixed places a user (and a script) can rely on."""

    root: Path
    model: str

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts" / self.model

    @property
    def checkpoint(self) -> Path:
        return self.artifacts / "checkpoint.safetensors"

    @property
    def torchscript(self) -> Path:
        return self.artifacts / "model.ts"

    @property
    def onnx(self) -> Path:
        return self.artifacts / "model.onnx"

    @property
    def reports(self) -> Path:
        return self.root / "reports" / self.model

    @property
    def model_store(self) -> Path:
        return self.root / "model_store"

    @property
    def mar(self) -> Path:
        return self.model_store / f"{self.model}.mar"


@dataclass(frozen=True)
class StageResult:
    """What a stage did: ran or skipped, what it wrote, and a line for the summary."""

    stage: str
    skipped: bool
    outputs: tuple[Path, ...]
    seconds: float
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


def resolve(settings: Settings) -> tuple[ModelSpec, Layout]:
    spec = load_spec(settings.model)
    return spec, Layout(Path(settings.root).resolve(), spec.name)


def tolerance(settings: Settings, spec: ModelSpec) -> Tolerance:
    return Tolerance(
        atol=spec.tolerance.atol if settings.atol is None else settings.atol,
        rtol=spec.tolerance.rtol if settings.rtol is None else settings.rtol,
    )
