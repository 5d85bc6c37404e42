"""The FLOP count behind benchmarks/model_throughput.py's MFU, checked by hand and against a real model; its
ragged multi-turn batch."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the benchmark imports its sibling architectures.py
_spec = importlib.util.spec_from_file_location("model_throughput", BENCHMARKS / "model_throughput.py")
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


def test_update_flops_by_hand():
    s = bench.Shape(layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10)
    decoder = 2 * (64 + 64 + 32 + 32 + 384)  # matmul weights without the LM head
    # two trajectories of 3 and 5 tokens (causal attention: token t attends to t tokens), 4 scored tokens
    attention = 4 * 2 * 8 * ((1 + 2 + 3) + (1 + 2 + 3 + 4 + 5))
    forward = 2 * decoder * (3 + 5) + attention + 2 * 8 * 10 * 4
    assert bench.update_flops(s, [3, 5], scored=4) == 3 * forward


def test_multi_turn_batch_is_ragged_within_bounds_with_prompt_and_tool_output_untrained():
    spans = bench.multi_turn_lengths(32, min_len=300, max_len=8000, seed=0)
    lengths = [sum(n for n, _ in s) for s in spans]
    assert min(lengths) >= 300 and max(lengths) <= 8000 and max(lengths) > 4 * min(lengths)
    batch, advantages = bench.ragged_batch(1000, spans, seed=0)
    assert batch.attention_mask.sum(1).tolist() == lengths
    for row, trajectory in enumerate(spans):
        prompt = trajectory[0][0]
        assert not trajectory[0][1] and batch.loss_mask[row, :prompt].sum() == 0
        assert batch.loss_mask[row].sum() == sum(n for n, trained in trajectory if trained) > 0
    assert (advantages[batch.loss_mask == 0] == 0).all()
