"""The shipped tiny model: a standard transformers checkpoint that the project's own command rebuilds."""

from __future__ import annotations

import json

import pytest
import torch

from gtpo.model.policy import prompt_ids
from gtpo.tasks.arith import SYSTEM_PROMPT, heldout_problems
from gtpo.tasks.traces import make_traces
from gtpo.tiny import DEFAULT_MODEL_DIR
from gtpo.tiny.build import build, tokenize_trace


def test_shipped_asset_loads_with_plain_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR)
    ids = prompt_ids(tokenizer, SYSTEM_PROMPT, heldout_problems()[0].question)
    text = tokenizer.decode(ids)
    assert SYSTEM_PROMPT in text and text.rstrip().endswith("assistant")
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer)) and torch.isfinite(logits).all()
    info = json.loads((DEFAULT_MODEL_DIR / "build_info.json").read_text())
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


def test_digits_are_single_tokens():
    """Copying numbers digit by digit is what a 1M-parameter model can learn; merged digits it cannot."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode("123456 * 789", add_special_tokens=False))
    assert all(len(p.strip("Ġ")) <= 1 for p in pieces if any(c.isdigit() for c in p))


def test_trace_tokenization_trains_only_model_segments(tiny_tokenizer):
    trace = make_traces(1, seed=5)[0]
    ids, mask = tokenize_trace(tiny_tokenizer, trace)
    trained = tiny_tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    model_text = "".join(text for kind, text in trace.segments if kind == "model")
    assert trained == model_text + tiny_tokenizer.eos_token
    assert "```output" not in trained


@pytest.mark.parametrize("task", ["arith", "multistep"])
def test_rebuild_command_writes_a_loadable_model(tmp_path, task):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = build(tmp_path, steps=3, seed=1, traces=64, measure_n=4, task=task)
    assert info["steps"] == 3 and info["task"] == task and 0.0 <= info["temp1_heldout_accuracy"] <= 1.0
    AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    if task == "multistep":  # continued from the shipped arithmetic model: same tokenizer, moved weights
        start = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR)
        assert len(AutoTokenizer.from_pretrained(tmp_path)) == len(AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR))
        assert not torch.equal(model.model.embed_tokens.weight, start.model.embed_tokens.weight)
