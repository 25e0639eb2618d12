"""The tests' models that take texts and images (tests/fixtures/bert_text.py, vit_images.py), in a project folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from pipeline.settings import Settings
from pipeline.spec import ModelSpec
from pipeline.stages import run_all
from tests.fixtures.bert_text import write_tokenizer
from tests.helpers import REPO, copy_root

MODELS = ("bert_text", "vit_images")


def model_files(folder: Path) -> dict[str, Path]:
    """Both model files copied into `folder`, the text model's tokenizer.json written beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    paths = {}
    for name in MODELS:
        paths[name] = folder / f"{name}.py"
        shutil.copyfile(REPO / "tests" / "fixtures" / f"{name}.py", paths[name])
    return paths


def settings(root: Path, path: Path) -> Settings:
    return Settings(model=str(path), root=root, parity_batch_sizes=(1, 2), pt2=False)


def build(root: Path) -> None:
    """Both models through the whole chain in one project at `root`, their files in root/models."""
    for path in model_files(root / "models").values():
        run_all(settings(root, path))


def copy(built: Path, root: Path) -> dict[str, Settings]:
    """A private copy at `root` of a project `build` made, free to write into: each model's Settings there.

    The model files travel with it and keep their hashes, so every stage there is up to date."""
    copy_root(built, root)
    return {name: settings(root, root / "models" / f"{name}.py") for name in MODELS}


def eager(model, spec: ModelSpec, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = model(*[torch.from_numpy(feed[t.name]) for t in spec.inputs])
    return {t.name: v.numpy() for t, v in zip(spec.outputs, out)}


def assert_close(spec: ModelSpec, got, want: np.ndarray) -> None:
    """Within the spec's parity tolerance, as parity's bound reads it."""
    got = np.asarray(got, dtype=np.float64)
    tol = spec.tolerance
    bound = tol.atol + tol.rtol * np.abs(want) + tol.scaled * float(np.abs(want).max())
    assert got.shape == want.shape and np.all(np.abs(got - want) <= bound), f"max abs error {np.abs(got - want).max():.3g}"


def expected_labels(spec: ModelSpec, logits: np.ndarray) -> list[list[str]]:
    """Each row's top-k class names, best first, from eager's logits."""
    assert spec.labels is not None
    order = np.argsort(-logits, axis=-1)[:, : spec.labels.top_k]
    return [[spec.labels.names[i] for i in row] for row in order]
