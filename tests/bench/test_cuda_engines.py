"""The CUDA engines a user would pick (autocast fp16, max-autotune, TensorRT): what can be checked without a GPU.

On a machine with CUDA they run in `scripts/bench_cuda.sh`; here they must be skipped by name, their
sessions refused where they cannot run, and their results judged per precision.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.bench import engines
from pipeline.bench import latency as bench
from pipeline.errors import PipelineError
from pipeline.models import load_spec
from pipeline.runtimes.session import CPU, CUDA, TENSORRT, SessionConfig, check_session
from pipeline.spec import Tolerance

CUDA_ONLY = ("eager-fp16", "torch.compile-max-autotune", "onnxruntime-tensorrt")


def test_the_cuda_engines_are_default_and_skipped_on_the_cpu_by_name():
    for name in CUDA_ONLY:
        assert name in engines.DEFAULT_ENGINES
        assert engines.skip_reason(name, "cpu") == "benched on CUDA only"
        assert engines.skip_reason(name, "cuda") is None
    assert engines.engines_of("fp16") == ("eager-fp16", "onnxruntime-fp16")
    assert "onnxruntime-tensorrt" in engines.engines_of("fp32", "onnxruntime") and "eager-fp16" not in engines.engines_of("fp32")
    # A cold start of its own only where the engine loads differently from another one.
    cold = bench.cold_engines(bench.BenchSettings())
    assert "onnxruntime-tensorrt" in cold and "openvino" in cold
    assert not {"eager-fp16", "torch.compile-max-autotune", "torch.compile"} & set(cold)


class FakeSession:
    def __init__(self, providers):
        self.providers = providers

    def get_providers(self):
        return self.providers

    def get_provider_options(self):
        return {}


def test_a_tensorrt_session_runs_on_tensorrt_or_says_what_is_missing():
    with pytest.raises(PipelineError, match="TensorRT runs only on CUDA"):
        SessionConfig(device="cpu", tensorrt=True)
    config = SessionConfig(device="cuda", tensorrt=True)
    assert [p[0] if isinstance(p, tuple) else p for p in config.providers()] == [TENSORRT, CUDA, CPU]
    assert config.describe()["tensorrt_options"] == {"device_id": "0", "trt_fp16_enable": "False"}
    with pytest.raises(PipelineError, match="TensorRT's libraries did not load") as err:
        check_session(FakeSession([CUDA, CPU]), config)  # ORT's silent fallback when libnvinfer is missing
    assert "asked for TensorrtExecutionProvider" in err.value.problem


def test_an_fp16_engine_is_held_to_the_fp16_tolerance_or_refused_by_name():
    spec = load_spec("simple_nn")
    assert bench.held_tolerance(spec, "openvino") == spec.tolerance
    with pytest.raises(PipelineError, match="declares no fp16_tolerance"):
        bench.held_tolerance(spec, "eager-fp16")
    loose = Tolerance(atol=1e-2, rtol=1e-2)
    assert bench.held_tolerance(replace(spec, fp16_tolerance=loose), "eager-fp16") == loose


def test_the_winner_is_named_per_precision():
    records = [
        {"device": "cuda", "batch": 64, "engine": e, "p50_ms": ms}
        for e, ms in (
            ("eager", 10.0),
            ("torch.compile-max-autotune", 6.0),
            ("onnxruntime", 8.0),
            ("onnxruntime-tensorrt", 4.0),
            ("eager-fp16", 5.0),
            ("onnxruntime-fp16", 2.5),
        )
    ]
    fp32, fp16 = bench.verdicts(records)
    assert (fp32["precision"], fp32["fastest"], fp32["winner"]) == ("fp32", "onnxruntime-tensorrt", "ONNX Runtime")
    assert fp32["pytorch"] == "torch.compile-max-autotune" and fp32["fastest_vs_best_pytorch"] == pytest.approx(1.5)
    assert (fp16["precision"], fp16["fastest"], fp16["pytorch"]) == ("fp16", "onnxruntime-fp16", "eager-fp16")
    assert fp16["fastest_vs_eager"] == pytest.approx(4.0) and fp16["by"] == pytest.approx(2.0)
