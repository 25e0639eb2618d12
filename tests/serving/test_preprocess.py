"""pipeline.serving.common.preprocess without a server: texts tokenized, images decoded, every bad input a 400 naming it."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import IntegrityError, SpecError
from pipeline.models import load_spec
from pipeline.serving.common import preprocess
from pipeline.serving.common.contract import Contract, RequestError, declare, top_labels
from tests.fixtures.bert_text import build_tokenizer
from tests.serving.real_models import model_files


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return {name: load_spec(str(path)) for name, path in model_files(tmp_path_factory.mktemp("models")).items()}


@pytest.fixture(scope="module")
def text(specs):
    spec = specs["bert_text"]
    return preprocess.reader(Contract(declare(spec)), spec.source.with_name("tokenizer.json").read_bytes())


@pytest.fixture(scope="module")
def image(specs):
    return preprocess.reader(Contract(declare(specs["vit_images"])))


def encode(pixels: np.ndarray, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format=fmt, **kw)
    return out.getvalue()


def solid(width: int, height: int, rgb=(255, 0, 128), fmt: str = "PNG") -> bytes:
    return encode(np.broadcast_to(np.array(rgb, dtype=np.uint8), (height, width, 3)), fmt)


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature and IHDR declaring this size, and one tiny IDAT: what a decompression bomb shows first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def refused(reader, item, content_type=None) -> str:
    with pytest.raises(RequestError) as info:
        reader.read(item, content_type)
    assert info.value.code == 400
    return str(info.value)


# --- texts ---------------------------------------------------------------------------------


def test_text_is_tokenized_with_the_checkpoint_tokenizer_and_padded_to_the_longest(text):
    feed, single = text.read({"body": {"text": ["the cat sat", "a very good movie ."]}})
    assert not single
    want = [e.ids for e in build_tokenizer().encode_batch(["the cat sat", "a very good movie ."])]
    assert feed["input_ids"].tolist() == [want[0] + [0, 0], want[1]]  # [PAD] is id 0
    assert feed["attention_mask"].tolist() == [[1] * 5 + [0, 0], [1] * 7]
    assert feed["token_type_ids"].tolist() == [[0] * 7, [0] * 7]
    assert {a.dtype for a in feed.values()} == {np.dtype("int64")}
    one, single = text.read({"body": b'{"text": "Hello world"}'})
    assert single and one["input_ids"].tolist() == [[2, 20, 21, 3]]  # lower-cased, [CLS] ... [SEP]


def test_long_text_is_truncated_to_max_length(text):
    feed, _ = text.read({"body": {"text": " ".join(["cat"] * 100)}})
    assert feed["input_ids"].shape == (1, 32) and feed["input_ids"][0, -1] == 3  # [SEP] kept last


def test_long_text_is_refused_where_truncation_is_off(specs):
    spec = specs["bert_text"]
    contract = declare(spec)
    contract["text_input"]["truncate"] = False
    reader = preprocess.reader(Contract(contract), spec.source.with_name("tokenizer.json").read_bytes())
    assert "102 tokens; this model takes at most 32" in refused(reader, {"body": {"text": ["cat", " ".join(["cat"] * 100)]}})


class SpyTokenizer:
    """A tokenizer that records the characters of every text it is given."""

    def __init__(self, real):
        self.real, self.seen = real, []

    def encode_batch(self, texts):
        self.seen.append([len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in texts])
        return self.real.encode_batch(texts)


@pytest.fixture
def spied(specs):
    spec = specs["bert_text"]
    reader = preprocess.reader(Contract(declare(spec)), spec.source.with_name("tokenizer.json").read_bytes())
    assert reader.text is not None
    reader.text.tokenizer = SpyTokenizer(reader.text.tokenizer)
    return reader, reader.text.tokenizer


def test_a_long_text_is_cut_in_characters_before_it_is_tokenized(spied):
    """1 MiB of "!" was tokenized whole before truncation: 1.5 s and 851 MB."""
    reader, spy = spied
    feed, _ = reader.read({"body": {"text": "!" * (1 << 20)}})
    assert feed["input_ids"].shape == (1, 32) and spy.seen == [[32 * preprocess.CHARS_PER_TOKEN]]
    feed, _ = reader.read({"body": {"text": "a b", "text_pair": "!" * (1 << 20)}})
    assert feed["input_ids"].shape == (1, 32) and spy.seen[-1] == [3 + 32 * preprocess.CHARS_PER_TOKEN]


def test_a_request_of_many_long_texts_is_refused_before_it_is_tokenized(spied):
    """64 texts of 16 k characters left a worker at 1.18 GB: here, 8 texts (this model's most) of 1,024 characters each."""
    reader, spy = spied
    message = refused(reader, {"body": {"text": ["cat " * 256] * 8}})
    assert "8,192 characters" in message and "at most 2,048 per request" in message and spy.seen == []
    assert reader.read({"body": {"text": ["cat " * 64] * 8}})[0]["input_ids"].shape == (8, 32)  # 2,048 in all


def test_a_text_too_long_in_characters_is_refused_where_truncation_is_off(specs):
    spec = specs["bert_text"]
    contract = declare(spec)
    contract["text_input"]["truncate"] = False
    reader = preprocess.reader(Contract(contract), spec.source.with_name("tokenizer.json").read_bytes())
    assert "1,025 characters" in refused(reader, {"body": {"text": "!" * 1025}})


@pytest.mark.parametrize("max_length", [32, 512])
def test_cutting_at_the_character_bound_keeps_the_tokens_of_ordinary_text(max_length):
    """For ordinary text the tokens kept within max_length are the same whether the text was cut at
    max_length x CHARS_PER_TOKEN characters first or not: the cut is always well past them."""
    tokenizer = build_tokenizer()
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    words = [
        "The",
        "cat",
        "sat",
        "on",
        "the",
        "mat",
        ",",
        "and",
        "it",
        "was",
        "not",
        "very",
        "great",
        "at",
        "all",
        ".",
        "internationalization",
        "2026-12-06",
        "naïve",
        "café",
        "!",
    ]
    rng = np.random.default_rng(0)
    bound = max_length * preprocess.CHARS_PER_TOKEN
    for _ in range(20):
        text = " ".join(rng.choice(words, size=bound // 3))  # longer than the bound
        assert len(text) > bound
        full, cut = tokenizer.encode_batch([text, text[:bound]])
        assert full.ids == cut.ids and len(full.ids) == max_length


def test_a_sentence_pair_is_two_segments(text):
    # As Hugging Face's text-classification pipeline takes it: "text" and "text_pair".
    feed, single = text.read({"body": {"text": "the cat sat", "text_pair": "a good movie"}})
    assert single
    assert feed["input_ids"].tolist() == [build_tokenizer().encode("the cat sat", "a good movie").ids]
    assert feed["input_ids"][0].tolist().count(3) == 2  # [CLS] the cat sat [SEP] a good movie [SEP]
    assert feed["token_type_ids"].tolist() == [[0] * 5 + [1] * 4]
    assert feed["attention_mask"].tolist() == [[1] * 9]
    pairs, single = text.read({"body": {"text": ["the cat sat", "hello"], "text_pair": ["on the mat", "world"]}})
    assert not single
    assert pairs["token_type_ids"].tolist() == [[0] * 5 + [1] * 4, [0] * 3 + [1] * 2 + [0] * 4]  # padding in segment 0
    assert pairs["attention_mask"].tolist() == [[1] * 9, [1] * 5 + [0] * 4]


def test_a_long_pair_is_truncated_to_max_length_from_its_longer_text(text):
    feed, _ = text.read({"body": {"text": " ".join(["cat"] * 100), "text_pair": "a good movie"}})
    assert feed["input_ids"].shape == (1, 32) and feed["input_ids"][0, -1] == 3
    assert feed["token_type_ids"][0].tolist() == [0] * 28 + [1] * 4  # the short second text kept whole


def test_a_long_pair_is_refused_where_truncation_is_off(specs):
    spec = specs["bert_text"]
    contract = declare(spec)
    contract["text_input"]["truncate"] = False
    reader = preprocess.reader(Contract(contract), spec.source.with_name("tokenizer.json").read_bytes())
    body = {"text": ["cat", " ".join(["cat"] * 20)], "text_pair": ["dog", " ".join(["dog"] * 20)]}
    assert '"text" and "text_pair" item 1 are 43 tokens; this model takes at most 32' in refused(reader, {"body": body})


def test_a_text_pair_to_a_model_of_single_texts_is_refused(specs):
    spec = specs["bert_text"]
    contract = declare(spec)
    contract["inputs"] = [t for t in contract["inputs"] if t["name"] != "token_type_ids"]
    reader = preprocess.reader(Contract(contract), spec.source.with_name("tokenizer.json").read_bytes())
    assert set(reader.read({"body": {"text": "the cat sat"}})[0]) == {"input_ids", "attention_mask"}
    message = refused(reader, {"body": {"text": "the cat sat", "text_pair": "on the mat"}})
    assert "this model takes single texts" in message and 'send "text" alone' in message


@pytest.mark.parametrize(
    "body, message",
    [
        ({"text": ""}, '"text" item 0 is empty'),
        ({"text": ["fine", "   "]}, '"text" item 1 is empty'),
        ({"text": []}, "non-empty list of strings"),
        ({"text": 5}, "must be a string"),
        ({"text": ["ok", 5]}, '"text" item 1 is not a string'),
        ({"text": ["a"] * 9}, "9 texts; this model takes at most 8"),
        ({"text": "a", "input_ids": [1]}, 'send "text" alone'),
        (b'{"text": "\\ud800"}', "not valid UTF-8"),
        (b'{"text": "caf\xe9"}', "body is not valid UTF-8"),
        (b"", "empty body"),
        ({"text": ["a", "b"], "text_pair": ["c"]}, '"text" is a list of 2, "text_pair" a list of 1: send one text_pair for each text'),
        ({"text": "a", "text_pair": ["c"]}, '"text" is one string, "text_pair" a list of 1'),
        ({"text": ["a", "b"], "text_pair": ["c", " "]}, '"text_pair" item 1 is empty'),
        ({"text": "a", "text_pair": 5}, '"text_pair" must be a string'),
        ({"text": "a", "text_pair": None}, '"text_pair" must be a string'),
        ({"text": "", "text_pair": "b"}, '"text" item 0 is empty'),
        ({"text": ["a"] * 9, "text_pair": ["b"] * 9}, "9 texts; this model takes at most 8"),
        (b'{"text": "a", "text_pair": "\\udc00"}', '"text_pair" item 0 is not valid UTF-8'),
        ({"text": "a", "text_pair": "b", "input_ids": [1]}, "not with ['input_ids']"),
    ],
    ids=[
        "empty",
        "blank",
        "no texts",
        "number",
        "item not a string",
        "too many",
        "with tensors",
        "surrogate",
        "latin-1 body",
        "no body",
        "pair lists unequal",
        "pair string and list",
        "pair item blank",
        "pair number",
        "pair null",
        "pair first empty",
        "pairs too many",
        "pair surrogate",
        "pair with tensors",
    ],
)
def test_bad_text_is_a_400_naming_the_problem(text, body, message):
    assert message in refused(text, {"body": body})


def test_text_model_still_takes_tensors_and_refuses_images(text):
    feed, single = text.read({"body": {"input_ids": [2, 5, 3], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 0]}})
    assert single and feed["input_ids"].tolist() == [[2, 5, 3]]
    assert "this model takes no images" in refused(text, {"body": solid(4, 4)}, "image/png")


def test_a_tokenizer_other_than_the_contracts_is_refused(specs):
    spec = specs["bert_text"]
    with pytest.raises(IntegrityError, match="the contract records"):
        preprocess.reader(Contract(declare(spec)), b"{}")


# --- images --------------------------------------------------------------------------------


def test_image_is_resized_cropped_and_normalised(image):
    # A solid colour survives resizing exactly: (255, 0, 128) / 255, less 0.5, over 0.5.
    for body, kind in ((solid(80, 60), "image/png"), (solid(80, 60, fmt="JPEG"), "image/jpeg"), (solid(80, 60), None)):
        feed, single = image.read({"body": body}, kind)
        assert single and feed["pixel_values"].shape == (1, 3, 32, 32) and feed["pixel_values"].dtype == np.float32
        np.testing.assert_allclose(feed["pixel_values"][0, :, 16, 16], [1.0, -1.0, 128 / 127.5 - 1], atol=0.03)


def test_shortest_edge_then_centre_crop(image):
    # 80 x 40: the short edge to 36 makes it 72 x 36, and the crop keeps the middle 32 x 32.
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40] = 255  # white left half, black right half
    row = image.image.decode(encode(pixels, "PNG"))
    left, right = row[0, 16, 0], row[0, 16, 31]
    assert left == pytest.approx(1.0, abs=0.01) and right == pytest.approx(-1.0, abs=0.01)
    assert image.image.resized_size(80, 40) == (72, 36)


def test_the_long_edge_is_truncated_as_transformers_does(image):
    # 36 * 110 / 70 is 56.57: transformers' get_resize_output_image_size (and torchvision's Resize) make it 56, not 57.
    assert image.image.resized_size(110, 70) == (56, 36)
    assert image.image.resized_size(70, 110) == (36, 56)
    assert image.image.resized_size(36, 36) == (36, 36)


def test_tiny_image_is_accepted_and_resized(image):
    feed, _ = image.read({"body": solid(1, 1)}, "image/png")
    np.testing.assert_allclose(feed["pixel_values"][0, 0], 1.0, atol=1e-6)


def test_base64_and_multipart_images(image):
    png, jpeg = solid(20, 20), solid(30, 20, fmt="JPEG")
    one, single = image.read({"body": {"image": base64.b64encode(png).decode()}}, "application/json")
    assert single and one["pixel_values"].shape == (1, 3, 32, 32)
    two, single = image.read(
        {"body": {"image": [base64.b64encode(png).decode(), "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()]}}
    )
    assert not single and two["pixel_values"].shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(two["pixel_values"][0], one["pixel_values"][0])
    fields, single = image.read({"data": png, "other": jpeg}, "multipart/form-data; boundary=x")
    assert not single and fields["pixel_values"].shape == (2, 3, 32, 32)


def test_every_bad_image_is_a_400_naming_the_problem(image):
    jpeg = encode(np.random.default_rng(0).integers(0, 255, (48, 64, 3)), "JPEG")
    png = solid(20, 20)
    idat = png.index(b"IDAT") + 6
    corrupt = png[:idat] + bytes([png[idat] ^ 0xFF]) + png[idat + 1 :]  # its CRC no longer matches
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    cases = [
        ({"body": jpeg[: len(jpeg) // 2]}, "image/jpeg", "corrupt or truncated JPEG"),
        ({"body": b"\xff\xd8\xff" + b"\x00" * 50}, "image/jpeg", "not a readable JPEG"),
        ({"body": b""}, "image/jpeg", "the image is empty"),
        ({"body": b""}, None, "empty body"),
        ({"body": gif.getvalue()}, None, "is a GIF"),
        ({"body": gif.getvalue()}, "image/gif", "Content-Type image/gif is not accepted"),
        ({"body": jpeg}, "text/html", "Content-Type text/html is not accepted"),
        ({"body": b"hello"}, "image/png", "not a JPEG or PNG"),
        ({"body": {"image": "not base64!"}}, None, "not valid base64"),
        ({"body": {"image": 5}}, None, "must be a base64 string"),
        ({"body": corrupt}, "image/png", "PNG"),
        ({"body": {"image": [base64.b64encode(jpeg[:300]).decode()]}}, None, "not a readable JPEG"),
        ({"body": png_header(1, 20000)}, "image/png", "too thin to resize"),
    ]
    for item, kind, message in cases:
        assert message in refused(image, item, kind), (item if len(str(item)) < 80 else str(item)[:80], kind)
    assert image.read({"body": jpeg}, "image/jpeg")[0]["pixel_values"].shape == (1, 3, 32, 32)  # and it still works


def test_decompression_bomb_is_refused_from_its_header_before_decoding(image, monkeypatch):
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    for width, height in ((20000, 20000), (2001, 2000)):  # 400 MP (over Pillow's own 2x limit), and just over ours
        message = refused(image, {"body": png_header(width, height)}, "image/png")
        assert "pixels" in message and "4,000,000" in message
    assert decoded == []
    assert Image.MAX_IMAGE_PIXELS == 4_000_000  # set explicitly from the contract's max_pixels


def progressive(width: int, height: int, extra_scans: int = 0) -> bytes:
    """A grey progressive JPEG, with its last scan (an AC refinement) repeated `extra_scans` more times before EOI."""
    data = encode(np.full((height, width), 128), "JPEG", progressive=True, quality=50)
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * extra_scans + b"\xff\xd9"


@pytest.fixture
def large(image, monkeypatch):
    """The image model's decoder at the default 40 MP, resizing to its input exactly."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the decoder sets it; the fixture's stays
    section = {**image.image.section, "max_pixels": 40_000_000, "resize_shortest_edge": None, "resize": [32, 32]}
    return preprocess.ImageDecoder(section, image.contract.inputs)


def test_jpeg_scans_are_counted_from_the_markers():
    plain = progressive(64, 48)
    scans = preprocess.jpeg_scans(plain, 1000)
    assert 2 <= scans <= 12 and preprocess.jpeg_scans(progressive(64, 48, 500), 1000) == scans + 500
    assert preprocess.jpeg_scans(progressive(64, 48, 500), 10) == 10  # counting stops at the bound
    assert preprocess.jpeg_scans(encode(np.zeros((8, 8)), "JPEG"), 1000) == 1  # baseline


@pytest.mark.parametrize(
    "extra, message",
    [(10_000, "over 256 scans"), (14, "scans of 36,000,000 pixels")],
    ids=["10,000 scans (731 KB, was 30 s)", "too many for its size"],
)
def test_a_jpeg_of_many_scans_is_refused_before_decoding(large, monkeypatch, extra, message):
    import time

    data = progressive(6000, 6000, extra)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    started = time.perf_counter()
    with pytest.raises(RequestError, match=message):
        large.decode(data)
    assert time.perf_counter() - started < 1.0


def test_a_large_progressive_jpeg_still_decodes_at_reduced_size(large, monkeypatch):
    """Within the bounds it decodes, at 1/8 of its size (libjpeg's DCT scaling): still twice the model's input."""
    import time

    resized = []
    real = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **kw: resized.append(self.size) or real(self, *a, **kw))
    started = time.perf_counter()
    row = large.decode(progressive(6000, 6000))
    assert time.perf_counter() - started < 3.0
    assert row.shape == (3, 32, 32) and resized == [(750, 750)]
    np.testing.assert_allclose(row[:, 16, 16], 128 / 127.5 - 1, atol=0.02)
    small = large.decode(solid(96, 72, fmt="JPEG"))  # a small one is decoded whole, as parity decoded it
    assert small.shape == (3, 32, 32) and resized[-1] == (96, 72)


def test_an_image_too_long_on_a_side_is_refused_from_its_header(large, monkeypatch):
    """1 x 40,000,000 is within 40 MP, but took 2.9 s and 1.8 GB to decode and resize."""
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    for width, height in ((40_000_000, 1), (1, 20_000)):
        with pytest.raises(RequestError, match="at most 16,384 pixels on a side"):
            large.decode(png_header(width, height))


def form(*parts: tuple[str, bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    """A multipart/form-data body of (part headers, data) and its Content-Type."""
    body = b"".join(f"--{boundary}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n" for headers, data in parts)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def file_part(name: str, data: bytes, extra: str = "") -> tuple[str, bytes]:
    return f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"{extra}\r\nContent-Type: image/png', data


def test_multipart_files_by_field_name():
    png, jpeg = solid(4, 4), solid(4, 4, fmt="JPEG")
    body, kind = form(file_part("data", png), ('Content-Disposition: form-data; name="note"', b"text"), file_part("other", jpeg))
    assert preprocess.multipart_files(body, kind) == {"data": png, "other": jpeg}


@pytest.mark.parametrize(
    "parts, message",
    [
        ([file_part("data", b"x", "; p=1" * 100_000)], "does not parse \\(Maximum header size exceeded\\)"),  # was 30 s
        ([file_part("data", b"x", "; p=1" * 17)], "has over 16 parameters"),
        ([file_part(f"f{i}", b"x") for i in range(65)], "over 64 parts"),
        ([file_part("data", b"x", "\r\nX-A: 1" * 8)], "Maximum header count exceeded"),
        ([('Content-Disposition: form-data; name="note"', b"text")], "holds no file"),
    ],
    ids=["100,000 parameters (1 MiB)", "17 parameters", "65 parts", "10 headers", "no file"],
)
def test_multipart_limits_are_checked_as_it_parses(parts, message):
    import time

    body, kind = form(*parts)
    started = time.perf_counter()
    with pytest.raises(RequestError, match=message):
        preprocess.multipart_files(body, kind)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "body, kind, message",
    [
        (b"--x\r\nnot a header\r\n\r\n", "multipart/form-data; boundary=x", "does not parse"),
        (b"", "multipart/form-data", "names no boundary"),
        (b"", "multipart/form-data; boundary=x" + "; p=1" * 17, "Content-Type header has over 16 parameters"),
    ],
)
def test_a_broken_multipart_body_is_a_400(body, kind, message):
    with pytest.raises(RequestError, match=message):
        preprocess.multipart_files(body, kind)


def test_image_model_request_cap_fits_a_photo(specs):
    assert declare(specs["vit_images"])["max_request_bytes"] >= 4 << 20


# --- labels and spec checks ----------------------------------------------------------------


def test_top_labels_are_softmax_scores_best_first_nested_like_the_output():
    names = ("a", "b", "c")
    rows = top_labels(np.array([[0.0, np.log(3.0), 0.0], [2.0, 0.0, 0.0]]), names, 2)
    assert rows[0] == [{"label": "b", "score": pytest.approx(0.6)}, {"label": "a", "score": pytest.approx(0.2)}]
    assert [r["label"] for r in rows[1]] == ["a", "b"]
    tokens = top_labels(np.zeros((2, 4, 3)), names, 5)  # token classification: per row, per token, all 3 classes
    assert len(tokens) == 2 and len(tokens[0]) == 4 and len(tokens[0][0]) == 3


def test_labels_go_beside_the_outputs(specs):
    contract = Contract(declare(specs["vit_images"]))
    answer = contract.to_json({"logits": np.array([[0.0, 5.0, 0.0]], dtype=np.float32)}, single=True)
    assert answer["logits"] == [0.0, 5.0, 0.0] and [x["label"] for x in answer["labels"]] == ["dog", "cat"]


def test_spec_checks_the_real_input_fields(specs, tmp_path):
    import dataclasses

    from pipeline.spec import ImageInput, Labels, validate

    vit, bert = specs["vit_images"], specs["bert_text"]
    where = str(tmp_path / "m.py")
    bad = [
        (dataclasses.replace(vit, labels=Labels("logits", ("a", "b"))), "labels names 2 classes, logits has 3"),
        (dataclasses.replace(vit, labels=Labels("scores", ("a",))), "naming one of the outputs"),
        (dataclasses.replace(vit, image_input=ImageInput("pixel_values", 32, 32, (0.5,) * 3, (0.5,) * 3, crop=(30, 30))), "crop"),
        (dataclasses.replace(vit, image_input=ImageInput("x", 32, 32, (0.5,) * 3, (0.5,) * 3)), "feeds the one input 'x'"),
        (dataclasses.replace(vit, image_input=ImageInput("pixel_values", 32, 32, (0.5,) * 3, (0.0,) * 3)), "std has a 0"),
        (dataclasses.replace(bert, text_input=dataclasses.replace(bert.text_input, tokenizer=tmp_path / "none.json")), "does not exist"),
        (dataclasses.replace(bert, text_input=dataclasses.replace(bert.text_input, max_length=64)), "over max_lengths"),
    ]
    for spec, message in bad:
        with pytest.raises(SpecError, match=message):
            validate(spec, where)


def test_images_per_request_are_bounded_before_decoding(image, monkeypatch):
    monkeypatch.setattr(preprocess.ImageDecoder, "decode", lambda *a: pytest.fail("decoded"))
    many = [base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()] * 400  # 400 x 3 x 32 x 32 is over 1 Mi elements
    assert "elements in this request" in refused(image, {"body": {"image": many}})
