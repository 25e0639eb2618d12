"""`serve --on ray` starts a Hugging Face checkpoint folder (`hf:PATH`) as TorchServe does: a
ViT that takes image files and a BERT that takes texts, neither with a JSON example request.

The real thing: the command line, a real local Ray cluster, real HTTP, a JPEG file's bytes and
sentences in; each answer checked against the eager model run on the same preprocessed tensors.
"""

from __future__ import annotations

import json
import secrets

import numpy as np
import pytest

from pipeline import cli
from pipeline.artifacts import checkpoint
from pipeline.artifacts.manifest import Manifest
from pipeline.models import load_spec
from pipeline.serving.common import preprocess
from pipeline.serving.common.contract import Contract, declare
from pipeline.serving.ray import server as ray_server
from pipeline.settings import Layout
from pipeline.spec import tokenizer_file
from tests.helpers import copy_root
from tests.serving.real_models import assert_close, eager, expected_labels

pytestmark = pytest.mark.slow
pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")
pytest.importorskip("transformers")

from pipeline.models import hf_checkpoint  # noqa: E402  (it needs transformers)

CHECKPOINTS = ("sentiment", "flowers")


@pytest.fixture(scope="module")
def served(hf_chains, tmp_path_factory):
    """name -> (model string, spec, eager model, RayInfo): both checkpoints, built in one project, served on Ray from a copy of it."""
    folders, built = hf_chains
    root = tmp_path_factory.mktemp("ray-hf") / "project"
    copy_root(built, root)
    models = {name: f"hf:{folders[name]}" for name in CHECKPOINTS}
    started: dict[str, tuple] = {}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOME", str(tmp_path_factory.mktemp("home")))  # Ray writes nothing to ~/.ray
        env.setenv("RAY_AUTH_MODE", "disabled")  # the launcher turns token mode on whatever this says
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        try:
            for name, model in models.items():
                spec = load_spec(model)
                code = cli.main(["serve", "--on", "ray", "--model", model, "--root", str(root), "--ports", "auto"])
                info = ray_server.load_info(Layout(root.resolve(), spec.name))
                assert code == 0 and info is not None, f"serve --on ray {model} exited {code}"
                net, _ = checkpoint.load_model(Manifest(root.resolve(), spec.name), spec, "test")
                started[name] = (model, spec, net, info)
            yield started
        finally:
            for model, _, _, info in started.values():
                assert cli.main(["stop", "--on", "ray", "--model", model, "--root", str(root)]) == 0
                assert info.processes() == [], "Ray processes left behind"


def assert_answer(spec, net, answer: dict, feed: dict[str, np.ndarray]) -> None:
    """The answer's logits within the spec's tolerance of eager's, and eager's top labels, best first."""
    want = eager(net, spec, feed)["logits"]
    assert_close(spec, np.atleast_2d(answer["logits"]), want)
    labels = answer["labels"] if isinstance(answer["labels"][0], list) else [answer["labels"]]
    assert [[x["label"] for x in row] for row in labels] == expected_labels(spec, want)


def test_an_image_checkpoint_starts_and_answers_a_jpeg_file(served, tmp_path):
    from PIL import Image

    _, spec, net, info = served["flowers"]
    assert spec.example_request is None  # what the start-up check used to send, as {}: a 400, so never started
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo, "JPEG")
    jpeg = photo.read_bytes()
    status, answer = info.predict(jpeg, content_type="image/jpeg")
    assert status == 200, answer
    feed, _ = preprocess.reader(Contract(declare(spec))).read({"body": jpeg}, "image/jpeg")
    assert_answer(spec, net, json.loads(answer), feed)


def test_a_text_checkpoint_starts_and_answers_sentences(served):
    _, spec, net, info = served["sentiment"]
    texts = list(hf_checkpoint.SENTENCES[:2])
    status, answer = info.predict(json.dumps({"text": texts}).encode())
    assert status == 200, answer
    reader = preprocess.reader(Contract(declare(spec)), tokenizer_file(spec).read_bytes())
    feed, _ = reader.read({"body": {"text": texts}})
    assert_answer(spec, net, json.loads(answer), feed)
