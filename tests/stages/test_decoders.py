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


@pytest.mark.slow
@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_a_library_decoder_traces_exports_and_passes_parity(tmp_path, decoder):
    torch.manual_seed(0)
    folder = save(DECODERS[decoder](), tmp_path / decoder, tokenizer(None))
    # One logits pass (causal-lm): the task that makes TorchScript; text-generation serves the graph with its cache.
    manifest = run_chain(f"hf:{folder}#task=causal-lm", tmp_path)
    ts = manifest.records["torchscript"]
    assert ts.not_made is None and ts.details["checked_by"] == "outputs"
    assert any("transformers/" in place for place in ts.details["shape_branches"])
    parity = manifest.records["parity"].details
    assert parity["passed"] and {"torchscript", "onnxruntime-cpu"} <= set(parity["engines"])
    assert "torch.export-based" in manifest.records["onnx"].details["exporter"]


@pytest.mark.slow
def test_gpt2_without_a_mask_traces_and_passes_parity(tmp_path):
    manifest = run_chain(str(REPO / "tests" / "fixtures" / "trace_gpt2_ids.py"), tmp_path)
    assert manifest.records["torchscript"].details["checked_by"] == "outputs"
    assert manifest.records["parity"].details["passed"]
