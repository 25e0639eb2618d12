"""`--model hf:PATH`: a save_pretrained folder on disk as a ModelSpec, and through the chain.

Each checkpoint is a small config of a transformers class with random weights, saved with
`save_pretrained` beside a tokenizer built with the `tokenizers` library (a word-level
vocabulary) or an image processor (transformers' Pil backends: no torchvision): no hub, no download.
"""

from __future__ import annotations

import inspect
import io
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoImageProcessor,
    BeitImageProcessorPil,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BitImageProcessorPil,
    CLIPImageProcessorPil,
    ConvNextImageProcessorPil,
    DeiTImageProcessorPil,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LevitImageProcessorPil,
    MobileNetV1ImageProcessorPil,
    MobileNetV2ImageProcessorPil,
    PoolFormerImageProcessorPil,
    PreTrainedTokenizerFast,
    PvtImageProcessorPil,
    RobertaConfig,
    RobertaForSequenceClassification,
    SiglipImageProcessorPil,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from pipeline import cli
from pipeline.artifacts import files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import CHECKPOINT
from pipeline.errors import SpecError
from pipeline.models import hf_checkpoint, hf_image, load_spec
from pipeline.reliability import hostile
from pipeline.serving.common import preprocess
from pipeline.serving.common.contract import Contract, declare
from pipeline.serving.torchserve import server as serve
from pipeline.settings import Layout, Settings
from pipeline.spec import HF_TASKS, ImageInput, Labels, TextInput
from pipeline.stages import train
from tests.helpers import copy_root, needs_java

# The vocabulary: every word and mark of the sentences (and pairs) the spec's examples are made of.
WORDS = re.findall(r"\w+|[^\w\s]+", " ".join(hf_checkpoint.SENTENCES + sum(hf_checkpoint.PAIRS, ())).lower())
BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 100}
# 40 positions, a tokenizer_config.json that says 48: texts are at most 40 tokens.
POSITIONS, TOKENIZER_LENGTH = 40, 48
SENTIMENT = {0: "negative", 1: "positive", 2: "neutral"}
ENTITIES = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
FLOWERS = {0: "daisy", 1: "rose", 2: "tulip", 3: "iris"}
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def tokenizer(model_max_length: int | None = TOKENIZER_LENGTH) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *dict.fromkeys(WORDS)])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", **extra)


def save(model, folder: Path, processor) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_checkpoints(root: Path) -> dict[str, Path]:
    torch.manual_seed(0)

    def bert(**labels):
        return BertConfig(**BERT, max_position_embeddings=POSITIONS, **labels)

    vit = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, id2label=FLOWERS
    )
    gpt2 = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=POSITIONS, bos_token_id=2, eos_token_id=3)
    image = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD, resample=Image.Resampling.BICUBIC)
    return {
        "sentiment": save(BertForSequenceClassification(bert(id2label=SENTIMENT)), root / "my.sentiment model", tokenizer()),
        "ner": save(BertForTokenClassification(bert(id2label=ENTITIES)), root / "ner", tokenizer()),
        "encoder": save(BertModel(bert()), root / "encoder", tokenizer()),
        "flowers": save(ViTForImageClassification(vit), root / "flowers", image),
        "gpt": save(GPT2LMHeadModel(gpt2), root / "gpt", tokenizer(None)),
    }


def build_chains(root: Path) -> None:
    """The checkpoints in root/checkpoints (their folders by name in root/folders.json); the text classifier
    (sentiment) and the image classifier (flowers) through `pipeline all` in the project root/project."""
    from pipeline import cli

    folders = make_checkpoints(root / "checkpoints")
    (root / "folders.json").write_text(json.dumps({name: str(folder) for name, folder in folders.items()}))
    for name in ("sentiment", "flowers"):
        args = ["all", "--model", f"hf:{folders[name]}", "--root", str(root / "project"), "--parity-batch-sizes", "1,2,7", "--no-pt2"]
        assert cli.main(args) == 0


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture
def short_tmp():
    folder = Path(tempfile.mkdtemp(prefix="hf-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def copy(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / checkpoint.name))


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_config(folder: Path, **changes) -> None:
    edit_json(folder / "config.json", **changes)


# --- the spec ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, task, outputs",
    [
        ("sentiment", "text-classification", {"logits": ("batch", 3)}),
        ("ner", "token-classification", {"logits": ("batch", "seq", 5)}),
        ("encoder", "feature-extraction", {"last_hidden_state": ("batch", "seq", 32), "pooler_output": ("batch", 32)}),
        ("flowers", "image-classification", {"logits": ("batch", 4)}),
        # A decoder is deployed to generate: its graph takes and returns the key/value cache.
        (
            "gpt",
            "text-generation",
            {
                "logits": ("batch", 100),
                **{f"present.{i}.{kind}": ("batch", 2, "total", 16) for i in range(2) for kind in ("key", "value")},
            },
        ),
    ],
)
def test_task_comes_from_the_architecture(checkpoints, name, task, outputs):
    spec = load_spec(f"hf:{checkpoints[name]}")
    assert spec.task == task
    assert {t.name: t.shape for t in spec.outputs} == outputs
    assert all(t.dtype == "float32" for t in spec.outputs)


def test_causal_lm_keeps_one_logits_pass(checkpoints):
    spec = load_spec(f"hf:{checkpoints['gpt']}#task=causal-lm")
    assert spec.task == "causal-lm" and spec.generation is None
    assert {t.name: t.shape for t in spec.outputs} == {"logits": ("batch", "seq", 100)}
    assert [t.name for t in spec.inputs] == ["input_ids", "attention_mask"]


def test_task_overrides_the_architecture(checkpoints):
    spec = load_spec(f"hf:{checkpoints['sentiment']}#task=feature-extraction")
    assert spec.task == "feature-extraction" and spec.labels is None
    assert [t.name for t in spec.outputs] == ["last_hidden_state", "pooler_output"]
    # The classifier's encoder, without its head: the BertModel inside the checkpoint.
    result = spec.train(0)
    assert result.model_args["architecture"] == "BertModel"
    model = spec.build(result.model_args)
    model.load_state_dict(result.state_dict)
    want = BertForSequenceClassification.from_pretrained(
        checkpoints["sentiment"], local_files_only=True
    ).bert.embeddings.word_embeddings.weight
    assert torch.equal(model.model.embeddings.word_embeddings.weight, want)


def test_task_travels_in_the_model_string(checkpoints):
    model = f"hf:{checkpoints['sentiment']}"
    args = cli.parse(["train", "--model", model, "--task", "token-classification"])
    assert args.model == f"{model}#task=token-classification"
    assert (
        cli.parse(["train", "--model", f"{model}#task=causal-lm", "--task", "feature-extraction"]).model
        == f"{model}#task=feature-extraction"
    )
    assert cli.parse(["serve", "--model", model]).model == model
    assert cli.parse(["bench", "--model", model, "--task", "feature-extraction"]).model == f"{model}#task=feature-extraction"


def test_the_tasks_are_one_table():
    assert tuple(hf_checkpoint.TASK_CLASSES) == HF_TASKS


def test_task_refused_for_a_model_file(capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse(["train", "--model", "simple_nn", "--task", "causal-lm"])
    assert info.value.code == 2
    assert "--task is for a Hugging Face checkpoint" in capsys.readouterr().err


def test_text_spec_fields(checkpoints):
    folder = checkpoints["sentiment"]
    spec = load_spec(f"hf:{folder}")
    assert spec.name == "my_sentiment_model"  # the folder's name, as names go
    assert [(t.name, t.dtype, t.shape, t.low, t.high) for t in spec.inputs] == [
        ("input_ids", "int64", ("batch", "seq"), 0, 99),
        ("attention_mask", "int64", ("batch", "seq"), 0, 1),
        ("token_type_ids", "int64", ("batch", "seq"), 0, 1),  # BERT's two segments: it reads sentence pairs
    ]
    assert spec.text_input == TextInput(tokenizer=folder.resolve() / "tokenizer.json", max_length=POSITIONS, truncate=True)
    assert dict(spec.max_lengths) == {"seq": POSITIONS}
    assert spec.labels == Labels(output="logits", names=("negative", "positive", "neutral"))
    assert spec.image_input is None


SINGLE_TEXT = {
    "roberta": RobertaForSequenceClassification,
    "distilbert": DistilBertForSequenceClassification,
    "bert of one type": BertForSequenceClassification,
}


def single_text_checkpoint(kind: str, folder: Path) -> Path:
    """A text classifier of one segment: RoBERTa (type_vocab_size 1), DistilBERT (no token_type_ids), BERT of one type."""
    if kind == "roberta":  # RoBERTa's positions start after its padding id: two more than it reads
        config = RobertaConfig(**BERT, max_position_embeddings=POSITIONS + 2, type_vocab_size=1, id2label=SENTIMENT)
    elif kind == "distilbert":
        config = DistilBertConfig(
            n_layers=2, n_heads=2, dim=32, hidden_dim=64, vocab_size=100, max_position_embeddings=POSITIONS, id2label=SENTIMENT
        )
    else:
        config = BertConfig(**BERT, max_position_embeddings=POSITIONS, type_vocab_size=1, id2label=SENTIMENT)
    return save(SINGLE_TEXT[kind](config), folder, tokenizer())


@pytest.mark.parametrize("kind", list(SINGLE_TEXT))
def test_a_model_of_one_segment_takes_no_token_type_ids(tmp_path, kind):
    folder = single_text_checkpoint(kind, tmp_path / "single")
    spec = load_spec(f"hf:{folder}")
    assert [t.name for t in spec.inputs] == ["input_ids", "attention_mask"]
    cases = spec.parity_cases(np.random.default_rng(0))
    assert not any("pairs" in case for case in cases)
    feeds = [spec.sample_inputs(2, np.random.default_rng(0)), spec.edge_inputs(), *cases.values()]
    assert all(set(feed) == {"input_ids", "attention_mask"} for feed in feeds)
    # Its weights load into the module of two inputs, which answers as transformers' own model.
    result = spec.train(0)
    model = spec.build(result.model_args)
    model.load_state_dict(result.state_dict)
    ids, mask = (torch.from_numpy(feeds[0][name]) for name in ("input_ids", "attention_mask"))
    with torch.inference_mode():
        (got,) = model.eval()(ids, mask)
        want = SINGLE_TEXT[kind].from_pretrained(folder, local_files_only=True).eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want)


def test_sentence_pairs_feed_the_second_segment(checkpoints):
    folder = checkpoints["sentiment"]
    spec = load_spec(f"hf:{folder}")
    tok = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    cases = {k: spec.check_feed(v, k, "test") for k, v in spec.parity_cases(np.random.default_rng(0)).items()}
    pairs = next(f for k, f in cases.items() if k.startswith("padded sentence pairs"))
    firsts, seconds = zip(*hf_checkpoint.PAIRS)
    want = tok(list(firsts), list(seconds), padding=True, return_token_type_ids=True, return_tensors="np")
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(pairs[name], want[name]), name
    assert set(pairs["token_type_ids"][pairs["attention_mask"] == 1].tolist()) == {0, 1}
    # Single sentences are all in segment 0; the edge rows reach segment 1.
    sample = spec.sample_inputs(3, np.random.default_rng(0))
    assert not sample["token_type_ids"].any()
    assert all(not f["token_type_ids"].any() for k, f in cases.items() if "pairs" not in k)
    assert spec.check_feed(spec.edge_inputs(), "edge", "test")["token_type_ids"].max() == 1
    # The module takes them third, by name, as torch.export maps the dynamic axes.
    model = spec.build(spec.train(0).model_args)
    assert list(inspect.signature(model.forward).parameters) == ["input_ids", "attention_mask", "token_type_ids"]


def test_max_length_is_the_tokenizers_below_the_positions(checkpoints, tmp_path):
    folder = copy(checkpoints["encoder"], tmp_path)
    edit_json(folder / "tokenizer_config.json", model_max_length=12)
    spec = load_spec(f"hf:{folder}")
    assert spec.text_input.max_length == 12 and dict(spec.max_lengths) == {"seq": 12}
    # The examples are truncated there too.
    assert spec.sample_inputs(4, np.random.default_rng(0))["input_ids"].shape[1] == 12
    assert all(f["input_ids"].shape[1] <= 12 for f in spec.parity_cases(np.random.default_rng(0)).values())
    # gpt's tokenizer says no length (transformers' 1e30): the model's positions.
    assert load_spec(f"hf:{checkpoints['gpt']}#task=causal-lm").text_input.max_length == POSITIONS
    assert load_spec(f"hf:{checkpoints['gpt']}").generation.max_length == POSITIONS


def test_text_examples_are_sentences_through_the_checkpoints_tokenizer(checkpoints):
    folder = checkpoints["sentiment"]
    spec = load_spec(f"hf:{folder}")
    tok = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    sample = spec.check_feed(spec.sample_inputs(4, np.random.default_rng(0)), "sample", "test")
    length = sample["input_ids"].shape[1]
    assert length >= 2 and length != 4  # torch.export sees two distinct dynamic sizes
    for ids, mask in zip(sample["input_ids"], sample["attention_mask"]):
        real = ids[mask == 1].tolist()
        assert tok.decode(real) in {tok.decode(tok(s)["input_ids"][:length]) for s in hf_checkpoint.SENTENCES}
        assert real[0] == tok.convert_tokens_to_ids("[CLS]") and np.all(ids[mask == 0] == tok.pad_token_id)
    cases = {k: spec.check_feed(v, k, "test") for k, v in spec.parity_cases(np.random.default_rng(0)).items()}
    padded = next(f for k, f in cases.items() if k.startswith("padded"))
    lengths = padded["attention_mask"].sum(axis=1)
    assert len(set(lengths.tolist())) > 1 and lengths.max() == padded["input_ids"].shape[1]
    assert all(np.all(row[:n] == 1) and np.all(row[n:] == 0) for row, n in zip(padded["attention_mask"], lengths))
    want = tok(list(hf_checkpoint.SENTENCES[:4]), padding=True, return_tensors="np")
    assert np.array_equal(padded["input_ids"], want["input_ids"]) and np.array_equal(padded["attention_mask"], want["attention_mask"])
    assert any(f["input_ids"].shape[1] == 1 for f in cases.values())
    edge = spec.check_feed(spec.edge_inputs(), "edge", "test")["input_ids"]
    assert edge.min() == 0 and edge.max() == 99
    assert spec.example_request == {"text": "Hello world!"}  # what serve prints: the worker tokenizes it


def test_image_spec_fields_and_examples(checkpoints):
    folder = checkpoints["flowers"]
    spec = load_spec(f"hf:{folder}")
    assert [(t.name, t.shape) for t in spec.inputs] == [("pixel_values", ("batch", 3, 32, 32))]
    assert spec.image_input == ImageInput(
        input="pixel_values",
        height=32,
        width=32,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        resize=(32, 32),
        rescale=1 / 255,
        resample="bicubic",
    )
    assert spec.labels == Labels(output="logits", names=("daisy", "rose", "tulip", "iris"))
    assert spec.text_input is None and spec.example_request is None
    # Random pixels normalised as the checkpoint's own image processor does it.
    rng = np.random.default_rng(0)
    sample = spec.check_feed(spec.sample_inputs(3, rng), "sample", "test")["pixel_values"]
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)
    processor = ViTImageProcessorPil.from_pretrained(folder, local_files_only=True)
    want = processor([Image.fromarray(p) for p in pixels], do_resize=False, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(sample, want, atol=1e-6)
    black, white, _ = spec.edge_inputs()["pixel_values"]
    np.testing.assert_allclose(black[:, 0, 0], -np.asarray(MEAN) / STD, rtol=1e-6)
    np.testing.assert_allclose(white[:, 0, 0], (1 - np.asarray(MEAN)) / STD, rtol=1e-6)


def test_image_input_follows_a_shortest_edge_and_crop_preprocessor(checkpoints, tmp_path):
    folder = copy(checkpoints["flowers"], tmp_path)
    config = {
        "do_resize": True,
        "size": {"shortest_edge": 36},
        "do_center_crop": True,
        "crop_size": 32,  # an old-style int: a square
        "do_rescale": False,
        "do_normalize": False,
        "resample": 2,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    image = load_spec(f"hf:{folder}").image_input
    assert image == ImageInput(
        input="pixel_values",
        height=32,
        width=32,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        resize_shortest_edge=36,
        crop=(32, 32),
        rescale=1.0,
        resample="bilinear",
    )


# The pixels the worker makes of a JPEG (the decoder of the served archive) against the
# transformers processor's own (its Pil backend), photos of several shapes through each
# processor class the loader follows. Both decode with the same Pillow and resize with
# Pillow's filters at the same sizes and crop offsets, so they differ only by float32
# rounding in rescale and normalise: at most 7.2e-7 measured, 1e-5 allowed. A resize one
# pixel off (the long edge rounded where transformers truncates) is 0.3 to 0.9 off.
PIXEL_ATOL = 1e-5
PHOTOS = ((640, 480), (300, 500), (224, 224), (1000, 333), (199, 301))
# facebook/convnext-tiny-224's preprocessor_config.json as the hub has it: an old feature
# extractor, size an int (ConvNeXt reads it as a shortest edge), crop_pct 0.875.
CONVNEXT_TINY = {
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 224,
}
# Case: (the processor, or its preprocessor_config.json, and the (height, width) it makes).
# The classes' own defaults are their checkpoints' settings (MobileNet: 256, then 224).
PROCESSOR_CASES = {
    "ViT": (ViTImageProcessorPil(), (224, 224)),
    "DeiT": (DeiTImageProcessorPil(), (224, 224)),
    "BiT": (BitImageProcessorPil(), (224, 224)),
    "CLIP": (CLIPImageProcessorPil(), (224, 224)),
    "SigLIP": (SiglipImageProcessorPil(), (224, 224)),
    "PVT": (PvtImageProcessorPil(), (224, 224)),
    "MobileNetV1": (MobileNetV1ImageProcessorPil(), (224, 224)),
    "MobileNetV2": (MobileNetV2ImageProcessorPil(), (224, 224)),
    "BEiT": (BeitImageProcessorPil(), (224, 224)),
    "ConvNeXt crop_pct": (ConvNextImageProcessorPil(size={"shortest_edge": 224}), (224, 224)),
    "ConvNeXt 384 warps": (ConvNextImageProcessorPil(), (384, 384)),
    "convnext-tiny-224 as the hub has it": (CONVNEXT_TINY, (224, 224)),
    "LeViT": (LevitImageProcessorPil(), (224, 224)),
    "PoolFormer": (PoolFormerImageProcessorPil(), (224, 224)),
    "PoolFormer oblong": (
        PoolFormerImageProcessorPil(size={"height": 224, "width": 192}, crop_size={"height": 200, "width": 176}),
        (200, 176),
    ),
}


def with_processor(folder: Path, processor, hw: tuple[int, int]) -> Path:
    """The image checkpoint with this preprocessor_config.json, its config's image_size what it makes."""
    (folder / "preprocessor_config.json").unlink()
    if isinstance(processor, dict):
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    else:
        processor.save_pretrained(folder)
    edit_config(folder, image_size=list(hw))
    return folder


@pytest.mark.parametrize("case", list(PROCESSOR_CASES))
def test_the_workers_pixels_are_the_image_processors(checkpoints, tmp_path, case):
    processor, hw = PROCESSOR_CASES[case]
    folder = with_processor(copy(checkpoints["flowers"], tmp_path), processor, hw)
    spec = load_spec(f"hf:{folder}")
    decoder = preprocess.reader(Contract(declare(spec))).image
    assert decoder is not None
    theirs = AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    rng = np.random.default_rng(0)
    for width, height in PHOTOS:
        jpeg = preprocess.sample_image(rng, width, height)
        got = decoder.decode(jpeg)
        want = theirs(Image.open(io.BytesIO(jpeg)), return_tensors="np")["pixel_values"][0]
        assert got.shape == want.shape == (3, *hw)
        np.testing.assert_allclose(got, want, rtol=0, atol=PIXEL_ATOL, err_msg=f"{case}: a {width} x {height} JPEG")


def test_every_processor_followed_has_a_pixel_case():
    classes = {type(p).__name__ for p, _ in PROCESSOR_CASES.values() if not isinstance(p, dict)}
    assert classes == set(hf_image.PROCESSORS)


def test_convnext_resizes_over_crop_pct_then_crops(checkpoints, tmp_path):
    # The checkpoint: refused before ("resizes to something other than the input's (224, 224)").
    folder = with_processor(copy(checkpoints["flowers"], tmp_path), CONVNEXT_TINY, (224, 224))
    image = load_spec(f"hf:{folder}").image_input
    assert (image.resize_shortest_edge, image.resize, image.crop, image.resample) == (256, None, (224, 224), "bicubic")
    assert image.mean == (0.485, 0.456, 0.406) and image.std == (0.229, 0.224, 0.225)


def test_train_loads_the_checkpoints_weights_and_records_their_hash(checkpoints):
    folder = checkpoints["gpt"]
    spec = load_spec(f"hf:{folder}#task=causal-lm")
    result = spec.train(0)
    assert result.model_args["weights_sha256"] == {"model.safetensors": files.sha256_file(folder / "model.safetensors")}
    saved = load_file(folder / "model.safetensors")
    assert all(torch.equal(result.state_dict[f"model.{k}"], v) for k, v in saved.items())
    # The rebuilt module answers as transformers' own model from the folder.
    model = spec.build(json.loads(json.dumps(result.model_args)))
    model.load_state_dict(result.state_dict)
    feed = spec.sample_inputs(2, np.random.default_rng(0))
    ids, mask = torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])
    with torch.inference_mode():
        (got,) = model.eval()(ids, mask)
        want = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True).eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want)


def test_editing_the_checkpoint_retrains(checkpoints, tmp_path):
    folder = copy(checkpoints["sentiment"], tmp_path)
    settings = Settings(model=f"hf:{folder}", root=tmp_path / "project")
    assert not train.run(settings).skipped
    assert train.run(settings).skipped
    edit_config(folder, id2label={"0": "bad", "1": "good", "2": "meh"})
    assert not train.run(settings).skipped
    model = BertForSequenceClassification.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    model.save_pretrained(folder)
    assert not train.run(settings).skipped
    # Another task of the same folder is another model.
    assert not train.run(Settings(model=f"hf:{folder}#task=feature-extraction", root=tmp_path / "project")).skipped
    record = Manifest((tmp_path / "project").resolve(), "my_sentiment_model").records[CHECKPOINT]
    assert record.details["model_args"]["weights_sha256"]["model.safetensors"] == files.sha256_file(folder / "model.safetensors")


def test_a_checkpoint_is_read_once_per_version_of_it(checkpoints, tmp_path):
    """Every stage of one command resolves the spec: the folder is read once, and again once a file in it changes."""
    folder = copy(checkpoints["sentiment"], tmp_path)
    first = load_spec(f"hf:{folder}")
    assert load_spec(f"hf:{folder}") is first
    assert load_spec(f"hf:{folder}#task=feature-extraction") is not first
    edit_config(folder, id2label={"0": "bad", "1": "good", "2": "meh"})
    again = load_spec(f"hf:{folder}")
    assert again is not first and again.labels is not None and again.labels.names == ("bad", "good", "meh")


# --- what is refused, and the message ----------------------------------------------------


def remove(name):
    def edit(folder: Path) -> None:
        (folder / name).unlink()

    return edit


ERRORS = {
    "missing folder": ("sentiment", lambda f: shutil.rmtree(f), "", r"checkpoint folder .* does not exist"),
    "no config.json": ("sentiment", remove("config.json"), "", r"has no config\.json.*save_pretrained"),
    "no weights": ("sentiment", remove("model.safetensors"), "", r"has no model\.safetensors.*safetensors"),
    "unknown architecture": (
        "sentiment",
        lambda f: edit_config(f, architectures=["BertForTeleportation"]),
        "",
        r"config\.json: architectures BertForTeleportation is not a class of transformers",
    ),
    "unknown model type": (
        "sentiment",
        lambda f: edit_config(f, model_type="bert-from-the-future"),
        "",
        r"config\.json: transformers .* cannot read it",
    ),
    "architecture of no task": (
        "sentiment",
        lambda f: edit_config(f, architectures=["BertForMaskedLM"]),
        "",
        r"architectures BertForMaskedLM is none of the tasks' classes.*--task TASK",
    ),
    "no task to infer": ("sentiment", lambda f: edit_config(f, architectures=[]), "", r"names no architectures.*--task"),
    "task unfit": (
        "flowers",
        None,
        "#task=text-classification",
        r"task text-classification does not fit model_type 'vit'.*image-classification",
    ),
    "image feature extraction": (
        "flowers",
        None,
        "#task=feature-extraction",
        r"task feature-extraction needs input_ids, ViTModel takes pixel_values.*image-classification",
    ),
    "resample unknown": (
        "flowers",
        lambda f: edit_json(f / "preprocessor_config.json", resample=9),
        "",
        r"preprocessor_config\.json: resample 9 is not one of Pillow's filters.*3 \(bicubic\)",
    ),
    "task unknown": ("sentiment", None, "#task=translation", r"unknown task 'translation'.*text-classification"),
    "processor not followed": (
        "flowers",
        lambda f: edit_json(f / "preprocessor_config.json", image_processor_type="MobileViTImageProcessor"),
        "",
        r"image_processor_type MobileViTImageProcessor: .*not follow.*what to do: save a preprocessor_config\.json of one the pipeline follows",
    ),
    "size by the longest edge": (
        "flowers",
        lambda f: edit_json(f / "preprocessor_config.json", size={"shortest_edge": 32, "longest_edge": 64}),
        "",
        r'preprocessor_config\.json: size \{"longest_edge": 64, "shortest_edge": 32\} \(ViTImageProcessor\): .*longest edge'
        r'.*what to do: save a preprocessor_config\.json of "image_processor_type": "ViTImageProcessor" and "size": \{"height": H',
    ),
    "padded to a size": (
        "flowers",
        lambda f: edit_json(f / "preprocessor_config.json", do_pad=True, pad_size={"height": 40, "width": 40}),
        "",
        r'pad_size \{"height": 40, "width": 40\} \(ViTImageProcessor\).*what to do: set "do_pad": false',
    ),
    "shortest edge without a crop": (
        "flowers",
        lambda f: edit_json(f / "preprocessor_config.json", size={"shortest_edge": 32}),
        "",
        r'size \{"shortest_edge": 32\} .*images of different sizes.*what to do: set "do_center_crop": true with "crop_size"',
    ),
    "no resize": (
        "flowers",
        lambda f: edit_json(f / "preprocessor_config.json", do_resize=False),
        "",
        r'do_resize false .*each image at its own size.*what to do: set "do_resize": true',
    ),
    "convnext cropped twice": (
        "flowers",
        lambda f: (f / "preprocessor_config.json").write_text(
            json.dumps({**CONVNEXT_TINY, "size": 32, "do_center_crop": True, "crop_size": 32})
        ),
        "",
        r'do_center_crop true \(ConvNextFeatureExtractor\): its resize crops to \(32, 32\) already.*what to do: set "do_center_crop": false',
    ),
    "option unknown": ("sentiment", None, "#size=large", r"unknown option 'size=large' after '#'.*PATH#task=TASK"),
    "text without tokenizer.json": ("sentiment", remove("tokenizer.json"), "", r"has no tokenizer\.json.*save_pretrained"),
    "image without preprocessor": ("flowers", remove("preprocessor_config.json"), "", r"has no preprocessor_config\.json.*save_pretrained"),
    "id2label unlike num_labels": (
        "sentiment",
        lambda f: edit_config(f, num_labels=4),
        "",
        r"config\.json: id2label has ids \['0', '1', '2'\], num_labels is 4.*0\.\.3",
    ),
    "id2label with a gap": (
        "sentiment",
        lambda f: edit_config(f, id2label={"0": "a", "1": "b", "5": "c"}),
        "",
        r"id2label has ids \['0', '1', '5'\]",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_an_unusable_checkpoint_is_refused_with_the_fix(checkpoints, tmp_path, case):
    name, edit, suffix, message = ERRORS[case]
    folder = copy(checkpoints[name], tmp_path)
    if edit is not None:
        edit(folder)
    with pytest.raises(SpecError, match=f"(?s){message}") as info:
        load_spec(f"hf:{folder}{suffix}")
    assert info.value.stage == "model" and info.value.fix


# --- hostile folders: nothing outside the folder is read, no pickle is loaded ---------------

HOSTILE = {
    "tokenizer.json linked to a file outside the folder": r"tokenizer\.json leads outside the checkpoint folder, to .*outside-tokenizer\.json",
    "model.safetensors linked to a file outside the folder": r"model\.safetensors leads outside the checkpoint folder",
    "safetensors index naming pytorch_model.bin": r"names \['pytorch_model\.bin'\]: a safetensors index may name only \.safetensors files",
    "safetensors index naming ../outside.safetensors": r"names \['\.\./outside\.safetensors'\]: a safetensors index may name only",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_folder_is_refused_before_anything_outside_is_read(checkpoints, tmp_path, case):
    folder = copy(checkpoints["sentiment"], tmp_path / "in")
    marker = tmp_path / "payload-ran"
    hostile.CHECKPOINT_EDITS[case](folder, marker)
    with pytest.raises(SpecError, match=f"(?s){HOSTILE[case]}") as info:
        load_spec(f"hf:{folder}")
    assert info.value.fix and not marker.exists()


def test_train_checks_the_folder_again(checkpoints, tmp_path):
    """A folder changed after its spec was made (by another stage's process, say) is checked again before loading."""
    folder = copy(checkpoints["sentiment"], tmp_path)
    spec = load_spec(f"hf:{folder}")
    hostile.CHECKPOINT_EDITS["safetensors index naming pytorch_model.bin"](folder, tmp_path / "payload-ran")
    with pytest.raises(SpecError, match="pickled weights are not loaded"):
        spec.train(0)
    assert not (tmp_path / "payload-ran").exists()


def test_a_link_inside_the_folder_is_followed(checkpoints, tmp_path):
    folder = copy(checkpoints["sentiment"], tmp_path)
    (folder / "tokenizer.json").rename(folder / "tokenizer.real.json")
    (folder / "tokenizer.json").symlink_to("tokenizer.real.json")
    assert load_spec(f"hf:{folder}").text_input is not None


@pytest.mark.parametrize("case", ["safetensors index naming pytorch_model.bin", "tokenizer.json linked to a file outside the folder"])
def test_the_command_line_refuses_a_hostile_folder_with_an_error_line(checkpoints, tmp_path, case):
    folder = copy(checkpoints["sentiment"], tmp_path / "in")
    hostile.CHECKPOINT_EDITS[case](folder, tmp_path / "payload-ran")
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "all", "--model", f"hf:{folder}", "--root", str(tmp_path / "project")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr
    assert re.search(HOSTILE[case], run.stderr) and "error:" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "payload-ran").exists()


def xlmr_embedder(folder: Path) -> Path:
    """A sentence-embedding backbone: XLMRobertaModel saved without its pooler (add_pooling_layer=False)."""
    config = XLMRobertaConfig(**BERT, max_position_embeddings=POSITIONS + 2, type_vocab_size=1, pad_token_id=0)
    return save(XLMRobertaModel(config, add_pooling_layer=False), folder, tokenizer())


@pytest.mark.parametrize("case", ["xlm-r embedder", "token classifier's encoder"])
def test_an_encoder_saved_without_its_pooler_is_built_without_one(checkpoints, tmp_path, case):
    if case == "xlm-r embedder":
        folder, model, want_class = xlmr_embedder(tmp_path / "xlmr-embedder"), "hf:{}", XLMRobertaModel
    else:  # BertForTokenClassification holds its BertModel without a pooler
        folder, model, want_class = checkpoints["ner"], "hf:{}#task=feature-extraction", BertModel
    spec = load_spec(model.format(folder))
    assert spec.task == "feature-extraction"
    assert {t.name: t.shape for t in spec.outputs} == {"last_hidden_state": ("batch", "seq", 32)}
    result = spec.train(0)
    assert result.model_args["init_args"] == {"add_pooling_layer": False}
    built = spec.build(json.loads(json.dumps(result.model_args)))  # as the manifest carries them
    assert built.model.pooler is None
    built.load_state_dict(result.state_dict)  # strict: every tensor the module has, and no other
    feed = spec.sample_inputs(2, np.random.default_rng(0))
    ids, mask = (torch.from_numpy(feed[name]) for name in ("input_ids", "attention_mask"))
    want = want_class.from_pretrained(folder, local_files_only=True, add_pooling_layer=False).eval()
    with torch.inference_mode():
        (got,) = built.eval()(ids, mask) if len(spec.inputs) == 2 else built.eval()(ids, mask, torch.zeros_like(ids))
        torch.testing.assert_close(got, want(input_ids=ids, attention_mask=mask).last_hidden_state)


def build_embedder_chain(folder: Path) -> None:
    """xlmr_embedder in folder/xlmr-embedder through `pipeline all` into folder/project, its exit code in folder/exit_code:
    the session's embedder_chain (tests/background.py)."""
    model = xlmr_embedder(folder / "xlmr-embedder")
    code = cli.main(["all", "--model", f"hf:{model}", "--root", str(folder / "project"), "--parity-batch-sizes", "1,2,7", "--no-pt2"])
    (folder / "exit_code").write_text(str(code))


@pytest.fixture(scope="module")
def embedder_chain(builds) -> Path:
    return builds.folder("embedder_chain")


@pytest.mark.slow
def test_an_encoder_without_its_pooler_goes_through_the_chain(embedder_chain):
    root = embedder_chain / "project"
    assert (embedder_chain / "exit_code").read_text() == "0"
    layout = Layout(root.resolve(), "xlmr-embedder")
    report = json.loads((layout.reports / "parity.json").read_text())
    assert report["passed"] and {r["output"] for r in report["results"]} == {"last_hidden_state"}
    assert layout.mar.is_file()
    model_args = Manifest(layout.root, "xlmr-embedder").records[CHECKPOINT].details["model_args"]
    assert model_args["outputs"] == ["last_hidden_state"] and model_args["init_args"] == {"add_pooling_layer": False}


def drop_weights(folder: Path, *names: str) -> None:
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k not in names}, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "dropped",
    [("encoder.layer.1.output.dense.weight",), ("pooler.dense.bias",)],
    ids=["an encoder layer's", "half the pooler"],
)
def test_weights_really_missing_are_refused_at_train_naming_them(checkpoints, tmp_path, dropped):
    folder = copy(checkpoints["encoder"], tmp_path)
    drop_weights(folder, *dropped)
    spec = load_spec(f"hf:{folder}")
    assert [t.name for t in spec.outputs] == ["last_hidden_state", "pooler_output"]  # a pooler's weight is there
    with pytest.raises(
        SpecError, match=rf"(?s)model\.safetensors has no weights .* for BertModel: {re.escape(dropped[0])}.*save_pretrained"
    ):
        spec.train(0)


def test_the_cli_prints_the_error(checkpoints, tmp_path, capsys):
    assert cli.main(["train", "--model", f"hf:{tmp_path / 'nothing'}", "--root", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err


# --- the chain ---------------------------------------------------------------------------


def transformers_logits(name: str, folder: Path, body: bytes) -> np.ndarray:
    """What eager transformers answers for a request's body: the checkpoint's own tokenizer or image processor, then its model."""
    if name == "sentiment":
        request = json.loads(body)
        tok = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
        feed = tok(request["text"], request.get("text_pair"), return_token_type_ids=True, return_tensors="pt")
        model = BertForSequenceClassification.from_pretrained(folder, local_files_only=True)
    else:
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
        feed = processor(Image.open(io.BytesIO(body)), return_tensors="pt")
        model = ViTForImageClassification.from_pretrained(folder, local_files_only=True)
    with torch.inference_mode():
        return model.eval()(**feed).logits[0].numpy()


@pytest.mark.slow
@needs_java
@pytest.mark.parametrize("name", ["sentiment", "flowers"])
def test_a_checkpoint_goes_through_the_chain(hf_chains, short_tmp, name):
    checkpoints, built = hf_chains  # `pipeline all --parity-batch-sizes 1,2,7` ran there for this checkpoint
    root = short_tmp / "project"  # TorchServe's sockets live under it: pytest's own tmp_path is too long
    copy_root(built, root)
    model = f"hf:{checkpoints[name]}"
    spec = load_spec(model)
    layout = Layout(root.resolve(), spec.name)
    report = json.loads((layout.reports / "parity.json").read_text())
    assert report["passed"]
    assert set(spec.parity_cases(np.random.default_rng(0)) if spec.parity_cases else ()) <= {r["case"] for r in report["results"]}
    assert layout.mar.is_file()
    record = Manifest(layout.root, spec.name).records[CHECKPOINT]
    assert record.details["model_args"]["weights_sha256"] == {
        "model.safetensors": files.sha256_file(checkpoints[name] / "model.safetensors")
    }
    # The archive serves the checkpoint's own inputs: a sentence and a sentence pair (BERT reads
    # two segments), or a JPEG file's bytes as curl -T sends them.
    if name == "sentiment":
        first, second = hf_checkpoint.PAIRS[0]
        bodies = [json.dumps({"text": hf_checkpoint.SENTENCES[0]}).encode(), json.dumps({"text": first, "text_pair": second}).encode()]
        content_type, names = "application/json", SENTIMENT
    else:
        jpeg = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
        bodies, content_type, names = [jpeg.getvalue()], "image/jpeg", FLOWERS
    settings = Settings(model=model, root=root)
    info = serve.start(settings, auto_ports=True)
    try:
        answers = [info.predict(body, content_type=content_type) for body in bodies]
    finally:
        serve.stop(settings)
    tol = spec.tolerance
    for body, (status, answer) in zip(bodies, answers, strict=True):
        assert status == 200, answer
        top = json.loads(answer)["labels"]
        assert [t["label"] for t in top] and {t["label"] for t in top} <= set(names.values()), top
        assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(top))
        # The served logits are the checkpoint's own answer to the same input: tokens (both segments of a
        # pair) or pixels (resize, crop, normalisation) as transformers makes them, within the spec's tolerance.
        got, want = np.array(json.loads(answer)["logits"]), transformers_logits(name, checkpoints[name], body)
        assert got.shape == want.shape == (len(names),)
        np.testing.assert_allclose(got, want, rtol=tol.rtol, atol=tol.atol + tol.scaled * np.abs(want).max())
