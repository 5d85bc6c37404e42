"""The FLOP count behind benchmarks/model_throughput.py's MFU, checked by hand and against a real model."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

_spec = importlib.util.spec_from_file_location(
    "model_throughput", Path(__file__).parents[1] / "benchmarks" / "model_throughput.py"
)
bench = importlib.util.module_from_spec(_spec)
sys.modules["model_throughput"] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)


def test_flops_per_token_by_hand():
    s = bench.Shape(layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10)
    # per layer: q, o 8*8 each; k, v 8*(1*4) each; MLP 3*8*16; plus the LM head 8*10
    params = 2 * (64 + 64 + 32 + 32 + 384) + 80
    assert bench.matmul_params(s) == params
    forward = 2 * params + 4 * 2 * 8 * 100  # attention: 2 layers, hidden 8, context 100
    assert bench.flops_per_token(s, 100, training=False) == forward
    assert bench.flops_per_token(s, 100, training=True) == 3 * forward


@pytest.mark.parametrize("tied", [True, False])
def test_matmul_params_equal_the_linear_weights_of_a_qwen2_model(tied):
    arch = dict(bench.ARCHITECTURES["small"], vocab_size=1000, tie_word_embeddings=tied, num_hidden_layers=2)
    model = Qwen2ForCausalLM(Qwen2Config(**arch))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert bench.matmul_params(bench.Shape.of(model.config)) == linear


def test_published_architectures_have_their_parameter_counts():
    counts = {}
    for name in ("qwen2.5-1.5b", "qwen2.5-7b"):
        with torch.device("meta"):
            model = Qwen2ForCausalLM(Qwen2Config(**bench.ARCHITECTURES[name]))
        counts[name] = sum(p.numel() for p in model.parameters())
    assert 1.50e9 < counts["qwen2.5-1.5b"] < 1.56e9  # Qwen2.5-1.5B: 1.54B
    assert 7.5e9 < counts["qwen2.5-7b"] < 7.7e9  # Qwen2.5-7B: 7.61B
