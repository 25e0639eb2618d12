"""Real inputs to tensors: texts tokenized, images decoded, in the worker; one code path.

The TorchServe handler and the Ray replica both read a request through `RequestReader`
(via `pipeline.serving.common.predictor`), and parity makes its text and image cases with the
same `TextEncoder` and `ImageDecoder` (`sample_feeds`), so what parity verified is what
the servers compute. Their settings are the contract's `text_input` / `image_input`
sections (`contract.declare` writes them from the spec's TextInput / ImageInput).

Requests, beside the JSON tensors every model takes ({"input_ids": [[101, 2023, 102]]}):
    text models:   {"text": "a sentence"}  or  {"text": ["one", "two"]}   (at most max_texts)
    sentence pairs (a model that takes token_type_ids, as Hugging Face's text-classification
                   pipeline takes them): {"text": "first", "text_pair": "second"}  or
                   {"text": ["a", "b"], "text_pair": ["c", "d"]}   (one text_pair per text, each
                   checked as a text is; a pair is truncated, or refused, at max_length as a whole;
                   a text_pair to a model of single texts is a 400)
    image models:  a raw JPEG or PNG body (Content-Type image/jpeg or image/png, or none:
                   `curl -T cat.jpg`), {"image": "<base64>"} or {"image": ["<base64>", ...]},
                   or multipart/form-data with one or more JPEG/PNG files (`curl -F data=@cat.jpg`).
A single text or image is answered like a single row (no batch axis); a list, row by row.
Texts in one request are padded to the longest (attention_mask marks the padding).

Bad input is a `RequestError` (HTTP 400) naming the problem: an empty body or text, text
that is not UTF-8, too many texts, a text over max_length where truncation is off, a
Content-Type other than JSON/JPEG/PNG, a GIF, a truncated or corrupt image, an image
over max_pixels or MAX_SIDE on a side, and a JPEG of more scans than MAX_SCANS (or of scans
times pixels over MAX_SCAN_PIXELS), all refused from the header and markers before anything
is decoded. A JPEG over DRAFT_MIN_PIXELS and much larger than the model's input is decoded
at 1/2, 1/4 or 1/8 of its size (never under twice the resized size) before it is resized. A tiny image (1 x 1)
is accepted and resized like any other; an image so thin that resizing it would pass
max_pixels (1 x 20000 to a shortest edge of 224) is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import IntegrityError
from pipeline.serving.common.contract import Contract, RequestError, decode_body

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

Feed = dict[str, np.ndarray]
TEXT_FEEDS = ("input_ids", "attention_mask", "token_type_ids")
IMAGE_TYPES = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG"}
JSON_TYPES = ("application/json", "text/plain", "")
# Bodies whose type says nothing; the first bytes say whether they are an image.
UNTYPED = ("", "application/octet-stream")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF"}
# The longest side an image may have, whatever max_pixels allows: a 1 x 40,000,000 PNG is within
# 40 MP, but took 2.9 s and 1.8 GB to decode and resize. A 16k side holds any camera's photo.
MAX_SIDE = 16_384
# A progressive JPEG is decoded scan by scan, each one a pass over every coefficient: 300 scans of
# 6000 x 6000 took 17 s (and 68,000 killed a worker), however few bytes each scan is. Encoders write
# about 10 (libjpeg's default script; mozjpeg's up to ~20), so a few hundred is generous, and the scans
# times the pixels bounds the work: a 40 MP photo of 15 scans decodes, in about 1 s.
MAX_SCANS = 256
MAX_SCAN_PIXELS = 600_000_000
# Tokenizers read a whole text before they truncate it (1 MiB of "!" took 1.5 s and 851 MB: one
# token, and ~850 bytes of encoding, per character), so texts are bounded in characters first.
# Each is cut at max_length x CHARS_PER_TOKEN characters where truncation is on (refused where it
# is off): ordinary text averages 4-6 characters a token (WordPiece, BPE), so the cut never
# changes the max_length tokens kept; only a text of words each over 32 characters (one [UNK]
# each, up to WordPiece's 100) could lose tokens. A request's texts hold at most
# max_texts x max_length x REQUEST_CHARS_PER_TOKEN characters in all (64 x 16 k was 1.18 GB).
CHARS_PER_TOKEN = 32
REQUEST_CHARS_PER_TOKEN = 8
# multipart/form-data on Ray (TorchServe's frontend splits forms itself): parts per body, headers
# per part and bytes per header line, and parameters per header. A real part has two headers
# (Content-Disposition, Content-Type) and two parameters (name, filename).
MAX_FORM_PARTS = 64
MAX_PART_HEADERS = 8
MAX_PART_HEADER_BYTES = 4 << 10
MAX_HEADER_PARAMETERS = 16
# A JPEG over this many pixels is decoded at 1/2 to 1/8 of its size where the model's input is that much
# smaller (see ImageDecoder.decode): 6000 x 4000 to 224 took 1.8 s whole, 0.5 s so. Its pixels then differ
# slightly from a full decode's (6000 x 4000 to 224: by 0.0016 on average, 0.016 at most, after
# normalising to [-1, 1]; as Pillow's thumbnail's do); a phone's 12 MP photo is decoded
# whole, so the model sees exactly what Hugging Face's image processor makes of it.
DRAFT_MIN_PIXELS = 16_000_000
# Where a scan's entropy-coded data ends: a marker, i.e. 0xFF not followed by 0x00 (a stuffed byte), RSTn or 0xFF.
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def media_type(content_type: str | None) -> str:
    """'image/png' from 'image/PNG; charset=x'; '' when there is none."""
    return (content_type or "").split(";")[0].strip().lower()


def sniff(data: bytes | bytearray) -> str | None:
    """The image format the body's first bytes declare (JPEG, PNG, GIF), or None."""
    return next((fmt for magic, fmt in MAGIC.items() if bytes(data[: len(magic)]) == magic), None)


class TextEncoder:
    """`tokenizer.json` (the `tokenizers` library) with the contract's text settings."""

    def __init__(self, section: Mapping[str, Any], tokenizer_json: bytes, inputs: Sequence[Mapping[str, Any]]):
        from tokenizers import Tokenizer

        digest = hashlib.sha256(tokenizer_json).hexdigest()
        if digest != section["sha256"]:
            raise IntegrityError(
                "serve",
                f"{section['tokenizer']} has sha256 {digest[:12]}, the contract records {section['sha256'][:12]}",
                "rebuild the archive with the package stage: python -m pipeline package --force",
            )
        self.max_length = int(section["max_length"])
        self.truncate = bool(section["truncate"])
        self.max_texts = int(section["max_texts"])
        # Bounds in characters, checked before tokenizing (see CHARS_PER_TOKEN): per text, and per request.
        self.max_chars = self.max_length * CHARS_PER_TOKEN
        self.max_request_chars = max(self.max_chars, self.max_texts * self.max_length * REQUEST_CHARS_PER_TOKEN)
        self.feeds = {t["name"]: np.dtype(t["dtype"]) for t in inputs if t["name"] in TEXT_FEEDS}
        # Only a model that tells segments apart (token_type_ids) reads a pair as two sentences.
        self.pairs = "token_type_ids" in self.feeds
        self.tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        # The checkpoint's own padding and truncation settings are replaced by the contract's:
        # padding is done here (to the batch's longest, with the checkpoint's pad id), truncation only where allowed.
        padding = self.tokenizer.padding or {}
        self.pad_id = int(
            padding.get("pad_id", next((i for t in ("[PAD]", "<pad>") if (i := self.tokenizer.token_to_id(t)) is not None), 0))
        )
        self.tokenizer.no_padding()
        if self.truncate:
            # A pair is cut from the longer of its two texts, token by token, until it fits (as transformers does).
            self.tokenizer.enable_truncation(self.max_length, strategy="longest_first")
        else:
            self.tokenizer.no_truncation()

    def texts(self, value: Any, key: str = "text") -> tuple[list[str], bool]:
        """(the texts, whether one was sent alone) from a request's "text" (or "text_pair") value, or a RequestError."""
        single = isinstance(value, str)
        texts = [value] if single else value
        if not isinstance(texts, list) or not texts:
            raise RequestError(f'"{key}" must be a string or a non-empty list of strings')
        if len(texts) > self.max_texts:
            raise RequestError(f'"{key}" holds {len(texts)} texts; this model takes at most {self.max_texts} per request')
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise RequestError(f'"{key}" item {i} is not a string')
            if not text.strip():
                raise RequestError(f'"{key}" item {i} is empty; send some words')
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate, which JSON's \\ud800 escape can carry
                raise RequestError(f'"{key}" item {i} is not valid UTF-8 (it holds a lone surrogate)') from None
        return texts, single

    def pairs_of(self, value: Any, pair: Any) -> tuple[list[tuple[str, str]], bool]:
        """(the sentence pairs, whether one was sent alone) from "text" and "text_pair", as Hugging Face's
        text-classification pipeline takes them: two strings, or two lists of the same length."""
        if not self.pairs:
            raise RequestError(
                '"text_pair" is for a model that reads sentence pairs (token_type_ids); this model takes single texts: send "text" alone'
            )
        firsts, single = self.texts(value)
        seconds, pair_single = self.texts(pair, "text_pair")
        if single != pair_single or len(firsts) != len(seconds):
            sent = ["one string" if alone else f"a list of {len(t)}" for t, alone in ((firsts, single), (seconds, pair_single))]
            raise RequestError(
                f'"text" is {sent[0]}, "text_pair" {sent[1]}: send one text_pair for each text (two strings, or two lists of the same length)'
            )
        return list(zip(firsts, seconds)), single

    def bounded(self, texts: Sequence[str | tuple[str, str]]) -> list[str | tuple[str, str]]:
        """The texts cut at max_chars each where truncation is on (refused where it is off), then
        refused if they hold over max_request_chars in all: what the tokenizer reads is bounded before it reads it."""

        def cut(text: str, i: int) -> str:
            if len(text) <= self.max_chars:
                return text
            if not self.truncate:
                raise RequestError(
                    f'"text" item {i} is {len(text):,} characters, over {self.max_length} tokens of any ordinary text '
                    f"(at most {self.max_chars:,} characters): shorten it"
                )
            return text[: self.max_chars]

        out = [cut(t, i) if isinstance(t, str) else (cut(t[0], i), cut(t[1], i)) for i, t in enumerate(texts)]
        total = sum(len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in out)
        if total > self.max_request_chars:
            raise RequestError(
                f"the texts hold {total:,} characters (after cutting each at {self.max_chars:,}); this model reads at most "
                f"{self.max_request_chars:,} per request: send fewer texts per request, or shorter ones"
            )
        return out

    def encode(self, texts: Sequence[str | tuple[str, str]]) -> Feed:
        """The model's token inputs for these texts (or pairs: token_type_ids 0 for the first, 1 for the second),
        padded to the longest; a text too long is a RequestError."""
        encodings = self.tokenizer.encode_batch(self.bounded(texts))
        longest = max(len(e.ids) for e in encodings)
        if not self.truncate and longest > self.max_length:
            i = next(i for i, e in enumerate(encodings) if len(e.ids) == longest)
            what = f'"text" and "text_pair" item {i} are' if isinstance(texts[i], tuple) else f'"text" item {i} is'
            raise RequestError(f"{what} {longest} tokens; this model takes at most {self.max_length}: shorten it")
        ids = np.full((len(texts), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
            types[row, : len(e.ids)] = e.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name].astype(dtype) for name, dtype in self.feeds.items()}


class ImageDecoder:
    """JPEG/PNG bytes to the model's normalised [3, height, width] row, with Pillow."""

    def __init__(self, section: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]]):
        from PIL import Image

        self.section = dict(section)
        self.input = section["input"]
        self.dtype = np.dtype(next(t["dtype"] for t in inputs if t["name"] == self.input))
        self.size = (int(section["width"]), int(section["height"]))
        self.max_pixels = int(section["max_pixels"])
        self.resample = getattr(Image.Resampling, section["resample"].upper())
        # Pillow's own bomb check (2x this raises, 1x warns) stays behind the one here, which
        # refuses from the header; set explicitly rather than trusting Pillow's default (89 MP).
        Image.MAX_IMAGE_PIXELS = self.max_pixels
        self.mean = np.asarray(section["mean"], dtype=np.float32).reshape(1, 1, 3)
        self.std = np.asarray(section["std"], dtype=np.float32).reshape(1, 1, 3)

    def decode(self, data: bytes | bytearray, what: str = "the image") -> np.ndarray:
        """One image's row [3, height, width]; a RequestError for anything but a sound JPEG or PNG within max_pixels."""
        from PIL import Image, ImageOps

        if not data:
            raise RequestError(f"{what} is empty; send the bytes of a JPEG or PNG")
        fmt = sniff(data)
        if fmt == "GIF":
            raise RequestError(f"{what} is a GIF; this model takes JPEG or PNG")
        if fmt is None:
            raise RequestError(f"{what} is not a JPEG or PNG (its first bytes are {bytes(data[:8])!r})")
        try:
            with warnings.catch_warnings():  # between max_pixels and twice it Pillow only warns; refused below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(bytes(data)), formats=["JPEG", "PNG"])  # lazy: the header only
        except Image.DecompressionBombError as exc:
            raise RequestError(f"{what} is over this model's {self.max_pixels:,} pixels: {exc}") from None
        except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error, ... for a broken header
            raise RequestError(f"{what} is not a readable {fmt}: {exc}") from None
        width, height = image.size
        resized = self.check_size(width, height, what)
        if fmt == "JPEG":
            self.check_scans(data, width * height, what)
            if width * height > DRAFT_MIN_PIXELS:
                # libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 where the model's input is that much smaller;
                # never below twice the resized size in either orientation (Pillow's thumbnail keeps the same gap).
                side = 2 * max(resized)
                image.draft(None, (side, side))
        try:
            image.load()  # the decode; LOAD_TRUNCATED_IMAGES stays False, so a cut-off file is an error
            rgb = ImageOps.exif_transpose(image).convert("RGB")  # a phone photo upright, as its viewer shows it
        except Exception as exc:  # a corrupt stream: OSError, SyntaxError, zlib.error, ValueError, ...
            raise RequestError(f"{what} is a corrupt or truncated {fmt}: {exc}") from None
        return self.to_row(rgb)

    def check_size(self, width: int, height: int, what: str) -> tuple[int, int]:
        """The size after resizing, once the header's size is within max_pixels, MAX_SIDE on each side, and not too thin."""
        if width * height > self.max_pixels:
            raise RequestError(f"{what} is {width} x {height} = {width * height:,} pixels; this model takes at most {self.max_pixels:,}")
        resized = self.resized_size(width, height)
        if resized[0] * resized[1] > self.max_pixels:
            raise RequestError(f"{what} is {width} x {height}: too thin to resize to this model's input; crop it first")
        if max(width, height) > MAX_SIDE:
            raise RequestError(f"{what} is {width} x {height}; this model takes at most {MAX_SIDE:,} pixels on a side")
        return resized

    def check_scans(self, data: bytes | bytearray, pixels: int, what: str) -> None:
        """Refuse a JPEG whose scans would take too long to decode: each is one more pass over every pixel's coefficients."""
        scans = jpeg_scans(data, MAX_SCANS + 1)
        if scans > MAX_SCANS or scans * pixels > MAX_SCAN_PIXELS:
            raise RequestError(
                f"{what} is a JPEG of {f'over {MAX_SCANS}' if scans > MAX_SCANS else scans} scans of {pixels:,} pixels; this model decodes at most "
                f"{MAX_SCANS} scans and {MAX_SCAN_PIXELS:,} pixels over all of them: save it as a baseline JPEG, or smaller"
            )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step: the shortest edge to a length, an exact size, or the model's."""
        edge = self.section.get("resize_shortest_edge")
        if edge:
            # As transformers' get_resize_output_image_size (and torchvision's Resize) do it: the
            # long edge truncated, not rounded (640 x 480 to 224 is 298 x 224), or pixels shift.
            return (edge, int(edge * height / width)) if width <= height else (int(edge * width / height), edge)
        exact = self.section.get("resize")
        return (int(exact[1]), int(exact[0])) if exact else self.size

    def to_row(self, image) -> np.ndarray:
        """Resize, centre-crop, rescale, normalise, and put channels first."""
        image = image.resize(self.resized_size(*image.size), self.resample)
        crop = self.section.get("crop")
        if crop:
            left, top = (image.width - crop[1]) // 2, (image.height - crop[0]) // 2
            image = image.crop((left, top, left + crop[1], top + crop[0]))
        pixels = np.asarray(image, dtype=np.float32) * np.float32(self.section["rescale"])
        row = ((pixels - self.mean) / self.std).transpose(2, 0, 1)
        return np.ascontiguousarray(row, dtype=self.dtype)

    def feed(self, images: Sequence[bytes | bytearray]) -> Feed:
        rows = [self.decode(data, f"image {i}" if len(images) > 1 else "the image") for i, data in enumerate(images)]
        return {self.input: np.stack(rows)}


def jpeg_scans(data: bytes | bytearray, stop: int) -> int:
    """How many scans (SOS segments) a JPEG holds, counted up to `stop`, from its markers alone: nothing is decoded.

    Segments are skipped by their length; a scan's entropy-coded data runs to the next byte 0xFF
    that is not a stuffed 0x00, a restart marker or a fill byte (ITU T.81, B.1.1.2 and B.1.1.5)."""
    scans, at = 0, 2  # after SOI
    while scans < stop and at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte before a marker
            at += 1
        elif marker == 0xD9:  # EOI
            break
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM and RSTn have no length
            at += 2
        else:
            at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
            if marker == 0xDA:
                scans += 1
                end = _ENTROPY_END.search(data, at)
                at = end.start() if end else len(data)
    return scans


def _base64(value: Any, i: int | None) -> bytes:
    what = '"image"' if i is None else f'"image" item {i}'
    if not isinstance(value, str):
        raise RequestError(f"{what} must be a base64 string of a JPEG or PNG")
    try:
        return base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{what} is not valid base64") from None


class _FormParts:
    """python-multipart's callbacks, collecting each part's headers and data within the form limits."""

    def __init__(self, max_parts: int):
        self.max_parts = max_parts
        self.parts: list[tuple[dict[str, str], list[bytes]]] = []
        self.field = self.value = b""

    def begin(self) -> None:
        if len(self.parts) == self.max_parts:
            raise RequestError(f"the multipart/form-data body has over {self.max_parts} parts; send at most {self.max_parts} files")
        self.parts.append(({}, []))

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]  # each header line within MAX_PART_HEADER_BYTES: the parser's own limit

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.parts[-1][0][self.field.decode("latin-1").lower()] = self.value.decode("latin-1")
        self.field = self.value = b""

    def data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1][1].append(data[start:end])

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_part_data": self.data,
        }


def _options(header: str, what: str) -> dict[bytes, bytes]:
    """A header's parameters (python-multipart's parser), refused past MAX_HEADER_PARAMETERS before parsing them."""
    from python_multipart.multipart import parse_options_header

    if header.count(";") > MAX_HEADER_PARAMETERS:
        raise RequestError(f"{what} has over {MAX_HEADER_PARAMETERS} parameters")
    return parse_options_header(header)[1]


def multipart_files(body: bytes, content_type: str, max_parts: int = MAX_FORM_PARTS) -> dict[str, bytes]:
    """The files of a multipart/form-data body, by field name, as TorchServe's frontend splits them (for Ray's route).

    Parsed with python-multipart (the parser Starlette uses), within limits checked as it goes:
    at most `max_parts` parts, MAX_PART_HEADERS headers of MAX_PART_HEADER_BYTES each per part, MAX_HEADER_PARAMETERS
    parameters per header. The standard library's email parser had none: one part header of
    100,000 parameters (1 MiB) held a Ray replica for 30 s.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser

    if len(content_type) > MAX_PART_HEADER_BYTES:
        raise RequestError(f"the Content-Type header is over {MAX_PART_HEADER_BYTES:,} bytes")
    boundary = _options(content_type, "the Content-Type header").get(b"boundary")
    if not boundary:
        raise RequestError("the multipart/form-data Content-Type names no boundary; let the client write it (curl -F data=@cat.jpg)")
    form = _FormParts(max_parts)
    try:
        parser = MultipartParser(boundary, form.callbacks(), max_header_count=MAX_PART_HEADERS, max_header_size=MAX_PART_HEADER_BYTES)
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise RequestError(
            f"the multipart/form-data body does not parse ({exc}); send the image as a file field (curl -F data=@cat.jpg)"
        ) from None
    files = {}
    for i, (headers, chunks) in enumerate(form.parts):
        disposition = _options(headers.get("content-disposition", ""), f"part {i}'s Content-Disposition")
        if b"filename" in disposition:
            name = disposition.get(b"name", b"").decode("latin-1")
            files[name or f"file{i}"] = b"".join(chunks)
    if not files:
        raise RequestError("the multipart/form-data body holds no file; send the image as a file field (curl -F data=@cat.jpg)")
    return files


class RequestReader:
    """A request's arrays and whether it was a single row: tensors as JSON, or texts, or images."""

    def __init__(self, contract: Contract, text: TextEncoder | None = None, image: ImageDecoder | None = None):
        self.contract = contract
        self.text = text
        self.image = image

    def read(self, item: Any, content_type: str | None = None) -> tuple[Feed, bool]:
        """The feed for one request item (TorchServe's {"body": ...} form, or multipart fields) and its Content-Type."""
        kind = media_type(content_type)
        if self.image is not None and isinstance(item, dict):
            if kind == "multipart/form-data":  # TorchServe splits it into fields; the files are bytes
                files = [v for v in item.values() if isinstance(v, (bytes, bytearray))]
                if files:
                    return self.images(files, single=len(files) == 1)
            body = item.get("body", item.get("data"))
            if isinstance(body, (bytes, bytearray)) and (kind in IMAGE_TYPES or (kind in UNTYPED and sniff(body))):
                return self.images([body], single=True)
            if kind not in (*JSON_TYPES, *UNTYPED, *FORM_TYPES):
                raise RequestError(f"Content-Type {kind} is not accepted; send image/jpeg, image/png, or JSON (application/json)")
        elif kind.startswith("image/"):
            raise RequestError(f"Content-Type {kind} is not accepted: this model takes no images; send JSON (application/json)")
        body = decode_body(item, self.contract.example)
        if self.text is not None and "text" in body:
            return self.texts(body)
        if self.image is not None and "image" in body:
            if len(body) > 1:
                raise RequestError(f'send "image" alone, not with {sorted(set(body) - {"image"})}')
            value = body["image"]
            if isinstance(value, list):
                return self.images([_base64(v, i) for i, v in enumerate(value)], single=False)
            return self.images([_base64(value, None)], single=True)
        return self.contract.parse(body)

    def texts(self, body: dict) -> tuple[Feed, bool]:
        assert self.text is not None
        other = sorted(set(body) - {"text", "text_pair"})
        if other:
            raise RequestError(f'send "text" alone (or with "text_pair"), not with {other}')
        if "text_pair" in body:
            pairs, single = self.text.pairs_of(body["text"], body["text_pair"])
            return self.checked(self.text.encode(pairs)), single
        texts, single = self.text.texts(body["text"])
        return self.checked(self.text.encode(texts)), single

    def images(self, images: list, single: bool) -> tuple[Feed, bool]:
        assert self.image is not None
        # Rows and elements are checked before anything is decoded: the contract's
        # max_elements_per_request bounds how many images one request may carry.
        width, height = self.image.size
        self.contract.check_extent(self.image.input, (len(images), 3, height, width))
        return self.checked(self.image.feed(images)), single

    def checked(self, feed: Feed) -> Feed:
        """The contract's bounds on what preprocessing made: rows, lengths, and value ranges (a token id past the vocabulary)."""
        for tensor in self.contract.inputs:
            name = tensor["name"]
            self.contract.check_extent(name, feed[name].shape)
            low, high = tensor.get("low"), tensor.get("high")
            if (low is not None and feed[name].min() < low) or (high is not None and feed[name].max() > high):
                raise RequestError(f"'{name}' holds values outside [{low}, {high}] after preprocessing; the tokenizer and model disagree")
        return feed


def reader(contract: Contract, tokenizer_json: bytes | None = None) -> RequestReader:
    """The contract's reader, with the archive's tokenizer.json where the model takes texts."""
    text = image = None
    if contract.text_input:
        if tokenizer_json is None:
            raise IntegrityError(
                "serve",
                f"{contract.model} takes texts but has no tokenizer.json",
                "rebuild the archive: python -m pipeline package --force",
            )
        text = TextEncoder(contract.text_input, tokenizer_json, contract.inputs)
    if contract.image_input:
        image = ImageDecoder(contract.image_input, contract.inputs)
    return RequestReader(contract, text, image)


SAMPLE_TEXTS = ("Hello world.", "A longer sentence, padded against the first one, that the tokenizer splits into many more tokens.")


def sample_image(rng: np.random.Generator, width: int = 96, height: int = 72) -> bytes:
    """A JPEG of smooth gradients and noise: something like a photo, for parity and tests."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def sample_feeds(data: Mapping[str, Any], tokenizer_json: bytes | None, rng: np.random.Generator) -> dict[str, Feed]:
    """Parity cases made the way the servers make them: sample texts tokenized, a JPEG decoded."""
    read = reader(Contract(dict(data)), tokenizer_json)
    cases: dict[str, Feed] = {}
    if read.text is not None:
        cases["texts (tokenized)"] = read.texts({"text": list(SAMPLE_TEXTS)})[0]
    if read.image is not None:
        cases["jpeg 96x72 (decoded)"] = read.images([sample_image(rng)], single=True)[0]
    return cases
