"""The generation engine against the reference sampler, the trainer's log-probs, and its own invariants.

The reference is ``HFSampler`` (the plain transformers loop): same greedy tokens, same stop decisions, same
log-probs. Sampling is checked against the softmax by counting; the streaming rollout against the
turn-by-turn one on the same model and the same tool outputs.
"""

from __future__ import annotations

import random
import re
import time

import pytest
import torch

from gtpo.envs.python_tool import python_tool_envs
from gtpo.generation.engine import EngineOptions, EngineSampler, GenerationEngine
from gtpo.generation.engine.sampling import counter_uniform, sample_tokens
from gtpo.generation.hf import HFSampler
from gtpo.model.policy import load_policy, prompt_ids, token_logprobs
from gtpo.rollout.episode import rollout
from gtpo.rollout.spec import EpisodeSpec
from gtpo.tasks.arith import SYSTEM_PROMPT, heldout_problems
from gtpo.tiny import DEFAULT_MODEL_DIR
from gtpo.tools import format_tool_output, has_closed_code_block
from gtpo.types import ExecResult


@pytest.fixture(scope="module")
def shipped():
    """The shipped tiny model: it writes code blocks, answers and EOS, so every stop path is exercised."""
    model, tokenizer = load_policy(str(DEFAULT_MODEL_DIR))
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def contexts(shipped):
    """Six first-turn prompts (the model writes code) and six second turns after the right tool output
    (the model answers and ends with EOS)."""
    model, tokenizer = shipped
    problems = heldout_problems()[:12]
    prompts = [prompt_ids(tokenizer, SYSTEM_PROMPT, p.question) for p in problems]
    firsts = HFSampler(model, tokenizer).generate(prompts[6:], [96] * 6, temperature=0.0)
    seconds = [
        prompt + first.token_ids + tokenizer.encode(format_tool_output(p.answer), add_special_tokens=False)
        for prompt, first, p in zip(prompts[6:], firsts, problems[6:], strict=True)
    ]
    return prompts[:6] + seconds


def _engine(shipped, **options) -> EngineSampler:
    model, tokenizer = shipped
    return EngineSampler(model, tokenizer, EngineOptions(**{"slots": 16, "max_len": 512, "chunk": 8} | options))


def _recomputed(model, context, sample, temperature):
    ids = torch.tensor([list(context) + sample.token_ids])
    logp, _ = token_logprobs(model, ids, torch.ones_like(ids), temperature)
    return logp[0, len(context) :]


@pytest.mark.parametrize(("slots", "chunk", "static"), [(16, 8, False), (5, 1, False), (3, 5, True), (16, 4, True)])
def test_greedy_equals_reference_sampler(shipped, contexts, slots, chunk, static):
    """``static``: the CUDA-graph code path (bucketed slot prefixes, cache read in place), run eagerly."""
    model, tokenizer = shipped
    caps = [64] * (len(contexts) - 2) + [5, 9]  # the last two hit their cap
    reference = HFSampler(model, tokenizer).generate(contexts, caps, temperature=0.0)
    engine = _engine(shipped, slots=slots, chunk=chunk, static_shapes=static)
    got = engine.generate(contexts, caps, temperature=0.0)
    assert [s.token_ids for s in got] == [s.token_ids for s in reference]
    assert [s.finish for s in got] == [s.finish for s in reference]
    assert {s.finish for s in got} == {"stop", "eos", "length"}  # every stop path was exercised
    for a, b in zip(got, reference, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
def test_sampled_logprobs_equal_trainer_recomputation(shipped, contexts, temperature, top_p):
    model, _ = shipped
    samples = _engine(shipped).generate(contexts, [64] * len(contexts), temperature=temperature, top_p=top_p, seed=1)
    worst = 0.0
    for context, sample in zip(contexts, samples, strict=True):
        recomputed = _recomputed(model, context, sample, temperature)
        worst = max(worst, (recomputed - torch.tensor(sample.logprobs)).abs().max().item())
    assert worst < 1e-4  # float32 on CPU: measured ~5e-6


def test_stop_is_at_the_closing_fence(shipped, contexts):
    _, tokenizer = shipped
    samples = _engine(shipped).generate(contexts, [96] * len(contexts), temperature=1.0, seed=5)
    stops = [s for s in samples if s.finish == "stop"]
    assert stops
    for s in stops:
        assert has_closed_code_block(tokenizer.decode(s.token_ids))
        assert not has_closed_code_block(tokenizer.decode(s.token_ids[:-1]))


def test_samples_do_not_depend_on_scheduling(shipped, contexts):
    """The RNG is keyed by (seed, sequence, position): slots, chunk size and neighbours change nothing."""
    caps = [40 + 3 * i for i in range(len(contexts))]
    a = _engine(shipped, slots=16, chunk=8).generate(contexts, caps, temperature=1.0, seed=7)
    b = _engine(shipped, slots=3, chunk=3).generate(contexts, caps, temperature=1.0, seed=7)
    c = _engine(shipped, slots=16, chunk=8).generate(contexts, caps, temperature=1.0, seed=8)
    assert [s.token_ids for s in a] == [s.token_ids for s in b]
    assert [s.token_ids for s in a] != [s.token_ids for s in c]
    for sample, cap in zip(a, caps, strict=True):
        assert len(sample.token_ids) <= cap and (sample.finish != "length" or len(sample.token_ids) == cap)


def test_copies_of_a_context_are_fed_once_and_sample_as_if_each_were_fed(shipped, contexts):
    """A group's G copies of a prompt: one is prefilled, the others get its keys/values and its logits, and each
    still samples with its own random numbers."""
    group = [c for c in contexts[:3] for _ in range(4)]
    shared = _engine(shipped, slots=12)
    got = shared.generate(group, [40] * 12, temperature=1.0, seed=4)
    assert shared.engine.stats["prefill_tokens"] == sum(len(c) for c in contexts[:3])  # each context fed once
    alone = _engine(shipped, slots=1)  # one request at a time: nothing to share
    want = alone.generate(group, [40] * 12, temperature=1.0, seed=4)
    assert alone.engine.stats["prefill_tokens"] == sum(len(c) for c in group)
    assert [s.token_ids for s in got] == [s.token_ids for s in want]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
    assert len({tuple(s.token_ids) for s in got[:4]}) > 1  # the copies sampled differently


def test_counter_uniform_is_uniform_and_keyed():
    keys = torch.arange(200_000)
    u = counter_uniform(torch.zeros_like(keys), keys, torch.full_like(keys, 3))
    assert u.min() >= 0.0 and u.max() < 1.0
    counts = torch.histc(u, bins=20, min=0.0, max=1.0)
    assert (counts / len(u) - 0.05).abs().max() < 0.003  # binomial sd of a bin share: 0.0005
    other = counter_uniform(torch.zeros_like(keys), keys, torch.full_like(keys, 4))
    assert (u != other).float().mean() > 0.99
    assert abs(torch.corrcoef(torch.stack([u, other]))[0, 1].item()) < 0.01


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.5, 1.0), (1.0, 0.8)])
def test_sampling_frequencies_match_the_distribution(temperature, top_p):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 60_000
    keys = torch.arange(n)
    uniforms = counter_uniform(torch.full_like(keys, 11), keys, torch.zeros_like(keys))
    tokens, logps = sample_tokens(
        logits.expand(n, -1),
        torch.full((n,), temperature),
        torch.full((n,), top_p),
        uniforms,
        use_top_p=top_p < 1,
    )
    probs = torch.softmax(logits / temperature, -1)
    expected = probs.clone()
    if top_p < 1:  # smallest prefix of the sorted probabilities with mass >= top_p, renormalized
        # softmax([2, 1, 0.5, 0, -1, -3]) = 0.5344, 0.1966, 0.1192, 0.0723, 0.0266, 0.0036; 0.53 + 0.20 < 0.8
        expected[3:] = 0.0
        expected /= expected.sum()
    observed = torch.bincount(tokens, minlength=6).float() / n
    assert (observed - expected).abs().max() < 0.01  # sd of the largest share: 0.002
    torch.testing.assert_close(logps, torch.log(probs)[tokens], atol=1e-5, rtol=0)


def test_greedy_rows_and_sampled_rows_share_a_batch():
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    tokens, logps = sample_tokens(
        logits, torch.tensor([0.0, 1.0]), torch.ones(2), torch.tensor([0.999, 0.999]), use_top_p=False
    )
    assert tokens.tolist() == [1, 2]  # greedy: argmax; u = 0.999 falls in the last token's share
    torch.testing.assert_close(logps, torch.log_softmax(logits, -1)[[0, 1], [1, 2]])


def test_next_turn_reuses_the_cached_prefix(shipped, contexts):
    """Turn 2 from the slot's cache equals turn 2 computed from scratch, and only new tokens are prefilled."""
    model, tokenizer = shipped
    observation = tokenizer.encode("\n```output\n42\n```\n", add_special_tokens=False)
    warm = GenerationEngine(model, tokenizer, EngineOptions(slots=4, max_len=512, chunk=4))
    warm.submit(0, contexts[0], 48, temperature=0.0)
    (_, first), *_ = _drain(warm)
    full = contexts[0] + first.token_ids + observation
    prefilled = warm.stats["prefill_tokens"]
    warm.submit(0, full, 48, temperature=0.0)
    (_, second), *_ = _drain(warm)
    assert warm.stats["prefill_tokens"] - prefilled == len(observation) + 1  # the last sampled token + output
    cold = GenerationEngine(model, tokenizer, EngineOptions(slots=4, max_len=512, chunk=4))
    cold.submit(0, full, 48, temperature=0.0)
    (_, fresh), *_ = _drain(cold)
    assert second.token_ids == fresh.token_ids
    torch.testing.assert_close(torch.tensor(second.logprobs), torch.tensor(fresh.logprobs), atol=1e-5, rtol=0)


def test_eviction_recomputes_and_stays_exact(shipped, contexts):
    model, tokenizer = shipped
    engine = GenerationEngine(model, tokenizer, EngineOptions(slots=2, max_len=512, chunk=4))
    firsts = {}
    for key in range(3):  # three sequences through two slots: one prefix must be evicted
        engine.submit(key, contexts[key], 24, temperature=0.0)
        firsts.update(dict(_drain(engine)))
    assert engine.stats["evictions"] >= 1
    seconds = {}
    for key in range(3):
        engine.submit(key, contexts[key] + firsts[key].token_ids + [10, 11], 24, temperature=0.0)
    seconds.update(dict(_drain(engine)))
    reference = HFSampler(model, tokenizer).generate(
        [contexts[k] + firsts[k].token_ids + [10, 11] for k in range(3)], [24] * 3, temperature=0.0
    )
    assert [seconds[k].token_ids for k in range(3)] == [r.token_ids for r in reference]


def test_slot_bytes_are_what_the_engine_allocates(shipped, monkeypatch):
    """The per-slot figure that sizes the slots on a GPU (``slots_in_memory``) is one slot of the real cache."""
    from gtpo.generation.engine.cache import slot_bytes, slots_in_memory

    model, tokenizer = shipped
    engine = GenerationEngine(model, tokenizer, EngineOptions(slots=3, max_len=64))
    allocated = sum(t.numel() * t.element_size() for t in engine.k_cache + engine.v_cache)
    dtype = next(model.parameters()).dtype
    assert allocated == (3 + 1) * slot_bytes(model.config, 64, dtype)  # the slots and the spare one
    assert slot_bytes(model.config, 64, torch.bfloat16) * dtype.itemsize == slot_bytes(model.config, 64, dtype) * 2
    free = 4 * 10 * slot_bytes(model.config, 64, torch.bfloat16) + 1  # a quarter of it holds 10 bf16 slots
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 2 * free))
    assert slots_in_memory(model, 64, torch.device("cuda")) == 10


def test_requests_that_cannot_fit_are_refused(shipped, contexts):
    engine = _engine(shipped, max_len=64).engine
    with pytest.raises(ValueError, match="max_len 64"):
        engine.submit(0, contexts[0], 64, temperature=1.0)
    engine.submit(1, contexts[0][:10], 8, temperature=1.0)
    with pytest.raises(ValueError, match="in flight"):
        engine.submit(1, contexts[0][:10], 8, temperature=1.0)


def test_weight_sync_changes_what_the_engine_samples(shipped, contexts):
    from gtpo.model.policy import inference_weights

    _, tokenizer = shipped
    sampler = _engine(shipped)
    other, _ = load_policy(str(DEFAULT_MODEL_DIR))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = sampler.generate(contexts[:4], [32] * 4, temperature=0.0)
    sampler.sync_weights(inference_weights(other).items())
    after = sampler.generate(contexts[:4], [32] * 4, temperature=0.0)
    reference = HFSampler(other, tokenizer).generate(contexts[:4], [32] * 4, temperature=0.0)
    assert [s.token_ids for s in after] == [s.token_ids for s in reference]
    assert [s.token_ids for s in after] != [s.token_ids for s in before]
    with pytest.raises(ValueError, match="lack"):
        sampler.sync_weights([("model.norm.weight", torch.ones(128))][:0])


@pytest.mark.parametrize("tied", [True, False])
def test_inference_copy_is_the_policy_bit_for_bit_without_a_random_init(monkeypatch, tied):
    from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

    from gtpo.generation.engine.weights import build_inference_copy
    from gtpo.model.policy import inference_weights

    config = Qwen2Config(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tied, rope_parameters={"rope_theta": 500.0, "rope_type": "default"},
    )  # fmt: skip
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(config).eval()
    inits = []
    monkeypatch.setattr(PreTrainedModel, "_init_weights", lambda self, module: inits.append(module))
    copy = build_inference_copy(policy, inference_weights(policy), torch.float32, torch.device("cpu"))
    assert inits == []  # every weight is loaded from the policy: a random init first would be wasted work
    want = dict(policy.named_parameters(remove_duplicate=False)) | dict(policy.named_buffers())
    got = dict(copy.named_parameters(remove_duplicate=False)) | dict(copy.named_buffers())
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    assert (copy.lm_head.weight is copy.model.embed_tokens.weight) == tied
    half = build_inference_copy(policy, inference_weights(policy), torch.bfloat16, torch.device("cpu"))
    assert half.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert torch.equal(half.model.rotary_emb.inv_freq, policy.model.rotary_emb.inv_freq)  # stays float32


def test_inference_copy_refuses_a_missing_weight_or_buffer(shipped):
    from gtpo.generation.engine.weights import build_inference_copy
    from gtpo.model.policy import inference_weights

    model, _ = shipped
    weights = inference_weights(model)
    del weights["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=re.escape("lack model.layers.1.mlp.up_proj.weight")):
        build_inference_copy(model, weights, torch.float32, torch.device("cpu"))

    class NoBuffers(torch.nn.Module):  # a policy whose rotary frequencies cannot be found
        def __init__(self):
            super().__init__()
            self.config, self.inner = model.config, torch.nn.Linear(1, 1)

    with pytest.raises(ValueError, match=re.escape("no buffer 'model.rotary_emb.inv_freq'")):
        build_inference_copy(NoBuffers(), inference_weights(model), torch.float32, torch.device("cpu"))


def test_lora_policy_is_merged_into_the_engine(shipped, contexts):
    pytest.importorskip("peft")  # an optional extra: gtpo[lora]
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_policy(str(DEFAULT_MODEL_DIR))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    peft_model.eval()
    got = EngineSampler(peft_model, tokenizer, EngineOptions(slots=8, max_len=512)).generate(
        contexts[:6], [40] * 6, temperature=0.0
    )
    reference = HFSampler(peft_model, tokenizer).generate(contexts[:6], [40] * 6, temperature=0.0)
    assert [s.token_ids for s in got] == [s.token_ids for s in reference]


class EchoExecutor:
    """Replies with a fixed output per code cell, after a random delay (so completion order varies)."""

    def __init__(self, delays: bool = True):
        self.delays, self.opened, self.closed, self.calls = delays, 0, 0, 0

    def open_session(self):
        self.opened += 1
        return f"s{self.opened}"

    def run_batch(self, calls):
        if self.delays:
            time.sleep(random.uniform(0.0, 0.02))
        self.calls += len(calls)
        return [ExecResult("ok", f"{len(code) % 97}") for _, code in calls]

    def close_session(self, session_id):
        self.closed += 1


def _rollout(sampler, tokenizer, executor, seed=None, **episode):
    return rollout(
        heldout_problems()[:6],
        3,
        sampler,
        tokenizer,
        python_tool_envs(executor, max_turns=4, grade=lambda pred, ref: pred == ref),
        EpisodeSpec(
            system_prompt=SYSTEM_PROMPT, max_turns=4, max_new_tokens_per_turn=64, max_total_tokens=400, **episode
        ),
        seed=seed,
    ).trajectories


def test_streaming_rollout_equals_turn_by_turn_rollout(shipped):
    """Greedy: the same model and tool outputs give the same trajectories, token for token."""
    model, tokenizer = shipped
    reference = _rollout(HFSampler(model, tokenizer), tokenizer, EchoExecutor(delays=False), temperature=0.0)
    executor = EchoExecutor()
    streamed = _rollout(_engine(shipped, slots=7), tokenizer, executor, temperature=0.0, schedule="asap")
    assert sum(t.num_turns for t in reference) > len(reference)  # multi-turn episodes happened
    assert executor.calls > 0 and executor.opened == executor.closed
    for a, b in zip(streamed, reference, strict=True):
        assert (a.input_ids, a.loss_mask, a.turn_ids) == (b.input_ids, b.loss_mask, b.turn_ids)
        assert (a.finish_reason, [t.text for t in a.turns]) == (b.finish_reason, [t.text for t in b.turns])
        torch.testing.assert_close(
            torch.tensor(a.sampler_logprobs), torch.tensor(b.sampler_logprobs), atol=1e-4, rtol=0
        )


def test_deterministic_schedule_reproduces_a_run(shipped):
    _, tokenizer = shipped
    runs = [
        _rollout(_engine(shipped, slots=5), tokenizer, EchoExecutor(), temperature=1.0, seed=3, schedule=schedule)
        for schedule in ("deterministic", "deterministic")
    ]
    assert [t.input_ids for t in runs[0]] == [t.input_ids for t in runs[1]]
    assert [t.sampler_logprobs for t in runs[0]] == [t.sampler_logprobs for t in runs[1]]


def test_streaming_rollout_logprobs_match_recomputation(shipped):
    model, tokenizer = shipped
    trajectories = _rollout(_engine(shipped), tokenizer, EchoExecutor(), temperature=1.0, seed=2)
    for t in trajectories:
        ids = torch.tensor([t.input_ids])
        logp, _ = token_logprobs(model, ids, torch.ones_like(ids), 1.0)
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        assert mask.any()
        torch.testing.assert_close(logp[0][mask], torch.tensor(t.sampler_logprobs)[mask], atol=1e-4, rtol=0)


def _drain(engine):
    finished = []
    while engine.has_work():
        finished.extend(engine.step())
    return finished


@pytest.mark.gpu
def test_cuda_graphs_equal_eager_on_gpu(shipped, contexts):
    model, tokenizer = shipped
    gpu_model = model.to("cuda")
    try:
        options = {"slots": 16, "max_len": 512, "static_shapes": True}  # the same kernels, replayed or not
        eager = EngineSampler(gpu_model, tokenizer, EngineOptions(**options, cuda_graphs=False))
        graphs = EngineSampler(gpu_model, tokenizer, EngineOptions(**options, cuda_graphs=True))
        a = eager.generate(contexts, [64] * len(contexts), temperature=1.0, seed=4)
        b = graphs.generate(contexts, [64] * len(contexts), temperature=1.0, seed=4)
        assert graphs.engine.decoder.graph_error is None and graphs.engine.decoder.graphs.graphs
        assert [s.token_ids for s in a] == [s.token_ids for s in b]
        assert [s.logprobs for s in a] == [s.logprobs for s in b]
    finally:
        model.to("cpu")


def test_backend_choice_and_settings_are_checked(shipped):
    from gtpo.components import build_sampler
    from gtpo.config import ConfigError, GenerationConfig, TrainConfig, validate
    from gtpo.generation.engine.weights import check_supported
    from gtpo.generation.protocol import StreamingSampler

    model, tokenizer = shipped
    default = build_sampler(TrainConfig(), model, tokenizer)
    assert isinstance(default, EngineSampler) and isinstance(default, StreamingSampler)
    assert default.turn_stream() is default.engine
    assert not isinstance(HFSampler(model, tokenizer), StreamingSampler)  # rolled out turn by turn
    assert (default.engine.options.slots, default.engine.options.max_len) == (64, 512)  # the whole default batch
    hf = TrainConfig(generation=GenerationConfig(backend="hf"))
    assert isinstance(build_sampler(hf, model, tokenizer), HFSampler)
    for field, value in (("engine_slots", -1), ("engine_chunk", -2), ("rejoin_steps", 0)):
        with pytest.raises(ConfigError, match=rf"generation\.{field}"):
            validate(TrainConfig(generation=GenerationConfig(**{field: value})))
    with pytest.raises(ValueError, match="schedule"):
        rollout(
            [], 2, default, tokenizer, python_tool_envs(EchoExecutor()), EpisodeSpec(system_prompt="", schedule="soon")
        )
    sliding = type("Config", (), {"layer_types": ["full_attention", "sliding_attention"]})()
    with pytest.raises(ValueError, match=r"--generation\.backend hf"):
        check_supported(sliding)


def test_engine_dtype_auto_samples_large_models_in_bf16_only_on_cpus_that_multiply_it(shipped, monkeypatch):
    """The "auto" dtype: bf16 on CUDA; on a CPU only with native bf16 products and weights beyond
    ``BF16_MIN_WEIGHT_BYTES`` (the shipped tiny model keeps float32 on any CPU: its tokens are the model's own);
    explicit settings win."""
    from gtpo.components import build_sampler
    from gtpo.config import GenerationConfig, TrainConfig
    from gtpo.generation.engine import weights

    model, tokenizer = shipped
    large = torch.nn.Linear(1, 1)
    large.weight = torch.nn.Parameter(torch.empty(weights.BF16_MIN_WEIGHT_BYTES // 4 + 1, 1))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(weights, "native_bf16_cpu", lambda native=native: native)
        assert weights.engine_dtype("auto", model, cpu) == torch.float32
        assert weights.engine_dtype("auto", large, cpu) == (torch.bfloat16 if native else torch.float32)
        assert weights.engine_dtype("auto", model, cuda) == torch.bfloat16
        assert weights.engine_dtype("float32", large, cpu) == torch.float32
        assert weights.engine_dtype("bfloat16", model, cpu) == torch.bfloat16
    config = TrainConfig(generation=GenerationConfig(engine_dtype="bfloat16"))
    sampler = build_sampler(config, model, tokenizer)
    assert sampler.engine.k_cache[0].dtype == torch.bfloat16
    assert next(sampler.engine.model.parameters()).dtype == torch.bfloat16
    assert build_sampler(TrainConfig(), model, tokenizer).engine.k_cache[0].dtype == torch.float32
    from gtpo.generation.engine.compact import _can_pack

    assert sampler.engine.compact.packed == _can_pack(torch.bfloat16)  # bf16 products on packed weight copies ...
    unpacked = GenerationConfig(engine_dtype="bfloat16", engine_packed_weights=False)
    assert not build_sampler(TrainConfig(generation=unpacked), model, tokenizer).engine.compact.packed  # ... or not
