"""A Hugging Face checkpoint on disk as a ModelSpec: `--model hf:PATH` (docs/real-models.md, "Hugging Face checkpoints").

PATH is the folder `save_pretrained` writes: `config.json`, `model.safetensors`, and
`tokenizer.json` (+ `tokenizer_config.json`) for text or `preprocessor_config.json` for
images. Nothing is fetched: every transformers call reads the folder (`local_files_only`).
The task comes from `config.json`'s `architectures`, or from `hf:PATH#task=TASK`
(`--task`). The spec's example inputs are real: sentences through the checkpoint's own
tokenizer, random pixels through its preprocessor's normalisation. The folder's files are
what the stages hash, so editing the checkpoint retrains (reloads) it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.models.auto import modeling_auto

from pipeline.artifacts import files
from pipeline.errors import SpecError
from pipeline.generation import decoder
from pipeline.generation.decoder import CachedDecoder
from pipeline.models.hf_common import SAMPLE_LENGTH, TokenFeeds, check_links, checkpoint_file, config_args, inside, num_labels
from pipeline.models.hf_image import PREPROCESSOR, image_input
from pipeline.spec import HF_TASKS, Feed, Generation, ImageInput, Labels, ModelSpec, TensorSpec, TextInput, TrainResult, code_sha256

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
INDEX = f"{WEIGHTS}.index.json"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE = "chat_template.jinja"

# Each task's transformers classes, per model_type: what `--task` picks, and what it infers from.
TASK_CLASSES: dict[str, Mapping[str, Any]] = {
    "text-classification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    "token-classification": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    "feature-extraction": modeling_auto.MODEL_MAPPING_NAMES,
    "image-classification": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    "text-generation": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "causal-lm": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
}
# A causal LM's class is both tasks' class: it is deployed to generate (causal-lm: one logits pass).
PREFERRED = ("text-generation",)
CLASSIFIERS = ("text-classification", "token-classification", "image-classification")
IMAGE_TASKS = ("image-classification",)
# What tokenizer_config.json says when no length was set (transformers' VERY_LARGE_INTEGER).
UNSET_LENGTH = int(1e29)
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello world!",
    "I loved this film, the acting was wonderful and the ending surprised me.",
    "Not good.",
    "Where is the nearest train station?",
    "The weather today is cold and grey, with rain expected in the evening.",
    "Thanks a lot.",
    "She sells sea shells by the sea shore.",
)
# Sentence pairs, for a model that reads two segments (token_type_ids): a premise and a
# hypothesis, a question and an answer, two paraphrases, as NLI, QA and MRPC fine-tunes see them.
PAIRS = (
    ("The quick brown fox jumps over the lazy dog.", "A fox jumps over a dog."),
    ("Where is the nearest train station?", "The train station is near."),
    ("I loved this film, the acting was wonderful and the ending surprised me.", "Not good."),
    ("Hello world!", "Hello!"),
)
TEXT_INPUTS = ("input_ids", "attention_mask")
PAIR_INPUTS = (*TEXT_INPUTS, "token_type_ids")


@dataclass(frozen=True)
class CheckpointSpec(ModelSpec):
    """A ModelSpec whose source is a checkpoint folder: its files and the task are what the stages hash."""

    task: str = ""

    def source_sha256(self) -> str:
        if self.source is None or not self.source.is_dir():
            return ""
        present = {name: _file_sha256(self.source / name) for name in checkpoint_files(self.source)}
        code = code_sha256(Path(__file__).read_bytes())
        return hashlib.sha256(json.dumps({"task": self.task, "code": code, "files": present}, sort_keys=True).encode()).hexdigest()


def checkpoint_files(folder: Path) -> list[str]:
    """The files of a checkpoint that make the model: config, weights (one file or shards), tokenizer and chat template, preprocessor."""
    names = {CONFIG, TOKENIZER, TOKENIZER_CONFIG, PREPROCESSOR, INDEX, GENERATION_CONFIG, CHAT_TEMPLATE}
    return sorted(p.name for p in folder.iterdir() if p.is_file() and (p.name in names or p.suffix == ".safetensors"))


def folder_state(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Each checkpoint file's name, size and mtime: a spec built from the folder is good while these stay."""
    try:
        return tuple((name, (st := (folder / name).stat()).st_size, st.st_mtime_ns) for name in checkpoint_files(folder))
    except OSError:  # no such folder: checkpoint_spec says what is wrong
        return ()


@functools.lru_cache(maxsize=64)
def _sha256_at(path: str, size: int, mtime_ns: int) -> str:
    return files.sha256_file(Path(path))


def _file_sha256(path: Path) -> str:
    # Every stage resolves the spec: hash a large weights file once per version of it.
    stat = path.stat()
    return _sha256_at(str(path), stat.st_size, stat.st_mtime_ns)


class CheckpointModule(nn.Module):
    """The transformers model, its outputs as a tuple of tensors (what tracing and torch.export take)."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model: nn.Module = model
        self.outputs = outputs
        # No key/value cache for a causal LM: the logits of one forward pass.
        self.extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}

    def run(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**inputs, **self.extra, return_dict=True)
        return tuple(out[name] for name in self.outputs)


# forward names its arguments: torch.export maps the dynamic axes onto them by position.
class TextModule(CheckpointModule):
    """(input_ids, attention_mask) -> the task's outputs."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(input_ids=input_ids, attention_mask=attention_mask)


class TextPairModule(CheckpointModule):
    """(input_ids, attention_mask, token_type_ids) -> the task's outputs: a model that reads sentence pairs."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


class ImageModule(CheckpointModule):
    """pixel_values -> the task's outputs."""

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(pixel_values=pixel_values)


def build(args: Mapping[str, Any]) -> CheckpointModule | CachedDecoder:
    """The checkpoint's class at its config (model_args), random weights: train loads the real ones."""
    cls = getattr(transformers, args["architecture"])
    if args["task"] == "text-generation":
        config = cls.config_class.from_dict(dict(args["config"]))
        return CachedDecoder(cls(config), config.num_hidden_layers)
    modules: dict[tuple[str, ...], type[CheckpointModule]] = {TEXT_INPUTS: TextModule, PAIR_INPUTS: TextPairModule}
    module = modules.get(tuple(args["inputs"]), ImageModule)
    config = cls.config_class.from_dict(dict(args["config"]))
    return module(cls(config, **args.get("init_args", {})), tuple(args["outputs"]))


def load_weights(folder: Path, args: Mapping[str, Any]) -> TrainResult:
    """The checkpoint's weights in the module `build(args)` makes; model_args carry the weights' sha256."""
    cls = getattr(transformers, args["architecture"])
    init = args.get("init_args", {})
    check_files(folder)  # again: the folder may have changed since the spec was made
    loaded, info = cls.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, dtype=torch.float32, output_loading_info=True, **init
    )
    missing = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if missing:
        built = f"{args['architecture']}({', '.join(f'{k}={v}' for k, v in init.items())})" if init else args["architecture"]
        raise SpecError(
            "train",
            f"{weights_file(folder)} has no weights (or weights of another shape) for {built}: {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
            "the folder's weights are not all of the model its config.json describes: save the trained model again with "
            "model.save_pretrained(PATH), or pass the task the weights were saved for (--task)",
        )
    model = build(args)
    model.model.load_state_dict(loaded.state_dict())
    weights = {name: _file_sha256(folder / name) for name in checkpoint_files(folder) if name.endswith(".safetensors")}
    return TrainResult(model.state_dict(), {**args, "weights_sha256": weights}, {})


def checkpoint_spec(folder: Path, task: str | None = None) -> ModelSpec:
    """The spec of the checkpoint in `folder`, for `task` (None: the one its architecture says)."""
    folder = folder.resolve()
    raw, config = read_config(folder)
    task, cls = model_class(folder, raw, config, task)
    inputs = model_inputs(folder, cls, config, task)
    init = init_args(folder, cls)
    outputs = output_names(cls, config, task, init)
    args = {"task": task, "architecture": cls.__name__, "inputs": list(inputs), "outputs": list(outputs), "config": config_args(config)}
    if init:  # what build() passes the class besides its config, so it rebuilds the module the weights fill
        args["init_args"] = init
    fields: dict[str, Any] = {
        "name": spec_name(folder),
        "outputs": tuple(TensorSpec(name, "float32", output_shape(name, config, task)) for name in outputs),
        "build": build,
        "train": lambda seed: load_weights(folder, args),  # the checkpoint's weights; no seed to use
        "labels": Labels("logits", label_names(folder, raw, config)) if task in CLASSIFIERS else None,
        "source": folder,
        "task": task,
    }
    if task in IMAGE_TASKS:
        return CheckpointSpec(**fields, **image_fields(folder, config))
    if task == "text-generation":
        return CheckpointSpec(**{**fields, **generation_fields(folder, config)})
    segments = type_vocab_size(cls, config) if "token_type_ids" in inputs else 0
    return CheckpointSpec(**fields, **text_fields(folder, config, segments))


def model_inputs(folder: Path, cls: type[PreTrainedModel], config: PreTrainedConfig, task: str) -> tuple[str, ...]:
    """What forward takes: pixel_values for an image task, input_ids and attention_mask for the others,
    and token_type_ids for a model that tells two segments apart (BERT: a sentence pair)."""
    want = "pixel_values" if task in IMAGE_TASKS else "input_ids"
    if cls.main_input_name != want:
        raise SpecError(
            "model",
            f"{folder / CONFIG}: task {task} needs {want}, {cls.__name__} takes {cls.main_input_name}",
            "use image-classification for an image model; the other tasks are for text models",
        )
    if task in IMAGE_TASKS:
        return ("pixel_values",)
    if "attention_mask" not in inspect.signature(cls.forward).parameters:
        raise SpecError(
            "model",
            f"{folder / CONFIG}: {cls.__name__} takes no attention_mask",
            "use a text model whose forward takes input_ids and attention_mask",
        )
    return PAIR_INPUTS if type_vocab_size(cls, config) > 1 else TEXT_INPUTS


def type_vocab_size(cls: type[PreTrainedModel], config: PreTrainedConfig) -> int:
    """How many segments the model's token_type_ids tell apart; 0 where forward takes none.

    RoBERTa's forward takes token_type_ids but its config has one type (and DistilBERT's none):
    such a model has no second segment to feed, so it gets the two inputs of a single text.
    """
    if "token_type_ids" not in inspect.signature(cls.forward).parameters:
        return 0
    types = getattr(config, "type_vocab_size", None)
    return types if isinstance(types, int) and types > 0 else 0


def spec_name(folder: Path) -> str:
    """The folder's name as the pipeline's names go: letters, digits, '_' and '-'."""
    name = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in folder.name).strip("_")
    return name or "hf_model"


def read_config(folder: Path) -> tuple[dict[str, Any], PreTrainedConfig]:
    """config.json as written, and as transformers reads it."""
    if not folder.is_dir():
        raise SpecError(
            "model",
            f"checkpoint folder {folder} does not exist"
            + (f"; did you mean {folder.with_name(near)}?" if (near := files.nearby(folder, Path.is_dir)) else ""),
            "pass hf:PATH, PATH the folder model.save_pretrained(PATH) wrote",
        )
    check_files(folder)  # before anything in it is opened
    path = folder / CONFIG
    if not path.is_file():
        raise SpecError("model", f"{folder} has no {CONFIG}", f"save the model into it with model.save_pretrained({str(folder)!r})")
    if not (folder / WEIGHTS).is_file() and not (folder / INDEX).is_file():
        other = [p.name for p in folder.glob("*.bin")]
        raise SpecError(
            "model",
            f"{folder} has no {WEIGHTS}" + (f" (it has {', '.join(other)}: pickled weights are not loaded)" if other else ""),
            "save the weights as safetensors: model.save_pretrained(PATH) (safe_serialization is the default)",
        )
    try:
        raw = json.loads(path.read_text())
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, KeyError, OSError) as exc:
        raise SpecError(
            "model",
            f"{path}: transformers {transformers.__version__} cannot read it: {exc}".strip(),
            "check its model_type; a model type newer than the installed transformers needs a newer transformers",
        ) from None
    return raw, config


def infer_task(folder: Path, architecture: str) -> str:
    """The task an architecture is for: the task whose transformers classes include it."""
    tasks = [task for task, classes in TASK_CLASSES.items() if architecture in _names(classes.values())]
    preferred = [task for task in tasks if task in PREFERRED]
    tasks = preferred or tasks
    if len(tasks) != 1:
        why = f"is for {' and '.join(tasks)}" if tasks else "is none of the tasks' classes"
        raise SpecError(
            "model",
            f"{folder / CONFIG}: architectures {architecture} {why}",
            f"say which task: --task TASK (or --model hf:{folder}#task=TASK), TASK one of {', '.join(HF_TASKS)}",
        )
    return tasks[0]


def model_class(folder: Path, raw: Mapping[str, Any], config: PreTrainedConfig, task: str | None) -> tuple[str, type[PreTrainedModel]]:
    """The task and the transformers class that does it: the architecture's own, or the task's class for this model_type."""
    architectures = raw.get("architectures") or []
    if architectures and getattr(transformers, architectures[0], None) is None:
        raise SpecError(
            "model",
            f"{folder / CONFIG}: architectures {architectures[0]} is not a class of transformers {transformers.__version__}",
            "save the model with a transformers class (its name goes into architectures), or install the transformers that has it",
        )
    if task is None:
        if not architectures:
            raise SpecError(
                "model", f"{folder / CONFIG} names no architectures", f"say which task: --task TASK, TASK one of {', '.join(HF_TASKS)}"
            )
        task = infer_task(folder, architectures[0])
    if architectures and architectures[0] in _names(TASK_CLASSES[task].values()):
        return task, getattr(transformers, architectures[0])
    names = TASK_CLASSES[task].get(config.model_type)
    if names is None:
        fits = [t for t, classes in TASK_CLASSES.items() if config.model_type in classes]
        raise SpecError(
            "model",
            f"{folder / CONFIG}: task {task} does not fit model_type {config.model_type!r} ({', '.join(architectures) or 'no architectures'})",
            f"use a task this model has a class for: {', '.join(fits) or 'none of ' + ', '.join(HF_TASKS)}",
        )
    return task, getattr(transformers, _names([names])[0])


def _names(values: Any) -> list[str]:
    # A mapping's value is one class name or a tuple of them.
    return [n for v in values for n in ((v,) if isinstance(v, str) else v)]


def check_files(folder: Path) -> None:
    """Every file the loader may read is the folder's own (no link out of it), and the weights are safetensors:
    the shards' index may name no other file (a pickle, a path out)."""
    check_links(folder)
    if (folder / WEIGHTS).is_file() or not (folder / INDEX).is_file():
        return  # transformers reads model.safetensors and never the index then
    path = folder / INDEX
    try:
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SpecError("model", f"{path} cannot be read: {exc!r}", "save the weights again: model.save_pretrained(PATH)") from None
    bad = [s for s in shards if not isinstance(s, str) or Path(s).name != s or not s.endswith(".safetensors")]
    if bad:
        raise SpecError(
            "model",
            f"{path} names {bad}: a safetensors index may name only .safetensors files in the folder (pickled weights are not loaded)",
            "save the weights as safetensors: model.save_pretrained(PATH) (safe_serialization is the default)",
        )
    for shard in shards:
        inside(folder, shard)


def weights_file(folder: Path) -> Path:
    """The file that says which tensors the weights hold: model.safetensors, or the shards' index (as transformers picks)."""
    return folder / WEIGHTS if (folder / WEIGHTS).is_file() else folder / INDEX


def weight_names(folder: Path) -> set[str]:
    """The names of the tensors in the folder's weights, from the safetensors header or the index: nothing is loaded."""
    path = weights_file(folder)
    try:
        if path.name.endswith(".index.json"):
            return set(json.loads(path.read_text())["weight_map"])
        with safe_open(str(path), framework="pt") as weights:
            return set(weights.keys())
    except (ValueError, KeyError, TypeError, OSError, SafetensorError) as exc:
        raise SpecError(
            "model", f"{path} cannot be read: {exc}", "save the weights again: model.save_pretrained(PATH) (safe_serialization)"
        ) from None


def init_args(folder: Path, cls: type[PreTrainedModel]) -> dict[str, Any]:
    """What the class takes besides its config to build the module the folder's weights fill.

    A BERT-family encoder (BertModel, RobertaModel, XLMRobertaModel, ...) builds a pooler by
    default; a sentence-embedding model is saved without one (add_pooling_layer=False), and
    so is the encoder inside a token classifier. Where the weights hold no pooler, the class
    is built without it, as transformers offers: a random pooler would be served otherwise.
    """
    if "add_pooling_layer" not in inspect.signature(cls.__init__).parameters:
        return {}
    prefix = f"{cls.base_model_prefix}."  # a task model's file holds its encoder under this name
    if any(name.removeprefix(prefix).startswith("pooler.") for name in weight_names(folder)):
        return {}
    return {"add_pooling_layer": False}


def output_names(cls: type[PreTrainedModel], config: PreTrainedConfig, task: str, init: Mapping[str, Any]) -> tuple[str, ...]:
    if task == "text-generation":
        return ("logits", "present")  # the spec's outputs come from generation_fields
    if task != "feature-extraction":
        return ("logits",)
    with torch.device("meta"):  # the class as build() makes it, no memory: does it have a pooler?
        model = cls(config, **init)
    return ("last_hidden_state", "pooler_output") if getattr(model, "pooler", None) is not None else ("last_hidden_state",)


def output_shape(name: str, config: PreTrainedConfig, task: str) -> tuple[int | str, ...]:
    if name == "pooler_output":
        return ("batch", config.hidden_size)
    if name == "last_hidden_state":
        return ("batch", "seq", config.hidden_size)
    if task == "causal-lm":
        return ("batch", "seq", config.vocab_size)
    return ("batch", "seq", num_labels(config)) if task == "token-classification" else ("batch", num_labels(config))


def label_names(folder: Path, raw: Mapping[str, Any], config: PreTrainedConfig) -> tuple[str, ...]:
    """id2label's names in class order; config.json's own table must have one per class id."""
    table = raw.get("id2label")
    if table is None:
        names: dict[Any, str] = dict(config.id2label or {})
        return tuple(names[i] for i in range(num_labels(config)))
    count = raw.get("num_labels", len(table))
    ids = sorted(int(k) for k in table) if all(str(k).isdigit() for k in table) else None
    if ids != list(range(count)):
        raise SpecError(
            "model",
            f"{folder / CONFIG}: id2label has ids {sorted(table)}, num_labels is {count}",
            f"give id2label one name for each class id 0..{count - 1} (its keys are the ids)",
        )
    return tuple(str(table[str(i)]) for i in range(count))


def max_length(folder: Path, config: PreTrainedConfig) -> int:
    """tokenizer_config.json's model_max_length, at most the model's positions."""
    positions = getattr(config, "max_position_embeddings", None)
    path = folder / TOKENIZER_CONFIG
    declared = json.loads(path.read_text()).get("model_max_length") if path.is_file() else None
    lengths = [n for n in (positions, declared) if isinstance(n, int) and 0 < n < UNSET_LENGTH]
    if not lengths:
        raise SpecError(
            "model",
            f"{folder}: neither {CONFIG} (max_position_embeddings) nor {TOKENIZER_CONFIG} (model_max_length) says how long a text may be",
            f"set model_max_length in {TOKENIZER_CONFIG}: PreTrainedTokenizerFast(..., model_max_length=512).save_pretrained(PATH)",
        )
    return min(lengths)


def text_fields(folder: Path, config: PreTrainedConfig, segments: int = 0) -> dict[str, Any]:
    """A text model's inputs and their examples; `segments` > 0: token_type_ids too, of that many segment ids."""
    path = checkpoint_file(
        folder,
        TOKENIZER,
        "a text model's inputs are made by its tokenizer",
        f"save the tokenizer beside the model: AutoTokenizer.from_pretrained(...).save_pretrained({str(folder)!r}) (a fast tokenizer)",
    )
    tokenizer = read_tokenizer(path, config)
    length = max_length(folder, config)
    feeds = TextFeeds(path, TokenFeeds(config.vocab_size, length, segments), _pad_id(tokenizer, config))
    inputs: tuple[TensorSpec, ...] = (
        TensorSpec("input_ids", "int64", ("batch", "seq"), low=0, high=config.vocab_size - 1),
        TensorSpec("attention_mask", "int64", ("batch", "seq"), low=0, high=1),
    )
    if segments:
        inputs += (TensorSpec("token_type_ids", "int64", ("batch", "seq"), low=0, high=segments - 1),)
    return {
        "inputs": inputs,
        "sample_inputs": feeds.sample_inputs,
        "edge_inputs": feeds.tokens.edge_inputs,
        "parity_cases": feeds.parity_cases,
        "max_lengths": {"seq": length},
        "example_request": {"text": SENTENCES[1]},  # tokenized in the worker, as every text request is
        "text_input": TextInput(tokenizer=path, max_length=length, truncate=True),
    }


def generation_fields(folder: Path, config: PreTrainedConfig) -> dict[str, Any]:
    """A decoder's cache layout, tokenizer and generation settings, and its graph's inputs and outputs."""
    path = checkpoint_file(
        folder,
        TOKENIZER,
        "a decoder's prompts are tokenized and its tokens turned back into text by its tokenizer",
        f"save the tokenizer beside the model: AutoTokenizer.from_pretrained(...).save_pretrained({str(folder)!r}) (a fast tokenizer)",
    )
    tokenizer = read_tokenizer(path, config)
    settings = generation_config(folder)
    eos = _ids(settings.get("eos_token_id", config.eos_token_id), config.vocab_size)
    pad = _ids(settings.get("pad_token_id", getattr(config, "pad_token_id", None)), config.vocab_size)
    bos = _ids(settings.get("bos_token_id", getattr(config, "bos_token_id", None)), config.vocab_size)
    heads = config.num_attention_heads
    gen = Generation(
        tokenizer=path,
        layers=config.num_hidden_layers,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_size=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab_size=config.vocab_size,
        eos_ids=eos,
        pad_id=pad[0] if pad else eos[0] if eos else _pad_id(tokenizer, config),
        bos_id=bos[0] if bos else None,
        max_length=max_length(folder, config),
        do_sample=bool(settings.get("do_sample", False)),
        temperature=float(settings.get("temperature") or 1.0),
        top_k=int(settings.get("top_k") or 0),
        top_p=float(settings.get("top_p") or 1.0),
        chat_template=chat_template(folder),
    )
    return decoder.spec_fields(gen, SENTENCES[1])


def chat_template(folder: Path) -> str | None:
    """The tokenizer's chat template: chat_template.jinja (transformers 5) or tokenizer_config.json's; None where it has none."""
    path = inside(folder, CHAT_TEMPLATE)
    if path.is_file():
        return path.read_text()
    path = inside(folder, TOKENIZER_CONFIG)
    try:
        template = json.loads(path.read_text()).get("chat_template") if path.is_file() else None
    except (ValueError, OSError, AttributeError):
        return None  # the tokenizer itself is read from tokenizer.json; a broken config only loses the chat route
    return template if isinstance(template, str) else None


def read_tokenizer(path: Path, config: PreTrainedConfig) -> Tokenizer:
    """The folder's tokenizer.json, which must fit the model's vocabulary."""
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises its own exception type
        raise SpecError(
            "model", f"{path} cannot be read by tokenizers: {exc}", "save it again with a fast tokenizer's save_pretrained"
        ) from None
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise SpecError(
            "model",
            f"{path} has {tokenizer.get_vocab_size()} tokens, {path.parent / CONFIG} vocab_size is {config.vocab_size}",
            "use the tokenizer the model was trained with",
        )
    return tokenizer


def generation_config(folder: Path) -> dict[str, Any]:
    """generation_config.json as written (EOS, pad and sampling defaults); {} where the folder has none."""
    path = inside(folder, GENERATION_CONFIG)
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise SpecError(
            "model", f"{path} cannot be read: {exc}", "save it again: model.generation_config.save_pretrained(PATH), or remove it"
        ) from None
    if not isinstance(settings, dict):
        raise SpecError("model", f"{path} holds a {type(settings).__name__}, not an object", "save it again with save_pretrained")
    return settings


def _ids(value: Any, vocab_size: int) -> tuple[int, ...]:
    # An id, a list of ids or None, as generation_config.json and config.json write them.
    values = value if isinstance(value, list) else [] if value is None else [value]
    return tuple(v for v in values if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < vocab_size)


def _pad_id(tokenizer: Tokenizer, config: PreTrainedConfig) -> int:
    # Any id does for padding under a mask of 0; the tokenizer's own, where it has one.
    padding = tokenizer.padding or {}
    pad = padding.get("pad_id", getattr(config, "pad_token_id", None))
    return pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else 0


@dataclass(frozen=True)
class TextFeeds:
    """`input_ids` and `attention_mask` (and `token_type_ids`, where the model takes them) of real
    sentences through the checkpoint's tokenizer, right-padded."""

    tokenizer: Path
    tokens: TokenFeeds
    pad_id: int

    def encode(self, texts: Sequence[str | tuple[str, str]], length: int | None = None) -> Feed:
        """Texts (or pairs of texts) tokenized, cut to `length` and right-padded to it (None: the longest)."""
        tokenizer = Tokenizer.from_file(str(self.tokenizer))
        cut = self.tokens.max_length
        # A tokenizer may give a text no tokens; a row needs one.
        rows = [(e.ids[:cut], e.type_ids[:cut]) if e.ids else ([self.pad_id], [0]) for e in tokenizer.encode_batch(list(texts))]
        length = length or max(len(row) for row, _ in rows)
        ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        types = np.zeros_like(ids)  # the padding in segment 0, as the tokenizers library pads it
        for i, (row, segments) in enumerate(rows):
            ids[i, : min(len(row), length)] = row[:length]
            types[i, : min(len(row), length)] = segments[:length]
        return self.tokens.feed(ids, [min(len(row), length) for row, _ in rows], types)

    def sample_inputs(self, batch: int, rng: np.random.Generator) -> Feed:
        texts = [SENTENCES[i] for i in rng.integers(0, len(SENTENCES), size=batch)]
        return self.encode(texts, min(SAMPLE_LENGTH, self.tokens.max_length))

    def parity_cases(self, rng: np.random.Generator) -> dict[str, Feed]:
        """A right-padded batch of sentences of different lengths, sequences of length 1, and,
        for a model of segments, a padded batch of sentence pairs (the second sentence is segment 1)."""
        padded = self.encode(SENTENCES[:4])
        lengths = padded["attention_mask"].sum(axis=1).tolist()
        # Length 1: each sentence's second token (its first word, after a tokenizer's [CLS]).
        words = self.encode(SENTENCES[4:7])["input_ids"][:, 1:2]
        cases = {
            f"padded sentences seq={padded['input_ids'].shape[1]} lengths={lengths}": padded,
            "seq=1 b=3": self.tokens.feed(words, [1] * 3),
        }
        if self.tokens.type_vocab_size:
            pairs = self.encode(PAIRS)
            lengths = pairs["attention_mask"].sum(axis=1).tolist()
            cases[f"padded sentence pairs seq={pairs['input_ids'].shape[1]} lengths={lengths}"] = pairs
        return cases


def image_fields(folder: Path, config: PreTrainedConfig) -> dict[str, Any]:
    image = image_input(folder, config)
    feeds = PixelFeeds(image)
    return {
        "inputs": (TensorSpec("pixel_values", "float32", ("batch", 3, image.height, image.width)),),
        "sample_inputs": feeds.sample_inputs,
        "edge_inputs": feeds.edge_inputs,
        # An image is too large a JSON body to paste; the serving side takes image files.
        "example_request": None,
        "image_input": image,
    }


@dataclass(frozen=True)
class PixelFeeds:
    """`pixel_values` of random RGB pixels, normalised as the preprocessor does it."""

    image: ImageInput

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        mean, std = np.asarray(self.image.mean), np.asarray(self.image.std)
        values = (pixels.astype(np.float64) * self.image.rescale - mean) / std
        return values.transpose(0, 3, 1, 2).astype(np.float32)  # [batch, height, width, 3] -> [batch, 3, height, width]

    def sample_inputs(self, batch: int, rng: np.random.Generator) -> Feed:
        pixels = rng.integers(0, 256, size=(batch, self.image.height, self.image.width, 3))
        return {"pixel_values": self.normalise(pixels)}

    def edge_inputs(self) -> Feed:
        """A black, a white and a mid-grey image."""
        pixels = np.stack([np.full((self.image.height, self.image.width, 3), v) for v in (0, 255, 128)])
        return {"pixel_values": self.normalise(pixels)}
