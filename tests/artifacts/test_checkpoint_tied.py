"""Tied and shared weights save and load as real models have them (GPT-2 ties its head to its embedding)."""

import dataclasses

import pytest
import torch

from pipeline.artifacts import checkpoint
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import CHECKPOINT
from pipeline.errors import PipelineError
from pipeline.models import load_spec


class TiedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied, as transformers' tie_weights() does


def _saved(tmp_path, state):
    spec = dataclasses.replace(load_spec("simple_nn"), name="tied", build=lambda args: TiedLM())
    path = tmp_path / "artifacts" / "tied" / "checkpoint.safetensors"
    checkpoint.save(path, state, "tied", {})
    manifest = Manifest(tmp_path, "tied")
    manifest.record(CHECKPOINT, path, "train", {}, {}, 0.0)
    return checkpoint.load_model(manifest, spec, "test")


def test_tied_weights_save_once_and_are_tied_after_loading(tmp_path):
    torch.manual_seed(0)
    trained = TiedLM()
    model, _ = _saved(tmp_path, trained.state_dict())
    assert model.head.weight is model.embed.weight
    assert torch.equal(model.embed.weight, trained.embed.weight)


def test_an_overlapping_view_is_written_as_its_own_values(tmp_path):
    trained = TiedLM()
    state = {**trained.state_dict(), "extra": trained.embed.weight[:2]}
    tensors, aliases = checkpoint.untie(state, "tied")
    assert aliases == {"head.weight": "embed.weight"}
    assert torch.equal(tensors["extra"], trained.embed.weight[:2])
    assert tensors["extra"].untyped_storage().data_ptr() != trained.embed.weight.untyped_storage().data_ptr()


def test_what_a_checkpoint_cannot_hold_is_a_train_error(tmp_path):
    with pytest.raises(PipelineError, match=r"\[train\] m: the state_dict entry 'step' is a int, not a tensor"):
        checkpoint.save(tmp_path / "c.safetensors", {"step": 3}, "m", {})
    with pytest.raises(PipelineError, match=r"\[train\] m: model_args cannot be written as JSON"):
        checkpoint.save(tmp_path / "c.safetensors", {"w": torch.zeros(2)}, "m", {"dtype": torch.float32})
    assert not (tmp_path / "c.safetensors").exists()


def test_a_checkpoint_whose_tensor_differs_from_the_model_is_refused_naming_it(tmp_path):
    from pipeline.errors import IntegrityError

    trained = TiedLM()
    state = {**trained.state_dict(), "embed.weight": torch.zeros(10, 4, dtype=torch.float64)}
    with pytest.raises(IntegrityError, match=r"embed.weight is F64 \[10, 4\] in the checkpoint, torch.float32 \[10, 4\] in the model"):
        _saved(tmp_path, state)
