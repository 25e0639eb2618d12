"""Prompts to token ids (left-padded), and new token ids back to text, a whole character at a time.

A byte-level BPE token (GPT-2's, Llama 3's, Qwen's) can end inside a UTF-8 character:
"é" may be two tokens. `TextStream` decodes all of a row's new tokens each time and hands
out only what follows the text it already gave, holding back while the text ends in an
incomplete character (the decoder's U+FFFD), so a stream never shows a broken character.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from pipeline.artifacts import files
from pipeline.errors import PipelineError, RequestError

INCOMPLETE = "\ufffd"
# Characters a prompt may have per position of the model before it is tokenized (a server refuses more
# unread): a byte-level token holds at least one byte, and few hold more than eight characters.
CHARS_PER_TOKEN = 8
# A prompt's bytes at most, as UTF-8 in a JSON body: four per character, escapes aside.
BYTES_PER_CHAR = 4


def load(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def encode(tokenizer: Tokenizer, prompts: Sequence[str], bos_id: int | None = None, special_tokens: bool = True) -> list[list[int]]:
    """Each prompt's ids, with the special tokens its tokenizer adds (`special_tokens`: not for a rendered chat
    template, which holds its own); an empty prompt is the BOS token alone."""
    rows = []
    for prompt, encoding in zip(prompts, tokenizer.encode_batch(list(prompts), add_special_tokens=special_tokens)):
        ids = list(encoding.ids)
        if not ids:
            if bos_id is None:
                raise RequestError("generate", f"prompt {prompt!r} has no tokens and the model has no BOS token", "send some text")
            ids = [bos_id]
        rows.append(ids)
    return rows


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask [batch, longest]: each row's tokens at the right, padding (mask 0) on the left."""
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


class TextStream:
    """One row's new tokens as text: `push(token)` returns the text that is now whole."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.text = ""  # what has been handed out

    def push(self, token: int) -> str:
        self.tokens.append(token)
        decoded = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if decoded.endswith(INCOMPLETE) or not decoded.startswith(self.text):
            return ""
        piece, self.text = decoded[len(self.text) :], decoded
        return piece

    def rest(self) -> str:
        """At the end: whatever is left, an incomplete character included (as U+FFFD)."""
        decoded = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        piece = decoded[len(self.text) :] if decoded.startswith(self.text) else ""
        self.text += piece
        return piece


def byte_level(vocab_size: int, eos: str, eos_id: int) -> Tokenizer:
    """GPT-2's byte-level alphabet without merges: each byte one token, at the id GPT-2's own vocabulary gives it
    (0–255, in GPT-2's `bytes_to_unicode` order), and `eos` at `eos_id`. It tokenizes any text as GPT-2 reads it,
    one byte at a time, for a model whose merges are not on this machine (no model hub)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab[eos] = eos_id
    assert len(vocab) <= vocab_size
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(eos, special=True)])
    return tokenizer


def saved(tokenizer: Tokenizer, name: str) -> Path:
    """`tokenizer` as a tokenizer.json in this user's own folder under the temporary directory, named by its hash:
    the same tokenizer is the same file, and what the stages hash and the archive carries."""
    content = tokenizer.to_str()
    digest = hashlib.sha256(content.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"pipeline-tokenizers-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.is_symlink() or folder.stat().st_uid != os.getuid():
        raise PipelineError("model", f"{folder} is not this user's own folder", f"remove it (rm -r {folder}) and run again")
    path = folder / f"{name}-{digest}.json"
    if not path.is_file() or path.read_text() != content:
        files.write_text(path, content)
    return path
