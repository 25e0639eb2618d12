"""The engines the benchmark times, each reduced to one zero-argument call.

`Engine.bind(feed)` puts the inputs where the engine wants them (torch tensors on the
device, ONNX Runtime OrtValues bound to an IO binding) and returns a call that runs
one inference and returns when its result is ready, so the timer measures inference
and nothing else, the same way for every engine. GPU calls synchronise the device
before returning. Each engine names its floor: the same API running an identity
model, i.e. the per-call cost of the runtime itself.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.artifacts.names import pt2_key
from pipeline.artifacts.safety import check_onnx_file
from pipeline.errors import PipelineError
from pipeline.runtimes.session import SessionConfig, create_session
from pipeline.spec import Device, ModelSpec


@dataclass(frozen=True)
class EngineKind:
    """One engine the benchmark knows: what it is, which runtime it belongs to, its floor, where it can run."""

    name: str
    description: str
    runtime: Literal["torch", "onnxruntime", "openvino"]
    floor: str | None = None  # the identity model through the same API: the runtime's own per-call cost
    default: bool = False  # timed unless --engines names others
    cuda_graph: bool = False  # --cuda-graph adds it: ONNX Runtime's CUDA graphs and their fair PyTorch peers
    variant: str | None = None  # a gated smaller variant (python -m pipeline variants), added beside fp32 once it passed
    only_on: tuple[Device, str] | None = None  # the one device it exists on, and why; elsewhere it is skipped, not failed
    # Not part of the parity stage, so its answers are compared with eager at each batch size before its times count.
    held_to_parity: bool = False
    # What it computes in: winners are named per precision (an fp16 engine is held to the spec's fp16_tolerance).
    precision: Literal["fp32", "fp16", "int8"] = "fp32"


_CUDA_GRAPHS: tuple[Device, str] = ("cuda", "CUDA graphs exist only on CUDA")
_CUDA: tuple[Device, str] = ("cuda", "benched on CUDA only")
# In report order; the floors last.
KINDS: dict[str, EngineKind] = {
    k.name: k
    for k in (
        EngineKind("eager", "eager PyTorch, module(*tensors) under torch.inference_mode", "torch", "floor:eager", default=True),
        EngineKind(
            "torchscript", "torch.jit.trace module (model.ts) under torch.inference_mode", "torch", "floor:torchscript", default=True
        ),
        EngineKind(
            "onnxruntime",
            "ONNX Runtime, inputs pre-bound as OrtValues on the device (IO binding), run_with_iobinding",
            "onnxruntime",
            "floor:onnxruntime",
            default=True,
        ),
        EngineKind(
            "onnxruntime-run",
            "ONNX Runtime, plain session.run with numpy arrays (copies in and out)",
            "onnxruntime",
            "floor:onnxruntime-run",
            default=True,
        ),
        EngineKind("torch.compile", "torch.compile(model) (inductor), compiled during warm-up", "torch", "floor:eager", default=True),
        EngineKind(
            "aotinductor",
            "the AOTInductor package (model.pt2, torch.export + inductor ahead of time, freezing on) loaded with "
            "aoti_load_package; its setup is the pt2 stage's compile time; its floor is eager's call path",
            "torch",
            "floor:eager",
            default=True,
        ),
        EngineKind(
            "eager-fp16",
            "eager PyTorch under torch.autocast(cuda, float16): what a PyTorch user turns on first for speed",
            "torch",
            "floor:eager",
            default=True,
            only_on=_CUDA,
            held_to_parity=True,
            precision="fp16",
        ),
        EngineKind(
            "torch.compile-max-autotune",
            'torch.compile(model, mode="max-autotune") (inductor, autotuned kernels), compiled during warm-up',
            "torch",
            "floor:eager",
            default=True,
            only_on=_CUDA,
        ),
        EngineKind(
            "onnxruntime-tensorrt",
            "ONNX Runtime's TensorRT provider (fp32, CUDA for what TensorRT does not take), IO binding; "
            "engines built per shape during warm-up",
            "onnxruntime",
            "floor:onnxruntime",
            default=True,
            only_on=_CUDA,
            held_to_parity=True,
        ),
        EngineKind(
            "openvino",
            "OpenVINO's CPU plugin reading the same verified model.onnx: f32 (not the bf16 its CPU plugin may default to), "
            "the same thread count, one stream, inputs pre-bound to an infer request",
            "openvino",
            "floor:openvino",
            default=True,
            only_on=("cpu", "OpenVINO is benched on the CPU"),
            held_to_parity=True,
        ),
        EngineKind(
            "onnxruntime-cudagraph",
            "ONNX Runtime CUDA provider with enable_cuda_graph, fixed buffers (one session per batch size)",
            "onnxruntime",
            "floor:onnxruntime",
            cuda_graph=True,
            only_on=_CUDA_GRAPHS,
        ),
        EngineKind(
            "torch-cudagraph",
            "eager PyTorch captured once per batch size in a torch.cuda.CUDAGraph, replayed on static inputs",
            "torch",
            "floor:eager",
            cuda_graph=True,
            only_on=_CUDA_GRAPHS,
        ),
        EngineKind(
            "torch.compile-cudagraphs",
            'torch.compile(mode="reduce-overhead") (inductor + CUDA graphs), compiled during warm-up',
            "torch",
            "floor:eager",
            cuda_graph=True,
            only_on=_CUDA_GRAPHS,
        ),
        EngineKind(
            "onnxruntime-int8",
            "the gated int8 variant (model.int8.onnx) through the same IO binding calls",
            "onnxruntime",
            "floor:onnxruntime",
            variant="int8",
            only_on=("cpu", "the int8 variant is made and verified for the CPU"),
            precision="int8",
        ),
        EngineKind(
            "onnxruntime-fp16",
            "the gated fp16 variant (model.fp16.onnx, float32 in and out) through the same IO binding calls",
            "onnxruntime",
            "floor:onnxruntime",
            variant="fp16",
            only_on=("cuda", "the fp16 variant is made and verified for CUDA"),
            precision="fp16",
        ),
        EngineKind("floor:eager", "nn.Identity through the eager call path: torch's per-call overhead", "torch"),
        EngineKind("floor:torchscript", "scripted identity through TorchScript: its per-call overhead", "torch"),
        EngineKind("floor:onnxruntime", "identity ONNX graph through the same IO binding calls: ORT's per-call overhead", "onnxruntime"),
        EngineKind("floor:onnxruntime-run", "identity ONNX graph through session.run: ORT's per-call overhead with copies", "onnxruntime"),
        EngineKind("floor:openvino", "identity ONNX graph through the same OpenVINO calls: its per-call overhead", "openvino"),
    )
}
# Views of KINDS, for the places that ask one question of every engine.
ENGINES = tuple(name for name, k in KINDS.items() if k.floor is not None)  # what --engines takes
DEFAULT_ENGINES = tuple(name for name in ENGINES if KINDS[name].default)
CUDA_GRAPH_ENGINES = tuple(name for name in ENGINES if KINDS[name].cuda_graph)
VARIANT_ENGINES: dict[str, str] = {name: v for name in ENGINES if (v := KINDS[name].variant) is not None}
FLOOR_OF: dict[str, str] = {name: f for name in ENGINES if (f := KINDS[name].floor) is not None}
DESCRIPTION = {name: k.description for name, k in KINDS.items()}


def engines_of(precision: str, runtime: str | None = None) -> tuple[str, ...]:
    """The engines computing in `precision` (of one runtime, or all): "the fastest ONNX Runtime against the fastest PyTorch"."""
    return tuple(n for n in ENGINES if KINDS[n].precision == precision and runtime in (None, KINDS[n].runtime))


@dataclass
class Engine:
    """A loaded engine: `bind(feed)` returns the call the timer runs."""

    name: str
    device: str
    provider: str
    bind: Callable[[dict[str, np.ndarray]], Callable[[], Any]]
    floor: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # An engine held to parity in the benchmark: its outputs for a feed, by output name.
    answer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None


def _sync(device: str) -> Callable[[], None]:
    if device == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None


def torch_engine(name: str, module, spec: ModelSpec, device: str) -> Engine:
    """Eager, TorchScript or compiled module (or an AOTInductor package, already on its device); inputs become
    tensors on the device up front."""
    import torch

    if isinstance(module, torch.nn.Module | torch.jit.ScriptModule):
        module = module.to(device)
    sync = _sync(device)

    def bind(feed):
        args = [torch.from_numpy(np.ascontiguousarray(feed[t.name])).to(device) for t in spec.inputs]
        sync()

        def call():
            with torch.inference_mode():
                out = module(*args)
            sync()
            return out

        return call

    provider = f"torch {device}" + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else "")
    return Engine(name, device, provider, bind, FLOOR_OF.get(name))


def pt2_engine(name: str, path: Path, spec: ModelSpec, device: str) -> Engine:
    """An AOTInductor package, called as a module is (`torch_engine`): it was compiled for `device` already."""
    import torch

    engine = torch_engine(name, torch._inductor.aoti_load_package(str(path)), spec, device)
    return replace(engine, provider=f"AOTInductor {device}")


def ort_iobinding_engine(name: str, session, spec_inputs: list[str], device: str) -> Engine:
    """ONNX Runtime with IO binding: inputs live as OrtValues on the device, outputs are allocated there."""
    import onnxruntime as ort

    ort_device = "cuda" if device == "cuda" else "cpu"
    sync = _sync(device)
    outputs = [o.name for o in session.get_outputs()]

    def bind(feed):
        binding = session.io_binding()
        values = []
        for name_ in spec_inputs:
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feed[name_]), ort_device, 0)
            values.append(value)  # keep alive for the binding's lifetime
            binding.bind_ortvalue_input(name_, value)
        for out in outputs:
            binding.bind_output(out, ort_device, 0)

        def call():
            session.run_with_iobinding(binding)
            sync()
            return values

        return call

    return Engine(name, device, session.get_providers()[0], bind, FLOOR_OF.get(name))


def ort_run_engine(name: str, session, spec_inputs: list[str], device: str) -> Engine:
    """ONNX Runtime's plain numpy API: what most code calls (on CUDA it copies in and out each call)."""
    outputs = [o.name for o in session.get_outputs()]

    def bind(feed):
        arrays = {n: np.ascontiguousarray(feed[n]) for n in spec_inputs}
        return lambda: session.run(outputs, arrays)

    return Engine(name, device, session.get_providers()[0], bind, FLOOR_OF.get(name))


def openvino_compiled(path: Path, threads: int):
    """OpenVINO's CPU plugin on the ONNX file, compiled once for every batch size (its batch axis stays dynamic), as
    ONNX Runtime's session is: f32, `threads` intra-op threads, one stream; the cold start compiles the same."""
    import openvino as ov

    check_onnx_file(path)  # the guards every ONNX Runtime session gets: no data read from outside the model's folder
    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU", OPENVINO_CONFIG | {"INFERENCE_NUM_THREADS": threads})


# f32: on CPUs with bfloat16 support the CPU plugin's default inference precision is bf16.
OPENVINO_CONFIG = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def openvino_engine(name: str, path: Path, threads: int) -> Engine:
    """OpenVINO through a pre-bound infer request; `answer(feed)` runs the same compiled model for the parity check."""
    import openvino as ov

    compiled = openvino_compiled(path, threads)
    outputs = [o.get_any_name() for o in compiled.outputs]

    def bind(feed):
        request = compiled.create_infer_request()
        for port in compiled.inputs:  # the arrays stay alive in the tensors, shared, not copied
            request.set_tensor(port, ov.Tensor(np.ascontiguousarray(feed[port.get_any_name()]), shared_memory=True))

        def call():
            request.infer()
            return request

        return call

    def answer(feed):
        result = compiled({port.get_any_name(): np.ascontiguousarray(feed[port.get_any_name()]) for port in compiled.inputs})
        return {name: np.asarray(result[name]) for name in outputs}

    described = {key: str(compiled.get_property(key)) for key in (*OPENVINO_CONFIG, "INFERENCE_NUM_THREADS")}
    provider = f"OpenVINO {ov.get_version().split('-')[0]} CPU"
    held = KINDS[name].held_to_parity  # a floor's identity graph answers with its inputs, which nothing is compared with
    return Engine(name, "cpu", provider, bind, FLOOR_OF.get(name), {"openvino": described}, answer if held else None)


def torch_answer(module, spec: ModelSpec, device: str, autocast: bool = False):
    """A torch engine's outputs for a feed, as numpy float32 by output name (the parity check's side)."""
    import torch

    def answer(feed):
        args = [torch.from_numpy(np.ascontiguousarray(feed[t.name])).to(device) for t in spec.inputs]
        with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=autocast):
            out = module(*args)
        values = out if isinstance(out, (tuple, list)) else (out,)
        return {t.name: v.float().cpu().numpy() for t, v in zip(spec.outputs, values)}

    return answer


def autocast_engine(name: str, module, spec: ModelSpec) -> Engine:
    """Eager PyTorch under torch.autocast(cuda, float16): inputs stay as declared, matmuls and convolutions run in fp16."""
    import torch

    module = module.to("cuda").eval()

    def bind(feed):
        args = [torch.from_numpy(np.ascontiguousarray(feed[t.name])).to("cuda") for t in spec.inputs]
        torch.cuda.synchronize()

        def call():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                out = module(*args)
            torch.cuda.synchronize()
            return out

        return call

    provider = f"torch cuda ({torch.cuda.get_device_name(0)}), autocast float16"
    return Engine(name, "cuda", provider, bind, FLOOR_OF.get(name), answer=torch_answer(module, spec, "cuda", autocast=True))


def ort_answer(session, spec: ModelSpec):
    """An ONNX Runtime session's outputs for a feed, by output name (the parity check's side)."""
    names = [t.name for t in spec.outputs]

    def answer(feed):
        return dict(zip(names, session.run(names, {t.name: np.ascontiguousarray(feed[t.name]) for t in spec.inputs})))

    return answer


def ort_cudagraph_engine(path: Path, spec_inputs: list[str], config: SessionConfig) -> Engine:
    """CUDA graphs capture one shape with fixed buffers, so each batch size gets its own session."""
    import onnxruntime as ort
    import torch

    graph_config = replace(config, device="cuda", cuda_graph=True)

    def bind(feed):
        session = create_session(path, graph_config)
        arrays = {n: np.ascontiguousarray(feed[n]) for n in spec_inputs}
        # A captured graph replays fixed addresses: outputs must be preallocated, so
        # their shapes and dtypes come from one run on the CPU provider first.
        cpu = create_session(path, SessionConfig("cpu"))
        outs = [o.name for o in cpu.get_outputs()]
        expected = cpu.run(outs, arrays)
        binding = session.io_binding()
        keep = []
        for n in spec_inputs:
            value = ort.OrtValue.ortvalue_from_numpy(arrays[n], "cuda", 0)
            keep.append(value)
            binding.bind_ortvalue_input(n, value)
        for out, ref in zip(outs, expected):
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(ref.shape), ref.dtype, "cuda", 0)
            keep.append(value)
            binding.bind_ortvalue_output(out, value)
        session.run_with_iobinding(binding)  # the first run captures the graph

        def call():
            session.run_with_iobinding(binding)
            torch.cuda.synchronize()
            return keep

        return call

    return Engine(
        "onnxruntime-cudagraph",
        "cuda",
        "CUDAExecutionProvider (CUDA graphs)",
        bind,
        FLOOR_OF["onnxruntime-cudagraph"],
        {"session": graph_config.describe()},
    )


def torch_cudagraph_engine(module, spec: ModelSpec) -> Engine:
    """Eager PyTorch captured in a torch.cuda.CUDAGraph per batch size, replayed on static inputs.

    As the CUDA graphs docs say: warm up on a side stream first (allocator, cuDNN
    autotuning), capture once, then each call copies nothing and replays the graph.
    """
    import torch

    module = module.to("cuda").eval()

    def bind(feed):
        static = [torch.from_numpy(np.ascontiguousarray(feed[t.name])).to("cuda") for t in spec.inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(3):
                module(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            outputs = module(*static)
        torch.cuda.synchronize()

        def call():
            graph.replay()
            torch.cuda.synchronize()
            return outputs

        return call

    return Engine(
        "torch-cudagraph", "cuda", f"torch cuda ({torch.cuda.get_device_name(0)}), CUDAGraph replay", bind, FLOOR_OF["torch-cudagraph"]
    )


def compiled_cudagraphs_engine(module, spec: ModelSpec, recompile_limit: int) -> Engine:
    """torch.compile(mode="reduce-overhead"): inductor with CUDA graphs, one graph per batch size."""
    import torch

    _raise_recompile_limit(recompile_limit)
    compiled = torch.compile(module.to("cuda").eval(), mode="reduce-overhead")

    def bind(feed):
        args = [torch.from_numpy(np.ascontiguousarray(feed[t.name])).to("cuda") for t in spec.inputs]

        def call():
            # Outputs of a CUDA-graph tree are overwritten by the next replay; marking the
            # step tells torch the previous outputs are no longer read.
            torch.compiler.cudagraph_mark_step_begin()
            with torch.inference_mode():
                out = compiled(*args)
            torch.cuda.synchronize()
            return out

        return call

    return Engine(
        "torch.compile-cudagraphs",
        "cuda",
        f"torch cuda ({torch.cuda.get_device_name(0)}), inductor + CUDA graphs",
        bind,
        FLOOR_OF["torch.compile-cudagraphs"],
    )


def _raise_recompile_limit(limit: int) -> None:
    """A batch sweep compiles once per size; torch's default limit (8) would fall back to eager silently."""
    import torch._dynamo

    for key in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), limit))


def identity_onnx(spec: ModelSpec, path: Path) -> Path:
    """An ONNX graph that returns its inputs: same inputs, same dtypes, same dynamic axes."""
    import onnx
    from onnx import helper

    def value_info(name: str, t, prefix: str = ""):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
        return helper.make_tensor_value_info(prefix + name, elem, list(t.shape))

    nodes = [helper.make_node("Identity", [t.name], [f"out_{t.name}"]) for t in spec.inputs]
    graph = helper.make_graph(
        nodes, "identity", [value_info(t.name, t) for t in spec.inputs], [value_info(t.name, t, "out_") for t in spec.inputs]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class _Identity:
    """Built lazily so importing this module does not import torch."""

    @staticmethod
    def module():
        import torch

        class Identity(torch.nn.Module):
            def forward(self, *args):
                return args[0] if len(args) == 1 else args

        return Identity()


def skip_reason(name: str, device: str) -> str | None:
    """Why `name` cannot exist on `device` (CUDA graphs on the CPU), or is not installed here; None when it can run."""
    kind = KINDS.get(name)
    if kind is None:
        return None
    if kind.only_on is not None and kind.only_on[0] != device:
        return kind.only_on[1]
    if kind.runtime == "openvino" and importlib.util.find_spec("openvino") is None:
        return "the openvino package is not installed: pip install 'pipeline[bench]'"
    return None


def load(name: str, spec: ModelSpec, config: SessionConfig, paths: dict[str, Path], model_factory, recompile_limit: int = 16) -> Engine:
    """Load one engine (or floor) on `config.device`; raises with the reason if it cannot run here.

    A flat table, one branch per engine in `KINDS`' order, which reads best whole."""
    import torch

    device = config.device
    input_names = [t.name for t in spec.inputs]
    reason = skip_reason(name, device)
    if reason:
        raise PipelineError("bench", f"{name} on {device}: {reason}", "it is skipped on this device")
    if name == "eager":
        return torch_engine(name, model_factory(), spec, device)
    if name == "torch.compile":
        _raise_recompile_limit(recompile_limit)
        return torch_engine(name, torch.compile(model_factory().to(device)), spec, device)
    if name == "torchscript":
        return torch_engine(name, torch.jit.load(str(paths["torchscript"]), map_location=device), spec, device)
    if name == "aotinductor":
        key = pt2_key(device)
        if key not in paths:
            raise PipelineError("bench", f"aotinductor on {device}: no package was made for {device}", "python -m pipeline pt2 --force")
        return pt2_engine(name, paths[key], spec, device)
    if name == "onnxruntime":
        return ort_iobinding_engine(name, create_session(paths["onnx"], config), input_names, device)
    if name == "onnxruntime-run":
        return ort_run_engine(name, create_session(paths["onnx"], config), input_names, device)
    if name in VARIANT_ENGINES:
        variant = VARIANT_ENGINES[name]
        if variant not in paths:
            raise PipelineError(
                "bench", f"{name}: the {variant} variant has not passed its gates", "python -m pipeline variants --" + variant
            )
        return ort_iobinding_engine(name, create_session(paths[variant], config), input_names, device)
    if name == "eager-fp16":
        return autocast_engine(name, model_factory(), spec)
    if name == "torch.compile-max-autotune":
        _raise_recompile_limit(recompile_limit)
        return torch_engine(name, torch.compile(model_factory().to(device), mode="max-autotune"), spec, device)
    if name == "onnxruntime-tensorrt":
        session = create_session(paths["onnx"], replace(config, tensorrt=True))
        return replace(ort_iobinding_engine(name, session, input_names, device), answer=ort_answer(session, spec))
    if name in ("openvino", "floor:openvino"):
        return openvino_engine(name, paths["onnx" if name == "openvino" else "identity"], config.threads or 1)
    if name == "onnxruntime-cudagraph":
        return ort_cudagraph_engine(paths["onnx"], input_names, config)
    if name == "torch-cudagraph":
        return torch_cudagraph_engine(model_factory(), spec)
    if name == "torch.compile-cudagraphs":
        return compiled_cudagraphs_engine(model_factory(), spec, recompile_limit)
    if name == "floor:eager":
        return torch_engine(name, _Identity.module(), spec, device)
    if name == "floor:torchscript":
        feed = spec.sample_inputs(2, np.random.default_rng(0))
        example = tuple(torch.from_numpy(feed[t.name]) for t in spec.inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_Identity.module(), example, check_trace=False)
        return torch_engine(name, traced, spec, device)
    if name == "floor:onnxruntime":
        return ort_iobinding_engine(name, create_session(paths["identity"], config), input_names, device)
    if name == "floor:onnxruntime-run":
        return ort_run_engine(name, create_session(paths["identity"], config), input_names, device)
    raise PipelineError("bench", f"unknown engine {name!r}", f"choose from {', '.join(ENGINES)}")
