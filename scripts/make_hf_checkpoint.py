"""Write a fine-tuned-looking Hugging Face checkpoint folder at full size, with random weights.

python scripts/make_hf_checkpoint.py bert-text-classification /tmp/ckpt/bert-sentiment
python scripts/make_hf_checkpoint.py vit-image-classification /tmp/ckpt/vit-flowers
python scripts/make_hf_checkpoint.py llama-causal-lm /tmp/held/llama
python scripts/make_hf_checkpoint.py qwen2-causal-lm /tmp/held/qwen2
python scripts/make_hf_checkpoint.py qwen2.5-0.5b-causal-lm /tmp/held/qwen2.5-0.5b
python scripts/make_hf_checkpoint.py llama-1.1b-causal-lm /tmp/held/llama-1.1b
python scripts/make_hf_checkpoint.py gpt2-text-generation /tmp/gpt2-full
python scripts/make_hf_checkpoint.py convnext-image-classification /tmp/held/convnext
python scripts/make_hf_checkpoint.py swin-image-classification /tmp/held/swin
python scripts/make_hf_checkpoint.py xlmr-feature-extraction /tmp/held/xlmr

There is no model hub here, so the folder is what `save_pretrained` writes for a model of
the real size, with a tokenizer trained on this checkout's text files or the image
processor the hub's checkpoint has:

- BERT-base (BertForSequenceClassification, 3 labels), an uncased WordPiece tokenizer;
- ViT-B/16 (ViTForImageClassification at 224 x 224, 5 labels);
- a Llama of 8 layers at width 1024 (LlamaForCausalLM: RoPE, 16 heads sharing 4 key-value
  heads, vocabulary 32,000), a byte-level BPE tokenizer;
- Qwen2-0.5B's widths in 8 layers (Qwen2ForCausalLM: 896 wide, 14 heads sharing 2
  key-value heads, tied embeddings, vocabulary 151,936), a byte-level BPE tokenizer;
- Qwen2.5-0.5B's shape (its config.json: 24 layers, 896 wide, 14 heads sharing 2 key-value
  heads, MLP 4,864, tied embeddings, RoPE theta 1e6, 32,768 positions, vocabulary 151,936;
  494 M parameters), with <|endoftext|> as BOS, EOS and padding as its generation_config.json has;
- a 1.1B Llama (TinyLlama-1.1B's config.json: 22 layers, 2048 wide, 32 heads sharing 4 key-value
  heads, MLP 5,632, 2,048 positions, vocabulary 32,000; 1.1 B parameters), BOS <s> = 1,
  EOS </s> = 2, padding 0;
- GPT-2 small (GPT2LMHeadModel at GPT2Config's defaults: 12 layers, 768 wide, vocabulary 50,257,
  1,024 positions), a byte-level BPE tokenizer with <|endoftext|> as BOS, EOS and padding;
- ConvNeXt-Tiny (ConvNextForImageClassification, 10 labels), resized to 224 / 0.875 and
  cropped to 224 as the hub's convnext-tiny-224 is;
- Swin-Tiny (SwinForImageClassification at 224 x 224, window 7, 10 labels);
- XLM-R base without its pooler (XLMRobertaModel, a sentence embedder), a Unigram
  tokenizer and a vocabulary of the size it reached here (the real one has 250,002).

`make export MODEL=hf:<folder>` then takes it like any checkpoint; the real-model suite
(`scripts/real_models.py --models hf:<folder> --serve`) serves it and sends a sentence or a
JPEG.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram, WordPiece
from tokenizers.trainers import BpeTrainer, Trainer, UnigramTrainer, WordPieceTrainer
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextImageProcessorPil,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    XLMRobertaConfig,
    XLMRobertaModel,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

ROOT = Path(__file__).resolve().parent.parent
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The first classes of Imagenette, for the image classifiers that are not ViT's flowers.
IMAGENETTE = ["tench", "springer", "cassette", "chainsaw", "church", "horn", "truck", "pump", "golf", "parachute"]
BICUBIC = 3  # PIL's code, as preprocessor_config.json writes `resample`
# The hub's ConvNeXt and Swin processors normalise with ImageNet's statistics, not the 0.5s of ViT.
MEAN, STD = list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)


def train(tok: Tokenizer, trainer: Trainer) -> Tokenizer:
    """`tok` trained on the checkout's Markdown and Python files."""
    corpus = [str(p) for pattern in ("*.md", "pipeline/**/*.py") for p in sorted(ROOT.glob(pattern))]
    tok.train(corpus, trainer)
    return tok


def wrap(tok: Tokenizer, max_length: int, template: tuple[str, str] | None = None, /, **specials: str) -> PreTrainedTokenizerFast:
    """`tok` as a fast tokenizer; `template` (single, pair) places its special tokens around a text."""
    if template is not None:
        names = {t for t in " ".join(template).split() if not t.startswith("$")}
        tok.post_processor = processors.TemplateProcessing(
            single=template[0], pair=template[1], special_tokens=[(t, tok.token_to_id(t)) for t in sorted(names)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **specials)


def wordpiece_tokenizer(vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """A BERT-style uncased WordPiece tokenizer."""
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    train(tok, WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    return wrap(
        tok,
        max_length,
        ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B [SEP]"),
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def byte_level_bpe(vocab_size: int, specials: list[str]) -> Tokenizer:
    """A GPT-2-style byte-level BPE (every byte has a token, so nothing is unknown), `specials` first."""
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    return train(tok, BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet))


def bert_text_classification(out: Path) -> None:
    config = BertConfig(id2label={0: "negative", 1: "neutral", 2: "positive"})
    BertForSequenceClassification(config).save_pretrained(out)
    wordpiece_tokenizer(config.vocab_size, config.max_position_embeddings).save_pretrained(out)


def vit_image_classification(out: Path) -> None:
    config = ViTConfig(id2label={0: "daisy", 1: "dandelion", 2: "rose", 3: "sunflower", 4: "tulip"})
    ViTForImageClassification(config).save_pretrained(out)
    ViTImageProcessorPil(size={"height": config.image_size, "width": config.image_size}).save_pretrained(out)


def llama_decoder(out: Path, generation: bool = False, **widths: Any) -> None:
    """LlamaForCausalLM at `widths` (vocabulary 32,000, 2,048 positions); <unk>, <s>, </s> at 0, 1, 2:
    Llama's ids, which LlamaConfig's bos and eos name. `generation`: a generation_config.json as
    TinyLlama's (BOS 1, EOS 2, padding 0)."""
    tok = byte_level_bpe(32000, ["<unk>", "<s>", "</s>"])
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, **widths)
    LlamaForCausalLM(config).save_pretrained(out)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"} | ({"pad_token": "<unk>"} if generation else {})
    wrap(tok, config.max_position_embeddings, ("<s> $A", "<s> $A <s> $B"), **specials).save_pretrained(out)
    if generation:
        GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, max_length=config.max_position_embeddings).save_pretrained(out)


def llama_causal_lm(out: Path) -> None:
    llama_decoder(out, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4)


def llama_11b_causal_lm(out: Path) -> None:
    # TinyLlama/TinyLlama-1.1B's config.json (its RoPE theta, 10,000, is LlamaConfig's default; its RMSNorm eps is not).
    widths = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4}
    llama_decoder(out, generation=True, rms_norm_eps=1e-5, **widths)


def qwen2_decoder(out: Path, layers: int, generation: bool = False) -> None:
    """Qwen2ForCausalLM at Qwen2-0.5B's widths (Qwen2.5-0.5B's are the same), `layers` deep. Qwen2
    adds no special token around a text; <|endoftext|> begins, ends and pads (in the hub's
    tokenizer it is 151643, here the first id). `generation`: the base model's generation_config.json (greedy)."""
    tok = byte_level_bpe(151936, ["<|endoftext|>"])
    end = tok.token_to_id("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        max_window_layers=layers,
        use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=end,
        eos_token_id=end,
    )
    Qwen2ForCausalLM(config).save_pretrained(out)
    wrap(tok, config.max_position_embeddings, eos_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(out)
    if generation:
        GenerationConfig(bos_token_id=end, eos_token_id=end, pad_token_id=end, do_sample=False).save_pretrained(out)


def qwen2_causal_lm(out: Path) -> None:
    qwen2_decoder(out, layers=8)


def qwen25_05b_causal_lm(out: Path) -> None:
    qwen2_decoder(out, layers=24, generation=True)  # Qwen/Qwen2.5-0.5B's config.json: 24 layers


def gpt2_text_generation(out: Path) -> None:
    tok = byte_level_bpe(50257, ["<|endoftext|>"])
    end = tok.token_to_id("<|endoftext|>")
    config = GPT2Config(bos_token_id=end, eos_token_id=end)
    GPT2LMHeadModel(config).save_pretrained(out)
    specials = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    wrap(tok, config.n_positions, **specials).save_pretrained(out)
    GenerationConfig(bos_token_id=end, eos_token_id=end, pad_token_id=end).save_pretrained(out)


def convnext_image_classification(out: Path) -> None:
    config = ConvNextConfig(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768], id2label=dict(enumerate(IMAGENETTE)))
    ConvNextForImageClassification(config).save_pretrained(out)
    processor = ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875, resample=BICUBIC, image_mean=MEAN, image_std=STD)
    processor.save_pretrained(out)


def swin_image_classification(out: Path) -> None:
    config = SwinConfig(
        image_size=224,
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        id2label=dict(enumerate(IMAGENETTE)),
    )
    SwinForImageClassification(config).save_pretrained(out)
    processor = ViTImageProcessorPil(size={"height": 224, "width": 224}, resample=BICUBIC, image_mean=MEAN, image_std=STD)
    processor.save_pretrained(out)


def xlmr_feature_extraction(out: Path) -> None:
    # <s>, <pad>, </s>, <unk> at 0..3 as in XLM-R, whose config names 0, 1 and 2.
    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    train(tok, UnigramTrainer(vocab_size=32000, special_tokens=specials, unk_token="<unk>"))
    # The checkout's text does not reach 32,000 pieces; the model's vocabulary is what it reached.
    config = XLMRobertaConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=514, type_vocab_size=1)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(out)
    names = dict(zip(("bos_token", "pad_token", "eos_token", "unk_token", "mask_token"), specials, strict=True))
    template = ("<s> $A </s>", "<s> $A </s> </s> $B </s>")
    wrap(tok, 512, template, cls_token="<s>", sep_token="</s>", **names).save_pretrained(out)


KINDS: dict[str, Callable[[Path], None]] = {
    "bert-text-classification": bert_text_classification,
    "vit-image-classification": vit_image_classification,
    "llama-causal-lm": llama_causal_lm,
    "qwen2-causal-lm": qwen2_causal_lm,
    "qwen2.5-0.5b-causal-lm": qwen25_05b_causal_lm,
    "llama-1.1b-causal-lm": llama_11b_causal_lm,
    "gpt2-text-generation": gpt2_text_generation,
    "convnext-image-classification": convnext_image_classification,
    "swin-image-classification": swin_image_classification,
    "xlmr-feature-extraction": xlmr_feature_extraction,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("out", type=Path, help="the checkpoint folder to write (made if missing)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    KINDS[args.kind](args.out)
    print(f"wrote {args.out}: " + ", ".join(sorted(p.name for p in args.out.iterdir())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
