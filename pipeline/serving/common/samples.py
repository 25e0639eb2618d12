"""The request every model answers, and the same tensors in binary: what `serve --on ray`
sends before it counts a server as started, and what the served benchmark and `tune` send.

A model that takes images (a spec's `image_input`) is sent a 640 x 480 JPEG as a raw body,
as `curl -T photo.jpg` sends it; a model that takes texts (`text_input`) a sentence as
`{"text": ...}`; a decoder its example prompt and a few new tokens; any other model its `example_request`, or one row of its tensors, as JSON.
Where the request is an image or a text, the same request preprocessed by the archive's own
reader (`pipeline.serving.common.preprocess`) is also built as an Open Inference Protocol
binary tensor, so the benchmark shows what decoding or tokenizing costs end to end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pipeline.serving.common import oip
from pipeline.serving.common.client import Endpoint
from pipeline.serving.common.contract import Contract, declare
from pipeline.serving.common.preprocess import reader, sample_image
from pipeline.spec import ModelSpec, tokenizer_file

# A photo's size as a phone or a web page sends it, rather than the model's 224 x 224.
IMAGE_SIZE = (640, 480)
SENTENCE = "The service was quick, the food arrived hot, and the staff were friendly; we would come back."


@dataclass(frozen=True)
class Request:
    """One request body, as a client sends it."""

    kind: str  # what it is, for the report: "jpeg 640x480", "text", "json tensor", "binary tensor (oip)"
    body: bytes
    content_type: str
    route: str = "predictions"  # or "infer": the Open Inference Protocol route
    headers: tuple[tuple[str, str], ...] = ()

    def url(self, endpoint: Endpoint) -> str:
        return endpoint.infer_url if self.route == "infer" else endpoint.predictions_url

    def describe(self) -> dict:
        return {"kind": self.kind, "bytes": len(self.body), "content_type": self.content_type, "route": self.route}


def first_row(spec: ModelSpec) -> dict:
    feed = spec.sample_inputs(1, np.random.default_rng(0))
    return {name: value[0].tolist() for name, value in feed.items()}


def sample_requests(spec: ModelSpec) -> tuple[Request, Request | None]:
    """(the request every model answers, the same tensors in binary where that request is an image or a text)."""
    if spec.generation is not None:  # a decoder generates from a prompt: its example asks for a few tokens
        return Request("text generation", json.dumps(spec.request_example()).encode(), "application/json"), None
    read = reader(Contract(declare(spec)), tokenizer_file(spec).read_bytes() if spec.text_input is not None else None)
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
