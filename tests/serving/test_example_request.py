"""What `python -m pipeline serve` prints to try the endpoint: a pasteable command, whatever the example's size."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

import pytest

from pipeline import cli
from pipeline.serving.torchserve import server

IMAGE_MODEL = """
import numpy as np
from pipeline.spec import ModelSpec, TensorSpec, TrainResult

SPEC = ModelSpec(
    name="image_model",
    inputs=(TensorSpec("image", "float32", ("batch", 3, 64, 64)),),
    outputs=(TensorSpec("logits", "float32", ("batch", 10)),),
    build=lambda args: None,
    train=lambda seed: TrainResult({}, {}, {}),
    sample_inputs=lambda batch, rng: {"image": np.zeros((batch, 3, 64, 64), np.float32)},
    example_request={"image": np.zeros((3, 64, 64)).tolist()},
)
"""


@dataclass(frozen=True)
class Started(server.ServerInfo):
    """A server that `serve` was told had started (this test runs no TorchServe)."""

    def workers(self) -> list[dict]:
        return [{"pid": self.pid, "gpu": False}]


@pytest.fixture
def serve(tmp_path, monkeypatch, capsys):
    def run(model: str) -> tuple[list[str], str]:
        def start(settings, **kw):
            folder = tmp_path / "run" / "m"
            folder.mkdir(parents=True, exist_ok=True)
            return Started("m", 1, str(folder), "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3", {})

        monkeypatch.setattr(server, "start", start)
        monkeypatch.chdir(tmp_path)
        assert cli.main(["serve", "--model", model, "--root", str(tmp_path)]) == 0
        [line] = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("try")]
        return shlex.split(line.split("try", 1)[1]), (tmp_path / "run" / "m" / "example_request.json").read_text()

    return run


def test_a_small_example_is_printed_inline(serve):
    words, written = serve("simple_nn")
    assert words[words.index("-d") + 1] == '{"x": 5.0}' == written


def test_a_large_example_is_sent_from_its_file(serve, tmp_path):
    """A 224 x 224 image was a 754 KB argument, over what a shell takes: the command reads the file instead."""
    model = tmp_path / "image_model.py"
    model.write_text(IMAGE_MODEL)
    words, written = serve(str(model))
    assert "-d" not in words and words[words.index("--data-binary") + 1] == "@run/m/example_request.json"
    assert len(written) > 4096 and json.loads(written)["image"][0][0][:2] == [0.0, 0.0]
