"""The shipped tiny model: a standard transformers checkpoint that the project's own command rebuilds."""

from __future__ import annotations

import json

import pytest
import torch

from gtpo.model.policy import prompt_ids
from gtpo.tasks.arith import SYSTEM_PROMPT, heldout_problems
from gtpo.tasks.traces import make_traces
from gtpo.tiny import DEFAULT_MODEL_DIR
from gtpo.tiny.build import RECIPES, build, measure, tokenize_trace
from gtpo.tiny.model import new_model


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


# arith by default; the other two recipes (about 20 s each) under -m slow
@pytest.mark.parametrize(
    "task", ["arith", pytest.param("multistep", marks=pytest.mark.slow), pytest.param("relay", marks=pytest.mark.slow)]
)
def test_rebuild_command_writes_the_model_it_trained_and_measured(tmp_path, task):
    """The folder loads with plain transformers; its weights moved from where the warm start began (a new model,
    or the shipped arithmetic one it continues); measuring it again gives the numbers build_info records."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = build(tmp_path, steps=3, seed=1, traces=64, measure_n=4, task=task)
    assert (info["steps"], info["task"], info["traces"]) == (3, task, 64)
    assert info == json.loads((tmp_path / "build_info.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    if RECIPES[task].init_from is None:
        start = new_model(tokenizer, seed=1)  # build's own start for this seed: same tokenizer, same draw
    else:  # continued from the shipped arithmetic model: same tokenizer
        start = AutoModelForCausalLM.from_pretrained(RECIPES[task].init_from)
        assert len(tokenizer) == len(AutoTokenizer.from_pretrained(RECIPES[task].init_from))
    assert start.model.embed_tokens.weight.shape == model.model.embed_tokens.weight.shape
    assert not torch.equal(model.model.embed_tokens.weight, start.model.embed_tokens.weight)
    again = measure(model, tokenizer, n=4, task=task)
    recorded = {key: info[f"temp1_{key}"] for key in ("heldout_accuracy", "tool_call_rate", "turns_mean")}
    assert {key: again[key] for key in recorded} == recorded
