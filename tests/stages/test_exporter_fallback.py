"""Swin (transformers' SwinForImageClassification, a small config): torch.export's exporter
cannot view its windows under a symbolic batch (pytorch/pytorch#141107), and the
TorchScript-based exporter takes over without being asked, recorded and held to eager."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import SwinConfig, SwinForImageClassification, ViTImageProcessorPil

from pipeline.artifacts.manifest import Manifest
from pipeline.settings import Settings
from pipeline.stages import STAGES


def build_swin(folder: Path) -> None:
    """A small Swin checkpoint (folder/swin) through every stage in folder, each stage's summary in folder/summaries.json:
    the session's swin_chain (tests/background.py)."""
    torch.manual_seed(0)
    checkpoint = folder / "swin"
    config = SwinConfig(image_size=32, patch_size=4, embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=3)
    SwinForImageClassification(config).save_pretrained(checkpoint)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(checkpoint)
    settings = Settings(model=f"hf:{checkpoint}", root=folder, parity_batch_sizes=(1, 2, 7))
    (folder / "summaries.json").write_text(json.dumps([stage(settings).summary for stage in STAGES.values()]))


@pytest.fixture(scope="module")
def swin_chain(builds) -> Path:
    return builds.folder("swin_chain")


@pytest.mark.slow
def test_swin_is_exported_by_the_fallback_without_being_asked(swin_chain):
    root, summaries = swin_chain, json.loads((swin_chain / "summaries.json").read_text())
    onnx = Manifest(root.resolve(), "swin").records["onnx"].details
    assert onnx["exporter"].startswith("TorchScript-based") and "Cannot view a tensor" in onnx["dynamo_failure"]
    assert "made by the TorchScript-based exporter, because" in summaries[2]
    assert Manifest(root.resolve(), "swin").records["parity"].details["passed"]
