"""Write a fine-tuned-looking Hugging Face checkpoint folder at full size, with random weights.

python scripts/make_hf_checkpoint.py bert-text-classification /tmp/ckpt/bert-sentiment
python scripts/make_hf_checkpoint.py vit-image-classification /tmp/ckpt/vit-flowers

There is no model hub here, so the folder is what `save_pretrained` writes for a model of
the real size: BERT-base (BertForSequenceClassification, 3 labels) with a WordPiece
`tokenizer.json` trained on this checkout's text files, or ViT-B/16
(ViTForImageClassification at 224 x 224, 5 labels) with its `preprocessor_config.json`.
`make export MODEL=hf:<folder>` then takes it like any checkpoint; the real-model suite
(`scripts/real_models.py --models hf:<folder> --serve`) serves it and sends a sentence or a
JPEG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

ROOT = Path(__file__).resolve().parent.parent
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_tokenizer(vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """A BERT-style uncased WordPiece tokenizer, trained on the checkout's Markdown and Python files."""
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    corpus = [str(p) for pattern in ("*.md", "pipeline/**/*.py") for p in sorted(ROOT.glob(pattern))]
    tok.train(corpus, WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def bert_text_classification(out: Path) -> None:
    config = BertConfig(id2label={0: "negative", 1: "neutral", 2: "positive"})
    BertForSequenceClassification(config).save_pretrained(out)
    wordpiece_tokenizer(config.vocab_size, config.max_position_embeddings).save_pretrained(out)


def vit_image_classification(out: Path) -> None:
    config = ViTConfig(id2label={0: "daisy", 1: "dandelion", 2: "rose", 3: "sunflower", 4: "tulip"})
    ViTForImageClassification(config).save_pretrained(out)
    ViTImageProcessorPil(size={"height": config.image_size, "width": config.image_size}).save_pretrained(out)


KINDS = {"bert-text-classification": bert_text_classification, "vit-image-classification": vit_image_classification}


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
