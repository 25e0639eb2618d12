"""Hostile requests to the decoders both servers share, each timed and its memory measured.

A security review found each of these cost seconds to minutes and gigabytes of a worker (TorchServe's,
or a Ray replica's event loop) before its check existed (docs/reliability.md, "Hostile requests"):
an OIP shape with fewer axes and no data, a progressive JPEG of 10,000 scans, a 1 x 40,000,000 PNG,
a multipart part header of 100,000 parameters, 1 MiB of "!" as a text, and 64 texts of 16 k
characters. They run in one child process, through the functions the servers call
(`oip.decode_infer`, `ImageDecoder.decode`, `multipart_files`, `TextEncoder.encode`), with the
defaults a model gets (40 MP images, 512 tokens, 64 texts), so its peak memory is theirs alone.
The promise: each is answered with a 4xx (or a 200) within its time limit, and the child's
memory grows by at most MAX_GROWTH_MB over all of them.
"""

from __future__ import annotations

import io
import json
import resource
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

MAX_GROWTH_MB = 200.0
IMAGE = {"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 224, 224]}
IMAGE_SECTION = {
    "input": "pixel_values",
    "width": 224,
    "height": 224,
    "max_pixels": 40_000_000,
    "resample": "bilinear",
    "resize": [224, 224],
    "rescale": 1 / 255,
    "mean": [0.5] * 3,
    "std": [0.5] * 3,
}


@dataclass(frozen=True)
class DecoderAttack:
    """One hostile request's outcome: the status it got, how long it took, and how much the worker's peak memory grew."""

    name: str
    status: int
    message: str
    seconds: float
    limit_s: float
    growth_mb: float

    @property
    def survived(self) -> bool:
        return self.status < 500 and self.seconds <= self.limit_s and self.growth_mb <= MAX_GROWTH_MB


def _oip(shape: list[int], binary: bool) -> Callable[[], object]:
    from pipeline.serving.common import oip
    from pipeline.serving.common.contract import Contract

    contract = Contract(
        {"model": "m", "inputs": [IMAGE], "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 1]}], "max_rows_per_request": 64}
    )
    tensor: dict = {"name": "pixel_values", "shape": shape, "datatype": "FP32"}
    if binary:
        tensor["parameters"] = {"binary_data_size": 0}
    else:
        tensor["data"] = []
    raw = json.dumps({"inputs": [tensor]}).encode()
    return lambda: oip.decode_infer(raw, str(len(raw)) if binary else None, contract)


def many_scans(width: int, height: int, scans: int) -> bytes:
    """A grey progressive JPEG whose last scan (an AC refinement) is repeated `scans` times: a few bytes a scan."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (width, height), 128).save(out, format="JPEG", progressive=True, quality=50)
    data = out.getvalue()
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * scans + b"\xff\xd9"


def thin_png(width: int) -> bytes:
    """A real RGB PNG of width x 1 pixels, all black, compressed a megabyte at a time (155 KB for 40,000,000)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    packer, parts, left = zlib.compressobj(9), [], 1 + 3 * width
    while left:
        step = min(left, 1 << 20)
        parts.append(packer.compress(bytes(step)))
        left -= step
    header = width.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts) + packer.flush()) + chunk(b"IEND", b"")


def _image(data: bytes) -> Callable[[], object]:
    from pipeline.serving.common.preprocess import ImageDecoder

    decoder = ImageDecoder(IMAGE_SECTION, [IMAGE])
    return lambda: decoder.decode(data)


def _multipart(parameters: int) -> Callable[[], object]:
    from pipeline.serving.common.preprocess import multipart_files

    head = 'Content-Disposition: form-data; name="data"; filename="a.png"' + "; p=1" * parameters
    body = f"--b\r\n{head}\r\nContent-Type: image/png\r\n\r\nx\r\n--b--\r\n".encode()
    return lambda: multipart_files(body, "multipart/form-data; boundary=b")


def _text(texts: list[str]) -> Callable[[], object]:
    encoder = text_encoder()
    return lambda: encoder.encode(encoder.texts(texts)[0])


def text_encoder():
    """A TextEncoder at the defaults (512 tokens, 64 texts) over a small WordPiece tokenizer that splits punctuation, as BERT's does."""
    import hashlib

    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from pipeline.serving.common.preprocess import TextEncoder

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "!", "a", "cat"])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    raw = tokenizer.to_str().encode()

    section = {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "tokenizer": "tokenizer.json",
        "max_length": 512,
        "truncate": True,
        "max_texts": 64,
    }
    return TextEncoder(section, raw, [{"name": "input_ids", "dtype": "int64"}, {"name": "attention_mask", "dtype": "int64"}])


def attacks() -> dict[str, tuple[float, Callable[[], Callable[[], object]]]]:
    """name -> (time limit in seconds, a maker of the request's decode): what each attack sends."""
    return {
        "OIP shape [20000000, 1], no data, to a 4-axis input (was 13 s, 2.2 GB)": (1.0, lambda: _oip([20_000_000, 1], binary=False)),
        "OIP shape [40000000], no data (killed the worker)": (1.0, lambda: _oip([40_000_000], binary=False)),
        "OIP binary shape [20000000, 1], 0 bytes": (1.0, lambda: _oip([20_000_000, 1], binary=True)),
        "progressive JPEG 6000 x 6000 of 10,000 scans, 731 KB (was 30 s)": (3.0, lambda: _image(many_scans(6000, 6000, 10_000))),
        "PNG 1 x 40,000,000, 155 KB (was 2.9 s, 1.8 GB)": (3.0, lambda: _image(thin_png(40_000_000))),
        "multipart part of 100,000 parameters, 1 MiB (was 30 s on Ray)": (1.0, lambda: _multipart(100_000)),
        'text of 1 MiB of "!" (was 1.5 s, 851 MB)': (1.0, lambda: _text(["!" * (1 << 20)])),
        "64 texts of 16 k characters (was 1.18 GB)": (1.0, lambda: _text(["cat " * 4096] * 64)),
    }


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_one(name: str) -> DecoderAttack:
    """In the child: make the request, then time its decode and the growth of the peak resident memory."""
    from pipeline.serving.common.contract import RequestError

    limit, make = attacks()[name]
    decode = make()
    before = _peak_mb()
    started = time.perf_counter()
    try:
        decode()
        status, message = 200, "accepted"
    except RequestError as exc:
        status, message = exc.code, str(exc)
    except Exception as exc:  # a decoder that fails any other way would be a 500 on a server
        status, message = 500, f"{type(exc).__name__}: {exc}"
    return DecoderAttack(name, status, message[:160], time.perf_counter() - started, limit, _peak_mb() - before)


def run_attacks() -> list[DecoderAttack]:
    """Every attack, one after another, in one fresh child process."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return [pool.submit(_run_one, name).result() for name in attacks()]
