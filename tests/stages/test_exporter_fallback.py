"""Swin (transformers' SwinForImageClassification, a small config): torch.export's exporter
cannot view its windows under a symbolic batch (pytorch/pytorch#141107), and the
TorchScript-based exporter takes over without being asked, recorded and held to eager."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import SwinConfig, SwinForImageClassification, ViTImageProcessorPil

from pipeline.artifacts.manifest import Manifest
from pipeline.settings import Settings
from pipeline.stages import STAGES


@pytest.mark.slow
def test_swin_is_exported_by_the_fallback_without_being_asked(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "swin"
    config = SwinConfig(image_size=32, patch_size=4, embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=3)
    SwinForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    settings = Settings(model=f"hf:{folder}", root=tmp_path, parity_batch_sizes=(1, 2, 7))
    results = [stage(settings) for stage in STAGES.values()]
    onnx = Manifest(tmp_path.resolve(), "swin").records["onnx"].details
    assert onnx["exporter"].startswith("TorchScript-based") and "Cannot view a tensor" in onnx["dynamo_failure"]
    assert "made by the TorchScript-based exporter, because" in results[2].summary
    assert Manifest(tmp_path.resolve(), "swin").records["parity"].details["passed"]
