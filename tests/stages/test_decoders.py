"""Library decoders through the chain as one logits pass (causal-lm): Llama (RoPE, grouped-query
attention), Qwen2 (tied embeddings) and GPT-2 without a mask, at small configs of transformers'
classes. Generation with the cache is tests/generation's.

transformers' attention and mask code takes other paths at batch 1 and length 1, so the
trace checks' graphs differ; the traced module must still answer every check input as
eager does, and parity then holds TorchScript and ONNX to eager.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from pipeline.artifacts.manifest import Manifest
from pipeline.models import load_spec
from pipeline.settings import Settings
from pipeline.stages import STAGES
from tests.helpers import REPO
from tests.test_hf_checkpoint import save, tokenizer

SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention: two query heads share each key/value head
    "vocab_size": 100,
    "max_position_embeddings": 64,
    "bos_token_id": 2,
    "eos_token_id": 3,
}
DECODERS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SMALL)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=True)),
}


def run_chain(model: str, root: Path) -> Manifest:
    settings = Settings(model=model, root=root, parity_batch_sizes=(1, 2, 7), require_torchscript=True)
    for stage in STAGES.values():
        stage(settings)
    return Manifest(root.resolve(), load_spec(model).name)


def model_of(folder: Path, decoder: str) -> str:
    return str(REPO / "tests" / "fixtures" / "trace_gpt2_ids.py") if decoder == "gpt2_ids" else f"hf:{folder / decoder}#task=causal-lm"


def build_library_decoders(folder: Path) -> None:
    """Each decoder's checkpoint in folder/<name> (but gpt2_ids, a model file) through the chain in folder/<name>-project:
    the session's library_decoders (tests/background.py)."""
    for decoder in (*sorted(DECODERS), "gpt2_ids"):
        if decoder in DECODERS:
            torch.manual_seed(0)
            save(DECODERS[decoder](), folder / decoder, tokenizer(None))
        run_chain(model_of(folder, decoder), folder / f"{decoder}-project")


def built_chain(folder: Path, decoder: str) -> Manifest:
    model = model_of(folder, decoder)
    return Manifest((folder / f"{decoder}-project").resolve(), load_spec(model).name)


@pytest.mark.slow
@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_a_library_decoder_traces_exports_and_passes_parity(library_decoders, decoder):
    # One logits pass (causal-lm): the task that makes TorchScript; text-generation serves the graph with its cache.
    manifest = built_chain(library_decoders, decoder)
    ts = manifest.records["torchscript"]
    assert ts.not_made is None and ts.details["checked_by"] == "outputs"
    assert any("transformers/" in place for place in ts.details["shape_branches"])
    parity = manifest.records["parity"].details
    assert parity["passed"] and {"torchscript", "onnxruntime-cpu"} <= set(parity["engines"])
    assert "torch.export-based" in manifest.records["onnx"].details["exporter"]


@pytest.mark.slow
def test_gpt2_without_a_mask_traces_and_passes_parity(library_decoders):
    manifest = built_chain(library_decoders, "gpt2_ids")
    assert manifest.records["torchscript"].details["checked_by"] == "outputs"
    assert manifest.records["parity"].details["passed"]
