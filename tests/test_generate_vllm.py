"""The vLLM backend's adapter, against a stand-in of the vllm API (vLLM itself needs a GPU; not in CI).

What is checked here is our side of the contract: prompts go in as token ids, sampled ids come back
untouched, finish reasons follow the closed-block rule, seeds differ per row, a missing vllm gives a clear
error, and weight sync hands the engine plain HF names (LoRA merged).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from gtpo.generate_vllm import STOP_STRINGS, VLLMSampler
from gtpo.policy import inference_weights


@dataclass
class FakeLogprob:
    logprob: float


@dataclass
class FakeCompletion:
    token_ids: list[int]
    logprobs: list[dict[int, FakeLogprob]]
    finish_reason: str


@dataclass
class FakeLLM:
    """Replies with pre-written texts, recording what it was asked."""

    tokenizer: object
    replies: list[tuple[str, str]]
    calls: list = field(default_factory=list)
    loaded: list = field(default_factory=list)

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append((prompts, params))
        outs = []
        for text, reason in self.replies[: len(prompts)]:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if reason == "eos":
                ids.append(self.tokenizer.eos_token_id)
            lps = [{t: FakeLogprob(-0.5)} for t in ids]
            finish = "stop" if reason != "len" else "length"
            outs.append(types.SimpleNamespace(outputs=[FakeCompletion(ids, lps, finish)]))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    module.LLM = None
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_missing_vllm_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"gtpo\[vllm\].*--rollout.backend hf"):
        VLLMSampler("some/model")


def test_samples_keep_ids_and_finish_reasons(fake_vllm, tiny_tokenizer):
    replies = [
        ("Let me compute.\n```python\nprint(1)\n```\n", "stop"),
        ("\\boxed{7}", "eos"),
        ("1234", "len"),
    ]
    llm = FakeLLM(tiny_tokenizer, replies)
    sampler = VLLMSampler("unused", llm=llm)
    contexts = [[5, 6, 7], [8, 9], [10]]
    samples = sampler.generate(contexts, [64, 64, 64], temperature=1.0, seed=3)

    prompts, params = llm.calls[0]
    assert [p["prompt_token_ids"] for p in prompts] == contexts
    assert [p.seed for p in params] == [3, 4, 5]
    assert all(p.stop == list(STOP_STRINGS) and p.include_stop_str_in_output for p in params)
    assert [s.finish for s in samples] == ["stop", "eos", "length"]
    assert samples[0].token_ids == tiny_tokenizer.encode(replies[0][0], add_special_tokens=False)
    assert samples[1].token_ids[-1] == tiny_tokenizer.eos_token_id
    assert samples[0].logprobs == [-0.5] * len(samples[0].token_ids)


def test_stray_fence_is_not_a_tool_call(fake_vllm, tiny_tokenizer):
    """A fence that closes no python block stops vLLM but must not be run as code."""
    llm = FakeLLM(tiny_tokenizer, [("some text ```\n", "stop")])
    (sample,) = VLLMSampler("unused", llm=llm).generate([[5]], [64], temperature=1.0)
    assert sample.finish == "eos"


def test_opening_fence_does_not_match_stop_strings():
    assert not any(stop in "Now:\n```python\nx = 1\n" for stop in STOP_STRINGS)
    assert any(stop in "```python\nx = 1\n```\n" for stop in STOP_STRINGS)


def test_sync_weights_reaches_engine_model(fake_vllm, tiny_tokenizer, tiny_model):
    class EngineModel:
        def __init__(self):
            self.weights = None

        def load_weights(self, weights):
            self.weights = dict(weights)

    engine_model = EngineModel()
    llm = FakeLLM(tiny_tokenizer, [])
    llm.llm_engine = types.SimpleNamespace(
        model_executor=types.SimpleNamespace(
            driver_worker=types.SimpleNamespace(
                worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=engine_model))
            )
        )
    )
    VLLMSampler("unused", llm=llm).sync_weights(inference_weights(tiny_model).items())
    assert set(engine_model.weights) == set(tiny_model.state_dict())


def test_sync_without_reachable_engine_explains(fake_vllm, tiny_tokenizer, tiny_model):
    sampler = VLLMSampler("unused", llm=FakeLLM(tiny_tokenizer, []))
    with pytest.raises(RuntimeError, match="VLLM_ENABLE_V1_MULTIPROCESSING=0"):
        sampler.sync_weights(inference_weights(tiny_model).items())


def test_lora_weights_are_merged_under_base_names(tiny_tokenizer):
    peft = pytest.importorskip("peft")
    from conftest import build_model

    base = build_model(tiny_tokenizer, seed=1)
    names = set(base.state_dict())
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_()  # a non-zero adapter, so merging changes the weights
    weights = inference_weights(lora)
    assert set(weights) == names
    plain = build_model(tiny_tokenizer, seed=2)
    plain.load_state_dict(weights)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, lora(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    # the adapter is unmerged again: training goes on from the same parameters
    assert any("lora_A" in n for n, _ in lora.named_parameters())
