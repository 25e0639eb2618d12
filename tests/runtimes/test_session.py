"""The one ONNX Runtime session factory: its provider options, and the guards every caller gets."""

from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.runtimes import session as session_module
from pipeline.runtimes.runners import cuda_available
from pipeline.runtimes.session import SessionConfig, check_session, create_session


def test_fp32_is_the_default_and_turns_tf32_off():
    options = SessionConfig("cuda").cuda_options()
    assert options == {"device_id": "0", "use_tf32": "0", "enable_cuda_graph": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    assert SessionConfig("cuda", precision="tf32", gpu_id=3).cuda_options()["use_tf32"] == "1"
    assert SessionConfig("cuda", gpu_id=3).cuda_options()["device_id"] == "3"


def test_cuda_providers_carry_the_options_and_the_cpu_has_none():
    config = SessionConfig("cuda", precision="tf32", cuda_graph=True)
    [(name, options), cpu] = config.providers()
    assert name == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert options["use_tf32"] == "1" and options["enable_cuda_graph"] == "1"
    assert SessionConfig("cpu").providers() == ["CPUExecutionProvider"]
    assert config.describe()["precision"] == "tf32" and "provider_options" not in SessionConfig("cpu").describe()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "cpu", "cuda_graph": True}, "CUDA graphs exist only on CUDA"),
        ({"device": "cuda", "precision": "fp16"}, "unknown CUDA precision"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_impossible_configurations_are_refused(kwargs, message):
    with pytest.raises(PipelineError, match=message):
        SessionConfig(**kwargs)


class FakeSession:
    def __init__(self, providers, options=None):
        self.providers, self.options = providers, options or {}

    def get_providers(self):
        return self.providers

    def get_provider_options(self):
        return self.options


def test_a_cuda_session_that_runs_on_the_cpu_is_refused():
    with pytest.raises(PipelineError, match=r"asked for CUDAExecutionProvider but runs on \['CPUExecutionProvider'\]"):
        check_session(FakeSession(["CPUExecutionProvider"]), SessionConfig("cuda"))


def test_options_the_provider_did_not_take_are_refused():
    fake = FakeSession(
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
        {"CUDAExecutionProvider": {**SessionConfig("cuda").cuda_options(), "use_tf32": "1"}},
    )
    with pytest.raises(PipelineError, match=r"did not take these options.*use_tf32"):
        check_session(fake, SessionConfig("cuda"))
    fake.options["CUDAExecutionProvider"]["use_tf32"] = "0"
    check_session(fake, SessionConfig("cuda"))  # what was asked is what runs


def test_cpu_session_runs_on_the_cpu_with_its_threads(built):
    _, layout = built
    session = create_session(layout.onnx, SessionConfig("cpu", threads=1))
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session.get_session_options().intra_op_num_threads == 1


@pytest.mark.skipif(cuda_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_asked_for_on_a_machine_without_it_is_an_error_not_a_cpu_session(built):
    _, layout = built
    with pytest.raises(PipelineError, match="no CUDA provider|runs on"):
        create_session(layout.onnx, SessionConfig("cuda"))


def test_missing_cuda_provider_says_to_install_onnxruntime_gpu(built, monkeypatch):
    import onnxruntime

    _, layout = built
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(PipelineError, match="install onnxruntime-gpu"):
        create_session(layout.onnx, SessionConfig("cuda"))
    assert not session_module.cuda_provider_available()


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_cuda_session_runs_on_the_gpu_with_the_asked_precision(built, precision):
    _, layout = built
    session = create_session(layout.onnx, SessionConfig("cuda", precision=precision))
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    assert session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == ("1" if precision == "tf32" else "0")
