"""What every part shares: a run's settings, where files go (`Layout`), and what a stage returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import SpecError
from pipeline.models import load_spec
from pipeline.spec import ModelSpec, Tolerance

DEFAULT_MODEL = "simple_nn"
PARITY_BATCH_SIZES = (1, 2, 7, 64, 1000)
# What an archive may serve with (its contract's "engine"): the ONNX graph, or the AOTInductor package.
SERVE_ENGINES = ("onnxruntime", "aotinductor")


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
    scaled: float | None = None
    # "sized": batches past cost.MIN_SWEEP run only where the model's measured cost fits the
    # budget below; "full": every batch size asked for, whatever it costs.
    parity_sweep: str = "sized"
    parity_budget_s: float = 60.0
    parity_budget_mb: float = 1536.0
    # Use the TorchScript-based exporter where the torch.export-based one fails (recorded, and held
    # to eager by the same parity gate); False makes that failure stop the chain.
    exporter_fallback: bool = True
    # Stop the chain where TorchScript cannot be made; by default the chain goes on without it
    # (the archive serves the ONNX graph) and the manifest says why it was not made.
    require_torchscript: bool = False
    # Make TorchScript at all (--no-torchscript: not on purpose, recorded as not made), and the
    # AOTInductor package, torch.export's successor to it (--no-pt2).
    torchscript: bool = True
    pt2: bool = True
    # CUDA precision to verify and serve; None takes the model spec's (fp32 unless it says tf32).
    cuda_precision: str | None = None
    # Serving defaults written into the archive's model-config.yaml. A lone request
    # waits the whole batch delay: 5 ms cost 4.8 ms of p50 in sequential requests,
    # 1 ms keeps batching under load at a fifth of that.
    serve_batch_size: int = 8
    serve_max_batch_delay_ms: int = 1
    serve_workers: int = 1
    serve_response_timeout_s: int = 30
    # ONNX Runtime intra-op threads per worker, written into the archive's contract
    # (io_contract.json "intra_op_threads"); None leaves it to the server (ONNX Runtime's
    # default on TorchServe, num_cpus on Ray). python -m pipeline tune measures the best.
    serve_threads: int | None = None
    # A generation model's served concurrency, written into its contract: requests generated at once
    # (their rows share each decode step), requests that may wait beyond them, each one's wall-clock
    # limit. None keeps the spec's (16, 64, 300 s).
    serve_max_streams: int | None = None
    serve_max_queued: int | None = None
    serve_request_timeout_s: int | None = None
    # The engine an archive serves with, written into its contract: "onnxruntime" (the ONNX graph)
    # or "aotinductor" (the AOTInductor package for the CPU, which must have passed parity).
    serve_engine: str = "onnxruntime"
    # Which archive to serve: None for the fp32 model, or a variant ("int8", "fp16").
    variant: str | None = None


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

    def pt2(self, device: str = "cpu") -> Path:
        """The AOTInductor package compiled for `device`: model.pt2 (CPU), model.cuda.pt2."""
        return self.artifacts / ("model.pt2" if device == "cpu" else f"model.{device}.pt2")

    def variant_onnx(self, variant: str) -> Path:
        return self.artifacts / f"model.{variant}.onnx"

    def served_name(self, variant: str | None) -> str:
        """The model's name on the server (and of its archive): `digits_cnn`, `digits_cnn-int8`."""
        return f"{self.model}-{variant}" if variant else self.model

    def archive(self, variant: str | None) -> Path:
        return self.model_store / f"{self.served_name(variant)}.mar"


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
        scaled=spec.tolerance.scaled if settings.scaled is None else settings.scaled,
    )


def cuda_precision(settings: Settings, spec: ModelSpec) -> str:
    """The CUDA precision parity verifies and the archive serves."""
    return settings.cuda_precision or spec.cuda_precision


def cuda_tolerance(settings: Settings, spec: ModelSpec) -> Tolerance:
    """The bound for ONNX Runtime on CUDA: the model's own, or its declared TF32 tolerance in TF32."""
    if cuda_precision(settings, spec) == "fp32":
        return tolerance(settings, spec)
    if spec.tf32_tolerance is None:
        raise SpecError(
            "parity",
            f"{spec.name}: TF32 was asked for, but the spec declares no tf32_tolerance",
            "declare the error TF32 may make in the spec, e.g. tf32_tolerance=Tolerance(atol=1e-2, rtol=1e-2), "
            "or serve in fp32 (--cuda-precision fp32)",
        )
    return spec.tf32_tolerance
