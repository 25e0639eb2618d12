"""A model's contract, declared once: names, shapes, dtypes, dynamic axes, tolerance.

Every stage reads the same `ModelSpec`: train builds and fits the model, trace and
export use its example inputs and dynamic axes, parity its sample inputs and
tolerance, package writes its I/O contract into the archive for the handler.
A model module defines `SPEC = ModelSpec(...)`; README "Bring your own model" has a
complete example.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.errors import SpecError

# A tensor dimension is either a fixed size or the name of a dynamic axis.
Dim = int | str
Feed = dict[str, np.ndarray]
# Where a model runs, and the CUDA precision it is verified and served in: declared here, once.
Device = Literal["cpu", "cuda"]
Precision = Literal["fp32", "tf32"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "tf32")
_AXIS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A tensor's name: an identifier, or dotted identifiers as a cache's names go (past_key_values.0.key).
_TENSOR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output; str dimensions are dynamic axes (e.g. "batch").

    `low`/`high` (inputs only, inclusive) bound the values a request may send: an
    embedding's indices must lie in [0, num_embeddings - 1], or ONNX Runtime fails the
    whole batch instead of refusing the one bad request.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    low: float | None = None
    high: float | None = None

    def __post_init__(self):
        # A list is the natural thing to type; a tuple keeps the spec hashable and frozen.
        if isinstance(self.shape, list):
            object.__setattr__(self, "shape", tuple(self.shape))

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.low is not None:
            out["low"] = self.low
        if self.high is not None:
            out["high"] = self.high
        return out


@dataclass(frozen=True)
class Tolerance:
    """Element-wise pass rule: |got - want| <= atol + rtol * |want| + scaled * scale.

    `scale` is the output's own magnitude in that case: the largest |want| of that
    output over the case's whole batch. A deep fp32 net (ResNet-50's logits) differs from
    eager by about 1e-6 of its scale wherever an element sits, near zero included, where
    a fixed atol alone fails it; a real bug (a wrong op, drift of 1e-3 of the scale) is
    still 100x over the bound.

    `max_mismatch` is the fraction of elements allowed beyond that bound (0: none). It is
    for smaller variants, whose rounding can flip a near-tie (an argmax label) without
    the model getting worse; the task metric is then what proves it did not.
    """

    atol: float = 1e-5
    rtol: float = 1e-4
    max_mismatch: float = 0.0
    scaled: float = 1e-5


@dataclass(frozen=True)
class TaskMetric:
    """How well the model does its job on held-out data, and how much a smaller variant may lose.

    `evaluate(infer, seed)` runs `infer(feed) -> {output name: array}` over the held-out
    data of the model trained with `seed` and returns one number. A variant (int8, fp16)
    ships only if its value is within `max_drop` of fp32's, in the metric's own units
    (0.005 is half a point of accuracy), worse meaning lower when `higher_is_better`.
    """

    name: str
    evaluate: Callable[[Callable[[Feed], Mapping[str, np.ndarray]], int], float]
    max_drop: float
    higher_is_better: bool = True

    def drop(self, reference: float, value: float) -> float:
        """How much worse `value` is than `reference` (negative: better)."""
        return reference - value if self.higher_is_better else value - reference


@dataclass(frozen=True)
class TrainResult:
    """What a model's `train` returns: fitted weights, the args that rebuild it, metrics."""

    state_dict: Mapping[str, Any]
    model_args: Mapping[str, Any]
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Labels:
    """Class names for an output's last axis (a classifier's logits): answers carry the
    top-k names with their softmax scores beside the raw values. `names[i]` is class i's name.

    {"logits": [-1.2, 1.4], "labels": [{"label": "POSITIVE", "score": 0.93}, {"label": "NEGATIVE", "score": 0.07}]}
    for one row; a list of rows gets one such list per row, and a token classifier's
    [batch, seq, classes] one per token (`pipeline.serving.common.contract.top_labels`).
    """

    output: str
    names: tuple[str, ...]
    top_k: int = 5


@dataclass(frozen=True)
class TextInput:
    """Texts in: `{"text": "..."}` or a list of texts, tokenized in the worker with this
    `tokenizer.json` (the `tokenizers` library), which travels in the archive, verified by hash.

    The tokens feed the model's inputs of these names that it has (`input_ids`,
    `attention_mask`, `token_type_ids`); a text longer than `max_length` tokens is truncated,
    or refused with a 400 where `truncate` is False.
    """

    tokenizer: Path
    max_length: int
    truncate: bool = True
    max_texts: int = 64


@dataclass(frozen=True)
class Generation:
    """A decoder that generates text with its key/value cache (`pipeline.generation`).

    The model's inputs are `input_ids` [batch, seq], `attention_mask` [batch, total] (past and
    new tokens, 0 = padding on the left), `position_ids` [batch, seq] and, per layer `i`,
    `past_key_values.{i}.key` and `.value` [batch, kv_heads, past, head_size]; its outputs are
    `logits` [batch, seq, vocab] and `present.{i}.key|value` [batch, kv_heads, total, head_size].
    One graph does the prefill (past 0) and every decode step. Texts are tokenized with
    `tokenizer` (a `tokenizer.json`, which travels in the archive); generation stops at one of
    `eos_ids`, a stop string or `max_new_tokens`, and never runs past `max_length` positions.
    """

    tokenizer: Path
    layers: int
    kv_heads: int
    head_size: int
    vocab_size: int
    eos_ids: tuple[int, ...]
    pad_id: int
    max_length: int
    bos_id: int | None = None
    dtype: str = "float32"
    # Caps a request is held to before any work: new tokens, and prompts in one batch.
    max_new_tokens: int = 256
    max_batch: int = 8
    # generation_config.json's sampling defaults (greedy where it sets none).
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # The tokenizer's chat template (Jinja, as transformers' apply_chat_template renders it): /v1/chat/completions.
    chat_template: str | None = None
    # Served: requests generated at once (their rows share each decode step), requests that may
    # wait beyond them (then 503 with Retry-After), and each request's wall-clock limit.
    max_streams: int = 16
    max_queued: int = 64
    request_timeout_s: int = 300

    def cache_names(self, prefix: str) -> list[str]:
        """`{prefix}.{i}.key`, `{prefix}.{i}.value` for each layer, in the graph's order."""
        return [f"{prefix}.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]


@dataclass(frozen=True)
class ImageInput:
    """Images in (a raw JPEG or PNG body, base64 in JSON, or multipart), decoded with Pillow
    into the model input `input` [batch, 3, height, width]: resized with Pillow's `resample`
    filter (the shortest edge to `resize_shortest_edge`, the long edge in proportion and
    truncated to an int, as transformers and torchvision do; or to exactly `resize`),
    centre-cropped to `crop` (offset (size - crop) // 2), scaled by `rescale`, then
    normalised with `mean` and `std` per channel. An image of more than
    `max_pixels` pixels is refused before it is decoded (Pillow's bomb limit, set explicitly).
    """

    input: str
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_shortest_edge: int | None = None
    resize: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    rescale: float = 1 / 255
    resample: str = "bilinear"
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline needs to know about one model."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # build(model_args) -> nn.Module; model_args come from TrainResult, saved in the checkpoint.
    build: Callable[[Mapping[str, Any]], Any]
    # train(seed) -> TrainResult; load pretrained weights here instead of training if you have them.
    train: Callable[[int], TrainResult]
    # sample_inputs(batch, rng) -> {input name: array}: trace and export examples, parity cases.
    sample_inputs: Callable[[int, np.random.Generator], Feed]
    edge_inputs: Callable[[], Feed] | None = None
    # parity_cases(rng) -> {case name: feed}: more inputs parity (and the trace check) must
    # pass, e.g. other sizes of a dynamic axis such as a sequence length of 1.
    parity_cases: Callable[[np.random.Generator], Mapping[str, Feed]] | None = None
    tolerance: Tolerance = Tolerance()
    # CUDA precision served and verified: "fp32" (exact; ONNX Runtime's TF32 off) or "tf32"
    # (faster MatMul/Gemm/Conv on Ampere and newer, ~1e-3 error), which needs tf32_tolerance.
    # Allow the TorchScript-based ONNX exporter (dynamo=False) where the torch.export-based
    # one fails; the result is recorded in the manifest and held to the same parity gate.
    exporter_fallback: bool = False
    cuda_precision: str = "fp32"
    tf32_tolerance: Tolerance | None = None
    # Largest number of rows one HTTP request may carry (the handler enforces it).
    max_rows_per_request: int = 4096
    # Longest a dynamic axis other than batch may be, per axis name: {"seq": 512} for a
    # model with 512 positions. A longer request is a 400 before ONNX Runtime runs.
    max_lengths: Mapping[str, int] = field(default_factory=dict)
    # Elements one input may have in one request (rows times every other axis), checked
    # with the lengths before ONNX Runtime runs. None: 1 Mi elements, or one longest row.
    # An axis max_lengths leaves out may be at most 4096 long (contract.DEFAULT_MAX_LENGTH).
    max_elements_per_request: int | None = None
    # Bytes: the largest request body and the largest answer the servers carry (None: sized
    # from the inputs, at least 1 MiB; 16 MiB). A larger answer is a 413 for its request alone.
    max_request_bytes: int | None = None
    max_response_bytes: int | None = None
    # Smaller variants (python -m pipeline variants): each is held to its own declared
    # parity tolerance against eager fp32, and to the task metric's max_drop where one is given.
    int8_tolerance: Tolerance | None = None
    fp16_tolerance: Tolerance | None = None
    task_metric: TaskMetric | None = None
    # calibration_inputs(rng) -> feed of representative inputs for static int8 quantization
    # (default: sample_inputs, which may be noise rather than the data the model sees).
    calibration_inputs: Callable[[np.random.Generator], Feed] | None = None
    # A request body users can paste to try the endpoint.
    example_request: Mapping[str, Any] | None = None
    # Real inputs and readable answers (README "Hugging Face checkpoints"): texts tokenized,
    # or images decoded, in the worker; class names for a classifier's output.
    text_input: TextInput | None = None
    image_input: ImageInput | None = None
    labels: Labels | None = None
    # A decoder deployed to generate: its cache layout and tokenizer (None: one forward pass).
    generation: Generation | None = None
    source: Path | None = field(default=None, compare=False)

    def request_example(self) -> dict[str, Any]:
        """A body that works: `example_request`, or else one row of `sample_inputs`, rounded
        to 0.1 (a 224 x 224 image is then about 0.6 MB of JSON, not 3 MB)."""
        if self.example_request is not None:
            return dict(self.example_request)
        feed = self.sample_inputs(1, np.random.default_rng(0))
        return {name: np.round(value[0], 1).tolist() for name, value in feed.items()}

    def source_sha256(self) -> str:
        """Hash of what the model file defines for the stages before serving: changing it retrains.

        The file's code, not its bytes (comments and layout do not count), less the
        serving-only fields of its ModelSpec(...) call and the top-level names only they
        use: editing the example request re-packages the archive, and retrains nothing.
        """
        if self.source is None or not self.source.exists():
            return ""
        return code_sha256(self.source.read_bytes())

    def check_feed(self, feed: Any, what: str, stage: str) -> Feed:
        """A feed from the spec's own hooks, checked against the declared inputs."""
        where = f"{self.name}: {what}"
        if not isinstance(feed, Mapping):
            raise SpecError(
                stage,
                f"{where} is a {type(feed).__name__}, not a dict of arrays",
                "return {input name: numpy array} from sample_inputs / edge_inputs / parity_cases",
            )
        names = [t.name for t in self.inputs]
        if sorted(feed) != sorted(names):
            raise SpecError(
                stage,
                f"{where} has keys {sorted(feed)}, the spec's inputs are {names}",
                "return exactly one array per declared input, keyed by its name",
            )
        sizes: dict[str, int] = {}
        for t in self.inputs:
            value = feed[t.name]
            if not isinstance(value, np.ndarray):
                raise SpecError(
                    stage,
                    f"{where}: {t.name} is a {type(value).__name__}, not a numpy array",
                    f"return np.asarray(...).astype(np.{t.dtype}) for {t.name}",
                )
            if value.dtype != np.dtype(t.dtype):
                raise SpecError(stage, f"{where}: {t.name} is {value.dtype}, declared {t.dtype}", f"cast it: .astype(np.{t.dtype})")
            if value.ndim != len(t.shape):
                raise SpecError(
                    stage,
                    f"{where}: {t.name} has shape {list(value.shape)}, declared {list(t.shape)}",
                    "make the array's rank match the declared shape",
                )
            for axis, (want, got) in enumerate(zip(t.shape, value.shape)):
                if isinstance(want, int) and want != got:
                    raise SpecError(
                        stage,
                        f"{where}: {t.name} axis {axis} has size {got}, declared {want}",
                        f"give {t.name} the declared shape {list(t.shape)}",
                    )
                if isinstance(want, str) and sizes.setdefault(want, got) != got:
                    raise SpecError(
                        stage,
                        f"{where}: axis '{want}' is {sizes[want]} in one input and {got} in {t.name}",
                        f"inputs that share the axis name '{want}' must have the same size along it",
                    )
        return dict(feed)


# What only the archive and the servers read: the package stage's contract records them.
# (text_input and image_input are not: parity checks tokenized texts and a decoded image.)
SERVING_ONLY = frozenset(
    {
        "example_request",
        "max_rows_per_request",
        "max_lengths",
        "max_elements_per_request",
        "max_request_bytes",
        "max_response_bytes",
        "labels",
    }
)


def tokenizer_file(spec: ModelSpec, where: Path | None = None) -> Path:
    """The spec's tokenizer.json (a text model's, or a generation model's); a relative path is relative to the model file."""
    source = spec.text_input or spec.generation
    assert source is not None
    path = Path(source.tokenizer)
    base = where or (spec.source.parent if spec.source is not None else None)
    return path if path.is_absolute() or base is None else base / path


def code_sha256(source: bytes) -> str:
    """sha256 of a model file's syntax tree without SERVING_ONLY's arguments (of the bytes, where it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return hashlib.sha256(source).hexdigest()
    serving: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ModelSpec":
            dropped = [k for k in node.keywords if k.arg in SERVING_ONLY]
            node.keywords = [k for k in node.keywords if k.arg not in SERVING_ONLY]
            serving |= {n.id for k in dropped for n in ast.walk(k.value) if isinstance(n, ast.Name)}
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}

    def serving_only(stmt: ast.stmt) -> bool:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        return bool(names) and len(names) == len(targets) and all(n in serving and n not in used for n in names)

    tree.body = [stmt for stmt in tree.body if not serving_only(stmt)]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


FIELDS = [f.name for f in dataclasses.fields(ModelSpec) if f.name != "source"]
REQUIRED = [f.name for f in dataclasses.fields(ModelSpec) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
EXAMPLE = (
    "SPEC = ModelSpec(name='my_model', inputs=(TensorSpec('x', 'float32', ('batch', 3)),), "
    "outputs=(TensorSpec('y', 'float32', ('batch', 1)),), build=build, train=train, sample_inputs=sample_inputs)"
)


def _check_tensor(t: Any, role: str, where: str) -> None:
    if not isinstance(t, TensorSpec):
        raise SpecError(
            "model",
            f"{where}: {role} {t!r} is not a TensorSpec",
            "declare each as TensorSpec(name, dtype, shape), e.g. TensorSpec('x', 'float32', ('batch', 3))",
        )
    if not isinstance(t.name, str) or not _TENSOR_NAME.match(t.name):
        raise SpecError(
            "model",
            f"{where}: {role} name {t.name!r} must be an identifier (letters, digits, '_'; dots between parts)",
            "it becomes a JSON key and an ONNX graph name; use e.g. 'image' or 'token_ids'",
        )
    try:
        np.dtype(t.dtype)
    except TypeError:
        raise SpecError(
            "model", f"{where}: {t.name} has unknown dtype {t.dtype!r}", "use a numpy dtype name such as 'float32' or 'int64'"
        ) from None
    if not isinstance(t.shape, tuple) or not t.shape or t.shape[0] != "batch":
        raise SpecError(
            "model", f"{where}: {t.name} shape {t.shape!r} must start with the dynamic 'batch' axis", "write its shape as ('batch', ...)"
        )
    for d in t.shape:
        ok = (isinstance(d, int) and not isinstance(d, bool) and d >= 1) or (isinstance(d, str) and _AXIS_NAME.match(d))
        if not ok:
            raise SpecError(
                "model",
                f"{where}: {t.name} shape {t.shape!r} has the dimension {d!r}",
                "a dimension is a positive int (fixed) or an axis name such as 'seq' (dynamic)",
            )
    if role == "output" and (t.low is not None or t.high is not None):
        raise SpecError(
            "model", f"{where}: output {t.name} declares low/high", "value ranges are checked on requests; declare them on inputs only"
        )
    for bound in (t.low, t.high):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
            raise SpecError(
                "model",
                f"{where}: {t.name} low/high must be numbers, got {bound!r}",
                "e.g. TensorSpec('token', 'int64', ('batch',), low=0, high=VOCAB - 1)",
            )
    if t.low is not None and t.high is not None and t.low > t.high:
        raise SpecError("model", f"{where}: {t.name} has low {t.low} > high {t.high}", "low and high are inclusive bounds with low <= high")


def validate(spec: Any, where: str) -> ModelSpec:
    """The spec, every field checked in turn (each error names the field and how to write it), or a SpecError."""
    fix = f"define `{EXAMPLE}` in {where}"
    if not isinstance(spec, ModelSpec):
        raise SpecError("model", f"{where}: SPEC is a {type(spec).__name__}, not a pipeline.spec.ModelSpec", fix)
    if not isinstance(spec.name, str) or not spec.name or not spec.name.replace("_", "").replace("-", "").isalnum():
        raise SpecError("model", f"{where}: name {spec.name!r} must be letters, digits, '_' or '-'", "use a name like 'my_model'")
    _check_tensors(spec, where, fix)
    _check_functions(spec, where, fix)
    _check_tolerances(spec, where)
    _check_sizes(spec, where)
    _check_labels(spec, where)
    _check_text_input(spec, where)
    _check_image_input(spec, where)
    _check_generation(spec, where)
    return spec


def _check_tensors(spec: ModelSpec, where: str, fix: str) -> None:
    """Inputs and outputs: tuples of TensorSpec, unique names, outputs' dynamic axes from the inputs."""
    for role in ("inputs", "outputs"):
        value = getattr(spec, role)
        if isinstance(value, TensorSpec):
            raise SpecError(
                "model",
                f"{where}: {role} is one TensorSpec, not a tuple of them",
                f"write {role}=(TensorSpec(...),) — note the trailing comma",
            )
        if not isinstance(value, (tuple, list)) or not value:
            raise SpecError("model", f"{where}: {role} must be a non-empty tuple of TensorSpec, got {value!r}", fix)
        for t in value:
            _check_tensor(t, role[:-1], where)
    names = [t.name for t in (*spec.inputs, *spec.outputs)]
    if len(set(names)) != len(names):
        raise SpecError("model", f"{where}: input and output names must be unique, got {names}", "rename the duplicates")
    input_axes = {d for t in spec.inputs for d in t.shape if isinstance(d, str)}
    for t in spec.outputs:
        unknown = [d for d in t.shape if isinstance(d, str) and d not in input_axes]
        if unknown:
            raise SpecError(
                "model",
                f"{where}: output {t.name} has dynamic axis {unknown[0]!r} that no input has",
                f"an output's dynamic axes must come from the inputs' ({sorted(input_axes)})",
            )


def _check_functions(spec: ModelSpec, where: str, fix: str) -> None:
    for attr in ("build", "train", "sample_inputs"):
        if not callable(getattr(spec, attr)):
            raise SpecError("model", f"{where}: {attr} is {getattr(spec, attr)!r}, not a function", fix)
    for attr in ("edge_inputs", "parity_cases", "calibration_inputs"):
        if getattr(spec, attr) is not None and not callable(getattr(spec, attr)):
            raise SpecError(
                "model", f"{where}: {attr} is {getattr(spec, attr)!r}, not a function or None", f"pass a function, or leave {attr} out"
            )


def _check_tolerances(spec: ModelSpec, where: str) -> None:
    """The tolerances (each a Tolerance, max_mismatch a fraction), the CUDA precision and the task metric."""
    if not isinstance(spec.tolerance, Tolerance):
        raise SpecError(
            "model", f"{where}: tolerance is {spec.tolerance!r}, not a Tolerance", "write tolerance=Tolerance(atol=1e-5, rtol=1e-4)"
        )
    if spec.cuda_precision not in PRECISIONS:
        raise SpecError("model", f"{where}: cuda_precision is {spec.cuda_precision!r}", "use 'fp32' (exact) or 'tf32'")
    for attr in ("tf32_tolerance", "int8_tolerance", "fp16_tolerance"):
        value = getattr(spec, attr)
        if value is not None and not isinstance(value, Tolerance):
            raise SpecError(
                "model", f"{where}: {attr} is {value!r}, not a Tolerance", f"write {attr}=Tolerance(atol=1e-2, rtol=1e-2), or leave it out"
            )
    for attr in ("tolerance", "tf32_tolerance", "int8_tolerance", "fp16_tolerance"):
        value = getattr(spec, attr)
        if value is not None and not 0.0 <= value.max_mismatch < 1.0:
            raise SpecError(
                "model",
                f"{where}: {attr}.max_mismatch is {value.max_mismatch!r}",
                "it is the fraction of elements allowed beyond the bound: 0 <= max_mismatch < 1, e.g. 0.01",
            )
    metric = spec.task_metric
    if metric is not None and (
        not isinstance(metric, TaskMetric)
        or not callable(metric.evaluate)
        or isinstance(metric.max_drop, bool)
        or not isinstance(metric.max_drop, (int, float))
        or metric.max_drop < 0
    ):
        raise SpecError(
            "model",
            f"{where}: task_metric is {metric!r}",
            "write task_metric=TaskMetric('held-out accuracy', evaluate, max_drop=0.005), "
            "with evaluate(infer, seed) -> float and max_drop >= 0 in the metric's units",
        )
    if spec.cuda_precision == "tf32" and spec.tf32_tolerance is None:
        raise SpecError(
            "model",
            f"{where}: cuda_precision is 'tf32' but no tf32_tolerance is declared",
            "declare the error TF32 may make, e.g. tf32_tolerance=Tolerance(atol=1e-2, rtol=1e-2)",
        )


def _check_sizes(spec: ModelSpec, where: str) -> None:
    """What a request may be: the axes' lengths, the bytes, the elements and the rows."""
    axes = {d for t in spec.inputs for d in t.shape if isinstance(d, str) and d != "batch"}
    if not isinstance(spec.max_lengths, Mapping):
        raise SpecError("model", f"{where}: max_lengths is {spec.max_lengths!r}", "write max_lengths={'seq': 512}")
    for axis, length in spec.max_lengths.items():
        if axis not in axes:
            raise SpecError(
                "model",
                f"{where}: max_lengths names {axis!r}, which is not a dynamic axis of the inputs",
                f"name one of the inputs' dynamic axes other than batch: {sorted(axes)}",
            )
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise SpecError("model", f"{where}: max_lengths[{axis!r}] is {length!r}", "use a positive int such as 512")
    for attr in ("max_request_bytes", "max_response_bytes"):
        value = getattr(spec, attr)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1024):
            raise SpecError(
                "model", f"{where}: {attr} is {value!r}", f"use a number of bytes of at least 1024, e.g. {attr}=16 << 20, or leave it out"
            )
    cap = spec.max_elements_per_request
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise SpecError("model", f"{where}: max_elements_per_request is {cap!r}", "use a positive int such as 1 << 20, or leave it out")
    if not isinstance(spec.max_rows_per_request, int) or spec.max_rows_per_request < 1:
        raise SpecError("model", f"{where}: max_rows_per_request is {spec.max_rows_per_request!r}", "use a positive int such as 4096")


def _check_generation(spec: ModelSpec, where: str) -> None:
    """A generation model's layout: positive sizes and caps, a tokenizer that exists, ids inside the vocabulary."""
    gen = spec.generation
    if gen is None:
        return
    if not isinstance(gen, Generation):
        raise SpecError(
            "model", f"{where}: generation is {gen!r}", "build it with pipeline.generation.decoder.spec_fields(Generation(...), ...)"
        )
    for attr in (
        "layers",
        "kv_heads",
        "head_size",
        "vocab_size",
        "max_length",
        "max_new_tokens",
        "max_batch",
        "max_streams",
        "max_queued",
        "request_timeout_s",
    ):
        if not _positive(getattr(gen, attr)):
            raise SpecError("model", f"{where}: generation.{attr} is {getattr(gen, attr)!r}", "use a positive int")
    ids = [*gen.eos_ids, gen.pad_id, *([] if gen.bos_id is None else [gen.bos_id])]
    if not all(isinstance(i, int) and 0 <= i < gen.vocab_size for i in ids):
        raise SpecError(
            "model", f"{where}: generation's EOS, pad and BOS ids {ids} are not all in 0..{gen.vocab_size - 1}", "use ids of the vocabulary"
        )
    if not Path(gen.tokenizer).is_file():
        raise SpecError(
            "model", f"{where}: generation's tokenizer {gen.tokenizer} does not exist", "point it at the checkpoint's tokenizer.json"
        )


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_labels(spec: ModelSpec, where: str) -> None:
    labels = spec.labels
    if labels is None:
        return
    fix = "write labels=Labels('logits', ('NEGATIVE', 'POSITIVE'), top_k=2): the output's name and one name per class"
    outputs = {t.name: t for t in spec.outputs}
    if not isinstance(labels, Labels) or labels.output not in outputs:
        raise SpecError("model", f"{where}: labels is {labels!r}; it must be a Labels naming one of the outputs {sorted(outputs)}", fix)
    if not isinstance(labels.names, tuple) or not labels.names or not all(isinstance(n, str) for n in labels.names):
        raise SpecError("model", f"{where}: labels.names must be a non-empty tuple of strings", fix)
    classes = outputs[labels.output].shape[-1]
    if isinstance(classes, int) and classes != len(labels.names):
        raise SpecError("model", f"{where}: labels names {len(labels.names)} classes, {labels.output} has {classes}", fix)
    if not _positive(labels.top_k):
        raise SpecError("model", f"{where}: labels.top_k is {labels.top_k!r}", "use a positive int such as 5")
    if "labels" in outputs:
        raise SpecError("model", f"{where}: an output is named 'labels', where answers put the class names", "rename that output")


def _check_text_input(spec: ModelSpec, where: str) -> None:
    text = spec.text_input
    if text is None:
        return
    if not isinstance(text, TextInput):
        raise SpecError("model", f"{where}: text_input is {text!r}", "write text_input=TextInput(Path('tokenizer.json'), max_length=128)")
    if spec.image_input is not None:
        raise SpecError("model", f"{where}: declares both text_input and image_input", "a model takes texts or images: keep one")
    tokenizer = tokenizer_file(spec, None if spec.source is not None else Path(where).parent)
    if not tokenizer.is_file():
        raise SpecError(
            "model", f"{where}: text_input's tokenizer {tokenizer} does not exist", "point it at the checkpoint's tokenizer.json"
        )
    names = [t.name for t in spec.inputs]
    if "input_ids" not in names or not set(names) <= {"input_ids", "attention_mask", "token_type_ids"}:
        raise SpecError(
            "model",
            f"{where}: text_input feeds input_ids, attention_mask and token_type_ids, and the model's inputs are {names}",
            "name the inputs input_ids (required), attention_mask and token_type_ids (optional), each ('batch', 'seq')",
        )
    for attr in ("max_length", "max_texts"):
        if not _positive(getattr(text, attr)):
            raise SpecError("model", f"{where}: text_input.{attr} is {getattr(text, attr)!r}", "use a positive int")
    for t in spec.inputs:
        axis = t.shape[1] if len(t.shape) == 2 else None
        if not isinstance(axis, str):
            raise SpecError("model", f"{where}: {t.name} has shape {list(t.shape)}", f"a text input is ('batch', 'seq'): {t.name} too")
        if spec.max_lengths.get(axis, text.max_length) < text.max_length:
            raise SpecError(
                "model",
                f"{where}: text_input.max_length {text.max_length} is over max_lengths[{axis!r}] {spec.max_lengths[axis]}",
                "make max_length at most the model's positions",
            )


def _check_image_input(spec: ModelSpec, where: str) -> None:
    image = spec.image_input
    if image is None:
        return
    example = "ImageInput('pixel_values', 224, 224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))"
    if not isinstance(image, ImageInput):
        raise SpecError("model", f"{where}: image_input is {image!r}", f"write image_input={example}")
    if [t.name for t in spec.inputs] != [image.input] or spec.inputs[0].shape != ("batch", 3, image.height, image.width):
        raise SpecError(
            "model",
            f"{where}: image_input feeds the one input {image.input!r} of shape ('batch', 3, {image.height}, {image.width}); "
            f"the model's inputs are {[(t.name, t.shape) for t in spec.inputs]}",
            f"declare inputs=(TensorSpec({image.input!r}, 'float32', ('batch', 3, {image.height}, {image.width})),)",
        )
    for attr in ("mean", "std"):
        value = getattr(image, attr)
        if not isinstance(value, tuple) or len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
            raise SpecError("model", f"{where}: image_input.{attr} is {value!r}", "give three numbers, one per RGB channel")
    if 0 in image.std:
        raise SpecError("model", f"{where}: image_input.std has a 0", "every channel's std must be non-zero")
    if image.resample not in ("nearest", "bilinear", "bicubic", "lanczos"):
        raise SpecError("model", f"{where}: image_input.resample is {image.resample!r}", "use nearest, bilinear, bicubic or lanczos")
    if not _positive(image.max_pixels) or (image.resize_shortest_edge is not None and not _positive(image.resize_shortest_edge)):
        raise SpecError("model", f"{where}: image_input's max_pixels and resize_shortest_edge must be positive ints", f"e.g. {example}")
    if image.resize_shortest_edge is not None and image.resize is not None:
        raise SpecError("model", f"{where}: image_input declares resize and resize_shortest_edge", "keep one of them")
    size = (image.height, image.width)
    if image.crop is not None:
        if tuple(image.crop) != size:
            raise SpecError("model", f"{where}: image_input.crop is {image.crop}, the input is {size}", f"crop to {size}")
        resized = tuple(image.resize) if image.resize else None
        if (resized and (resized[0] < size[0] or resized[1] < size[1])) or (image.resize_shortest_edge or max(size)) < max(size):
            raise SpecError("model", f"{where}: image_input resizes to less than its crop {size}", "resize to at least the crop")
    elif image.resize_shortest_edge is not None or (image.resize is not None and tuple(image.resize) != size):
        raise SpecError(
            "model",
            f"{where}: image_input resizes to something other than the input's {size} and declares no crop",
            f"add crop={size}, or leave the resize out (the image is then resized to {size})",
        )


# A Hugging Face checkpoint folder (`save_pretrained`'s): `hf:PATH`, or `hf:PATH#task=TASK`
# to choose the task the folder's architecture does not say (or to override it).
HF_PREFIX = "hf:"
HF_TASKS = (
    "text-classification",
    "token-classification",
    "feature-extraction",
    "image-classification",
    "text-generation",
    "causal-lm",
)
