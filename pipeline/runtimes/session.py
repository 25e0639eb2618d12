"""The one way this project makes an ONNX Runtime session.

Parity, the benchmark, cold start and the TorchServe handler all call `create_session`,
so each gets the same guards:
- the model file is refused if it keeps data anywhere but its own data file beside it
  (`model.onnx.data`, for models over 2 GiB): ONNX Runtime would follow an
  external-data path anywhere;
- a session asked for CUDA that ends up on the CPU is an error, never a silent fallback;
- the CUDA provider options are set explicitly and read back from the session.

CUDA precision is a declared choice. ONNX Runtime's CUDA provider computes MatMul, Gemm
and cuDNN convolutions in TF32 by default on Ampere and newer GPUs, which moved a small
CNN's outputs by 2.5e-3 on an H200. "fp32" (the default) turns that off; "tf32" turns it
on and must pass parity against its own tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.artifacts.safety import check_onnx_file
from pipeline.errors import PipelineError
from pipeline.spec import PRECISIONS, Device, Precision

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class SessionConfig:
    """Where and how a session runs; `provider_options()` is what ONNX Runtime is given."""

    device: Device = "cpu"
    # Intra-op threads; None lets ONNX Runtime choose (all cores).
    threads: int | None = None
    gpu_id: int = 0
    precision: Precision = "fp32"
    # CUDA graphs replay one captured shape with fixed buffers (the benchmark's engine).
    cuda_graph: bool = False
    # cuDNN's convolution algorithm search: EXHAUSTIVE (ORT's default) times every
    # algorithm on the first call of each shape, HEURISTIC picks one without timing.
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "EXHAUSTIVE"
    # ONNX Runtime's TensorRT provider first (fp32; the benchmark's engine), CUDA for what it does not take.
    tensorrt: bool = False

    def __post_init__(self):
        if self.device not in ("cpu", "cuda"):
            raise PipelineError("runtime", f"unknown device {self.device!r}", "use 'cpu' or 'cuda'")
        if self.precision not in PRECISIONS:
            raise PipelineError("runtime", f"unknown CUDA precision {self.precision!r}", "use 'fp32' or 'tf32'")
        if self.cuda_graph and self.device != "cuda":
            raise PipelineError("runtime", "CUDA graphs exist only on CUDA", "use device 'cuda' or drop cuda_graph")
        if self.tensorrt and self.device != "cuda":
            raise PipelineError("runtime", "TensorRT runs only on CUDA", "use device 'cuda' or drop tensorrt")

    def cuda_options(self) -> dict[str, str]:
        """The CUDA provider's options, as strings (how ONNX Runtime reports them back)."""
        return {
            "device_id": str(self.gpu_id),
            "use_tf32": "1" if self.precision == "tf32" else "0",
            "enable_cuda_graph": "1" if self.cuda_graph else "0",
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
        }

    def tensorrt_options(self) -> dict[str, str]:
        return {"device_id": str(self.gpu_id), "trt_fp16_enable": "False"}

    def providers(self) -> list[Any]:
        if self.tensorrt:
            return [(TENSORRT, self.tensorrt_options()), (CUDA, self.cuda_options()), CPU]
        if self.device == "cuda":
            # CPU stays in the list for the few ops without a CUDA kernel (ORT places
            # them itself); the session as a whole must still run on CUDA (checked below).
            return [(CUDA, self.cuda_options()), CPU]
        return [CPU]

    def describe(self) -> dict[str, Any]:
        """What to record in reports and the manifest."""
        out: dict[str, Any] = {"device": self.device, "threads": self.threads}
        if self.device == "cuda":
            out.update(precision=self.precision, provider_options=self.cuda_options())
        if self.tensorrt:
            out["tensorrt_options"] = self.tensorrt_options()
        return out


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return CUDA in ort.get_available_providers()


def create_session(path: Path | str, config: SessionConfig = SessionConfig()):
    """An ONNX Runtime session for `path` as `config` says, or a PipelineError saying why not."""
    import onnxruntime as ort

    # ORT follows external-data paths wherever they point: only the model's own
    # `<name>.data` beside it passes; ORT then reads it relative to the model's folder.
    check_onnx_file(Path(path))
    ort.set_default_logger_severity(3)  # warnings only from the session options below, not the global logger
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if config.threads is not None:
        options.intra_op_num_threads = config.threads
    if config.device == "cuda":
        if CUDA not in ort.get_available_providers():
            raise PipelineError(
                "runtime",
                f"CUDA was asked for, but this onnxruntime ({ort.__version__}) has no CUDA "
                f"provider (it has {ort.get_available_providers()})",
                "install onnxruntime-gpu (not onnxruntime) on a machine with an NVIDIA GPU, or use the CPU",
            )
        # onnxruntime-gpu needs CUDA and cuDNN libraries; reuse the ones torch ships.
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
    session = ort.InferenceSession(str(path), sess_options=options, providers=config.providers())
    check_session(session, config)
    return session


def check_session(session, config: SessionConfig) -> None:
    """Refuse a session that does not run where and how it was asked to."""
    want = TENSORRT if config.tensorrt else CUDA if config.device == "cuda" else CPU
    got = session.get_providers()
    # ORT silently falls back to the CPU when the CUDA provider fails to load, and to CUDA when TensorRT's libraries do not.
    if not got or got[0] != want:
        fix = (
            "TensorRT's libraries did not load in onnxruntime-gpu: pip install the tensorrt package its release notes name, "
            "or leave the onnxruntime-tensorrt engine out"
            if config.tensorrt
            else "check the CUDA 13 / cuDNN 9 libraries (import torch first, or onnxruntime.preload_dlls())"
        )
        raise PipelineError("runtime", f"ONNX Runtime was asked for {want} but runs on {got}", fix)
    if config.device == "cuda":
        # The options that change results or how a call runs must read back as asked.
        applied = session.get_provider_options().get(CUDA, {})
        wanted = {k: v for k, v in config.cuda_options().items() if k in ("device_id", "use_tf32", "enable_cuda_graph")}
        wrong = {k: (v, applied.get(k)) for k, v in wanted.items() if applied.get(k) != v}
        if wrong:
            raise PipelineError(
                "runtime",
                f"the CUDA provider did not take these options (asked, got): {wrong}",
                "upgrade onnxruntime-gpu to the version in constraints.txt",
            )
