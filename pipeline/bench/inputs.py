"""What the benchmark feeds: the in-process feed at the lengths asked for, and what the served
benchmark sends (a model's real input where it takes one, and the same tensor in binary).

In process, every engine gets the spec's seeded `sample_inputs`; with `--length seq=512` each
input's `seq` axis is stretched to 512 first (`at_lengths`).

A model that takes images (a spec's `image_input`) is sent a 640 x 480 JPEG as a raw body,
as `curl -T photo.jpg` sends it; a model that takes texts (`text_input`) a sentence as
`{"text": ...}`; any other model one row of its tensors as JSON. Where the request is an
image or a text, the same request preprocessed by the archive's own reader
(`pipeline.serving.common.preprocess`) is also sent as an Open Inference Protocol binary tensor,
so the report shows what decoding or tokenizing costs end to end, on the same server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.errors import PipelineError
from pipeline.serving.common import oip
from pipeline.serving.common.contract import Contract, declare
from pipeline.serving.common.preprocess import reader, sample_image

# A photo's size as a phone or a web page sends it, rather than the model's 224 x 224.
IMAGE_SIZE = (640, 480)
SENTENCE = "The service was quick, the food arrived hot, and the staff were friendly; we would come back."


@dataclass(frozen=True)
class Request:
    """One request body, as the load generator sends it."""

    kind: str  # what it is, for the report: "jpeg 640x480", "text", "json tensor", "binary tensor (oip)"
    body: bytes
    content_type: str
    route: str = "predictions"  # or "infer": the Open Inference Protocol route
    headers: tuple[tuple[str, str], ...] = ()

    def url(self, endpoint) -> str:
        return endpoint.infer_url if self.route == "infer" else endpoint.predictions_url

    def describe(self) -> dict:
        return {"kind": self.kind, "bytes": len(self.body), "content_type": self.content_type, "route": self.route}


def at_lengths(spec, feed: Mapping[str, np.ndarray], lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """`feed` with every input axis named in `lengths` stretched (or cut) to that length, by repeating
    its own values along the axis: token ids stay ids of the vocabulary, a mask of ones stays ones.
    `check_lengths` has refused an axis the inputs lack, and a length past the model's."""
    out = {}
    for t in spec.inputs:
        value = np.asarray(feed[t.name])
        for axis, name in t.dynamic_axes().items():
            if name in lengths:
                value = np.take(value, np.arange(lengths[name]) % value.shape[axis], axis=axis)
        out[t.name] = np.ascontiguousarray(value)
    return out


def check_lengths(spec, lengths: Mapping[str, int], stage: str) -> None:
    """Refuse a length for an axis no input has (or the batch axis), or one over the model's maximum."""
    axes = {name for t in spec.inputs for axis, name in t.dynamic_axes().items() if axis > 0}
    limits = Contract(declare(spec)).max_lengths
    for name, length in lengths.items():
        if name not in axes:
            raise PipelineError(
                stage,
                f"--length {name}={length}: {spec.name}'s inputs have no axis {name!r} besides the batch",
                f"name one of {sorted(axes)}" if axes else f"{spec.name} has no dynamic axis but the batch; drop --length",
            )
        if not 1 <= length <= limits.get(name, length):
            raise PipelineError(
                stage,
                f"--length {name}={length} is outside 1..{limits.get(name)}, what {spec.name} takes on that axis",
                f"use at most {limits.get(name)} (the model's max_lengths)",
            )


def first_row(spec) -> dict:
    feed = spec.sample_inputs(1, np.random.default_rng(0))
    return {name: value[0].tolist() for name, value in feed.items()}


def requests(spec, contract: Contract, tokenizer_json: bytes | None) -> tuple[Request, Request | None]:
    """(the request every served run sends, the same tensors in binary where that request is an image or a text)."""
    read = reader(contract, tokenizer_json)
    if read.image is not None:
        width, height = IMAGE_SIZE
        jpeg = sample_image(np.random.default_rng(0), width, height)
        primary = Request(f"jpeg {width}x{height}", jpeg, "image/jpeg")
        feed, _ = read.read({"body": jpeg}, primary.content_type)
    elif read.text is not None:
        text = (spec.example_request or {}).get("text", SENTENCE)
        primary = Request("text", json.dumps({"text": text}).encode(), "application/json")
        feed, _ = read.read({"body": {"text": text}}, primary.content_type)
    else:
        body = spec.example_request or first_row(spec)
        return Request("json tensor", json.dumps(body).encode(), "application/json"), None
    data, header_length = oip.encode_request(feed)
    binary = Request("binary tensor (oip)", data, "application/octet-stream", "infer", ((oip.HEADER_LENGTH, str(header_length)),))
    return primary, binary
