"""Small decoders of transformers' own classes, saved as save_pretrained writes them, with a
byte-level BPE tokenizer (GPT-2's kind: one token can end inside a UTF-8 character) and a
generation_config.json."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from pipeline.artifacts.manifest import Manifest
from pipeline.generation import text
from pipeline.models import load_spec
from pipeline.settings import Settings
from pipeline.stages import STAGES

VOCAB = 320  # 256 bytes, the specials, and some merges
POSITIONS = 512  # long enough that a stream of 256 tokens outlasts a client that goes away
BOS, EOS, PAD = 0, 1, 2
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Where is the nearest train station?",
    "Café crème, naïve façade: déjà vu. Ünïcödé – “quotes” and emoji 🙂.",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
] * 20
SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention: two query heads share each key/value head
    "vocab_size": VOCAB,
    "max_position_embeddings": POSITIONS,
    "bos_token_id": BOS,
    "eos_token_id": EOS,
}
DECODERS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SMALL)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=True)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**SMALL, sliding_window=None)),
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=POSITIONS, bos_token_id=BOS, eos_token_id=EOS)
    ),
}


# A chat template of the usual kind (roles in markers, BOS first, the assistant's turn opened), rendered
# by transformers' apply_chat_template on one side and the servers' /v1/chat/completions on the other.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] | trim }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=POSITIONS)


def save_decoder(kind: str, folder: Path, seed: int = 0) -> Path:
    """The `kind` decoder with seeded random weights in `folder`, its tokenizer and generation config."""
    torch.manual_seed(seed)
    model = DECODERS[kind]()
    model.save_pretrained(folder)
    tok = tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD).save_pretrained(folder)
    return folder


def run_chain(model: str, root: Path) -> Manifest:
    """Every stage, as `make export` runs them, with parity's small batches."""
    settings = Settings(model=model, root=root, parity_batch_sizes=(1, 2, 7))
    for stage in STAGES.values():
        stage(settings)
    return Manifest(root.resolve(), load_spec(model).name)


def build_small_llama(root: Path) -> None:
    """The small Llama's checkpoint in root/llama, through the chain in the project root/p (the session's small_llama)."""
    run_chain(f"hf:{save_decoder('llama', root / 'llama')}", root / "p")


def build_cache_decoders(root: Path) -> None:
    """Every decoder but llama (the session's small_llama) in root/<kind>, through the chain in root/<kind>-project."""
    for kind in DECODERS:
        if kind != "llama":
            run_chain(f"hf:{save_decoder(kind, root / kind)}", root / f"{kind}-project")


def transformers_greedy(folder: Path, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """transformers' own generate on the folder, greedy, left-padded: the tokens to match (through the EOS)."""
    tok = text.load(folder / "tokenizer.json")
    return transformers_greedy_ids(folder, text.encode(tok, prompts), new_tokens)


def transformers_chat_greedy(folder: Path, messages: list[dict], new_tokens: int) -> list[int]:
    """The chat through transformers' apply_chat_template (its assistant turn opened), then greedy generate."""
    ids = AutoTokenizer.from_pretrained(folder).apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    return transformers_greedy_ids(folder, [list(ids)], new_tokens)[0]


def transformers_greedy_ids(folder: Path, rows: list[list[int]], new_tokens: int) -> list[list[int]]:
    ids, mask = text.left_pad(rows, PAD)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=PAD,
        )
    rows = out[:, ids.shape[1] :].tolist()
    return [row[: row.index(EOS) + 1] if EOS in row else row for row in rows]
