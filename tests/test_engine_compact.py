"""The engine's compact forward (``gtpo.generation.engine.compact``) against the model's own modeling code.

The compact forward is the engine's path on a CPU; transformers' modeling code with the engine's attention function
is its path on CUDA and for any architecture the compact one does not implement. Both must sample the same tokens
with the same log-probs, for every architecture the compact forward accepts, and weight syncs must reach it.
"""

from __future__ import annotations

import pytest
import torch

from gtpo.generation.engine import EngineOptions, EngineSampler
from gtpo.generation.engine import compact as compact_module
from gtpo.generation.engine.compact import CompactForward
from gtpo.generation.hf import HFSampler
from gtpo.model.policy import inference_weights, load_policy, prompt_ids
from gtpo.tasks.arith import SYSTEM_PROMPT, heldout_problems
from gtpo.tiny import DEFAULT_MODEL_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return load_policy(str(DEFAULT_MODEL_DIR))[1]


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [prompt_ids(tokenizer, SYSTEM_PROMPT, p.question) for p in heldout_problems()[:6]]


def random_model(kind: str, vocab: int) -> torch.nn.Module:
    """A small random decoder of ``kind``: Qwen2 (q/k/v bias), Llama (no bias, explicit head_dim, untied head,
    Llama 3 rotary scaling) or Qwen3 (q/k norms: not a computation the compact forward implements)."""
    import transformers

    common = {
        "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,
    }  # fmt: skip
    if kind == "qwen2":
        config = transformers.Qwen2Config(**common, tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(config)
    elif kind == "llama":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
        config = transformers.LlamaConfig(**common, head_dim=24, tie_word_embeddings=False, rope_parameters=rope)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen3Config(**common, head_dim=16)
        model = transformers.Qwen3ForCausalLM(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # larger than the init, so that greedy tokens differ between positions
            p.normal_(0, 0.3)
    return model.eval()


def engine(model, tokenizer, compact: bool, **options) -> EngineSampler:
    return EngineSampler(
        model, tokenizer, EngineOptions(**{"slots": 4, "max_len": 256, "chunk": 3} | options, compact=compact)
    )


def assert_same_samples(sampler, other, prompts, caps, atol: float) -> list:
    """Greedy and sampled turns (temperature 1.0, seed 3) of both: the same tokens, log-probs within ``atol``;
    returns the sampled turns of ``sampler``."""
    for temperature in (0.0, 1.0):
        got = sampler.generate(prompts, caps, temperature=temperature, seed=3)
        want = other.generate(prompts, caps, temperature=temperature, seed=3)
        assert [s.token_ids for s in got] == [s.token_ids for s in want]
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=atol, rtol=0)
    return got


@pytest.mark.parametrize("layout", ["whole-head", "head-in-blocks", "weights-streamed"])
@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_compact_forward_samples_what_the_models_own_forward_samples(tokenizer, prompts, kind, layout, monkeypatch):
    """``head-in-blocks``: the LM head multiplied in blocks of vocabulary rows, as it is for a large vocabulary
    (SmolLM2's 49,152), here on the shipped tokenizer's 384 rows in blocks of 100 (the last one short).
    ``weights-streamed``: decode products and the head as W·hᵀ, as they are for weights larger than a core's cache
    (SmolLM2's), here on every weight of the small model."""
    if layout == "head-in-blocks":
        monkeypatch.setattr(compact_module, "HEAD_BLOCK", 100)
    if layout == "weights-streamed":
        monkeypatch.setattr(compact_module, "STREAMED_WEIGHT_BYTES", 0)
    model = random_model(kind, len(tokenizer))
    caps = [20, 9, 20, 14, 20, 5]
    compact, plain = engine(model, tokenizer, True), engine(model, tokenizer, False)
    assert compact.engine.compact is not None and plain.engine.compact is None
    assert compact.engine.compact.streamed == compact.engine.compact.streamed_head == (layout == "weights-streamed")
    assert compact.engine.compact.packed == (layout == "weights-streamed")  # float32: decode of 2+ rows packed
    assert_same_samples(compact, plain, prompts, caps, atol=1e-4)
    reference = HFSampler(model, tokenizer).generate(prompts, caps, temperature=0.0)
    greedy = compact.generate(prompts, caps, temperature=0.0)
    assert [s.token_ids for s in greedy] == [s.token_ids for s in reference]
    assert len({tuple(s.token_ids) for s in greedy}) > 1  # the rows differ: the check compares something


def test_on_the_shipped_model_both_forwards_compute_the_same_bits(tokenizer, prompts):
    """Float32 on a CPU: the compact forward rounds as the model's own does, so the default run's tokens and
    log-probs (which enter the loss) do not depend on which path the engine takes."""
    model, _ = load_policy(str(DEFAULT_MODEL_DIR))
    compact, plain = engine(model, tokenizer, True, slots=6), engine(model, tokenizer, False, slots=6)
    assert compact.engine.compact is not None  # the engine's path on a CPU by default
    assert not compact.engine.compact.streamed and not compact.engine.compact.streamed_head  # weights fit in cache
    assert EngineSampler(model, tokenizer, EngineOptions(slots=2, max_len=64)).engine.compact is not None
    got = compact.generate(prompts, [48] * 6, temperature=1.0, seed=5)
    want = plain.generate(prompts, [48] * 6, temperature=1.0, seed=5)
    assert [s.token_ids for s in got] == [s.token_ids for s in want]
    assert [s.logprobs for s in got] == [s.logprobs for s in want]


def test_other_architectures_run_the_models_own_forward(tokenizer, prompts):
    model = random_model("qwen3", len(tokenizer))
    sampler = engine(model, tokenizer, True)
    assert sampler.engine.compact is None  # q/k norms: not the computation the compact forward implements
    got = sampler.generate(prompts, [12] * 6, temperature=0.0)
    reference = HFSampler(model, tokenizer).generate(prompts, [12] * 6, temperature=0.0)
    assert [s.token_ids for s in got] == [s.token_ids for s in reference]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_compact_forward_that_disagrees_is_not_used(tokenizer, dtype):
    """The check at build compares the two forwards: a wrong weight in the compact one is caught. In float32 a
    weight off by 0.01 is; in bfloat16, whose check allows for rounding, a weight of the wrong sign is."""
    model = random_model("qwen2", len(tokenizer))
    sampler = engine(model, tokenizer, True, dtype=dtype)
    compact = sampler.engine.compact
    assert compact is not None and compact.agrees_with(sampler.engine.model)
    wrong = compact.final_norm + 0.01 if dtype == torch.float32 else -compact.final_norm
    compact.final_norm = wrong  # no longer the model's own weight
    assert not compact.agrees_with(sampler.engine.model)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_packed_bf16_products_sample_what_plain_products_sample(tokenizer, prompts, kind):
    """In bfloat16 on a CPU every product runs on weights in oneDNN's layout (``PACKED_DTYPES``): the same function
    as ``F.linear`` on the plain weights (the same bits where oneDNN runs both; the tolerance allows another CPU's
    kernels), q/k/v bias (Qwen2) and an untied head (Llama) included. A weight packed transposed or from the
    wrong tensor samples other tokens."""
    if not compact_module._can_pack(torch.bfloat16):
        pytest.skip("oneDNN cannot pack bf16 weights on this CPU (no AVX512-BW/VL/DQ or AVX-NE-CONVERT)")
    model = random_model(kind, len(tokenizer))
    packed = engine(model, tokenizer, True, dtype=torch.bfloat16)
    assert packed.engine.compact.packed and packed.engine.compact.packed_head is not None
    plain = engine(model, tokenizer, True, dtype=torch.bfloat16, packed_weights=False)
    assert not plain.engine.compact.packed
    got = assert_same_samples(packed, plain, prompts, [20, 9, 20, 14, 20, 5], atol=2e-2)
    assert len({tuple(s.token_ids) for s in got}) > 1  # the rows differ: the check compares something


def test_where_onednn_cannot_pack_bf16_the_plain_products_run(tokenizer, prompts, monkeypatch):
    """oneDNN refuses bf16 packing on CPUs without AVX512-BW/VL/DQ (or AVX-NE-CONVERT): the engine must still build
    and sample, on plain products, rather than fail at its first weight."""

    def refuse(weight, rows):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx512bw")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    assert not compact_module._can_pack.__wrapped__(torch.bfloat16)
    monkeypatch.setattr(compact_module, "_can_pack", compact_module._can_pack.__wrapped__)
    model = random_model("llama", len(tokenizer))
    sampler = engine(model, tokenizer, True, dtype=torch.bfloat16)
    assert sampler.engine.compact is not None and not sampler.engine.compact.packed
    assert all(s.token_ids for s in sampler.generate(prompts, [6] * 6, temperature=1.0, seed=1))


def test_a_weight_sync_repacks_the_packed_weights(tokenizer, prompts):
    """The packed copies do not follow the model's parameters (the fused tensors do): after a sync, the engine
    samples what a fresh engine built on the new weights samples, not what the old packed weights would."""
    if not compact_module._can_pack(torch.bfloat16):
        pytest.skip("oneDNN cannot pack bf16 weights on this CPU (no AVX512-BW/VL/DQ or AVX-NE-CONVERT)")
    model, other = random_model("qwen2", len(tokenizer)), random_model("qwen2", len(tokenizer))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.2 * torch.randn_like(p))
    sampler = engine(model, tokenizer, True, dtype=torch.bfloat16)
    assert sampler.engine.compact.packed
    before = sampler.generate(prompts, [16] * 6, temperature=0.0)
    sampler.sync_weights(inference_weights(other).items())
    after = sampler.generate(prompts, [16] * 6, temperature=0.0)
    fresh = engine(other, tokenizer, True, dtype=torch.bfloat16).generate(prompts, [16] * 6, temperature=0.0)
    assert [s.token_ids for s in after] == [s.token_ids for s in fresh]
    assert [s.token_ids for s in after] != [s.token_ids for s in before]


def test_fused_weights_are_the_models_parameters_and_a_sync_fills_them(tokenizer, prompts):
    model = random_model("qwen2", len(tokenizer))
    sampler = engine(model, tokenizer, True)
    layer, fused = sampler.engine.model.model.layers[0], sampler.engine.compact.layers[0]
    q_rows = layer.self_attn.q_proj.weight.shape[0]
    assert layer.self_attn.q_proj.weight.data_ptr() == fused.qkv.data_ptr()
    assert layer.self_attn.k_proj.weight.data_ptr() == fused.qkv[q_rows:].data_ptr()
    assert layer.mlp.up_proj.weight.data_ptr() == fused.gate_up[layer.mlp.gate_proj.weight.shape[0] :].data_ptr()
    other = random_model("qwen2", len(tokenizer))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.2 * torch.randn_like(p))
    before = sampler.generate(prompts, [16] * 6, temperature=0.0)
    sampler.sync_weights(inference_weights(other).items())
    after = sampler.generate(prompts, [16] * 6, temperature=0.0)
    reference = HFSampler(other, tokenizer).generate(prompts, [16] * 6, temperature=0.0)
    assert [s.token_ids for s in after] == [s.token_ids for s in reference]
    assert [s.token_ids for s in after] != [s.token_ids for s in before]


def test_compact_forward_refuses_what_it_does_not_implement():
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
        hidden_act="gelu",
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    assert CompactForward.of(model, plan=None, max_len=16) is None  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.real
def test_on_smollm2_the_streamed_products_sample_what_the_models_own_forward_samples():
    """SmolLM2-135M-Instruct, whose weights the compact forward multiplies as W·hᵀ: greedy turns of the engine are
    HFSampler's token for token, and its log-probs within 1e-4 (measured: 8 of 8 rows of 64 tokens alike, 1.6e-5).
    About a minute on 2 cores; needs ``gtpo prepare smollm2-135m-instruct``."""
    from gtpo.prepare import gtpo_home

    folder = gtpo_home() / "smollm2-135m-instruct"
    if not (folder / "model.safetensors").exists():
        pytest.skip(f"{folder} is missing: run `gtpo prepare smollm2-135m-instruct` to test with it")
    model, tokenizer = load_policy(str(folder))
    contexts = [prompt_ids(tokenizer, SYSTEM_PROMPT, p.question) for p in heldout_problems()[:6]]
    sampler = EngineSampler(model.eval(), tokenizer, EngineOptions(slots=6, max_len=256, chunk=2))
    forward = sampler.engine.compact
    assert forward is not None and forward.streamed and forward.streamed_head
    got = sampler.generate(contexts, [32] * 6, temperature=0.0)
    want = HFSampler(model, tokenizer).generate(contexts, [32] * 6, temperature=0.0)
    assert [s.token_ids for s in got] == [s.token_ids for s in want]
    assert all(len(s.token_ids) > 8 for s in got)  # real turns were compared, not empty ones
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
