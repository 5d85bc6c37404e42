"""Token log-probs: the padded path (``token_logprobs``) and the packed one (``packed_token_logprobs``).

The padded path's chunked, checkpointed float32 work equals the one-shot computation; the packed path scores each
sequence as if it were alone (attention never crosses a boundary), with the same gradients as the padded path."""

import copy

import pytest
import torch

from gtpo.components import enable_checkpointing
from gtpo.model.policy import (
    check_packed_logprobs,
    checkpointing_active,
    compile_layers,
    packed_attention_active,
    packed_token_logprobs,
    token_logprobs,
)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_and_gradients_equal_one_chunk(tiny_model, temperature):
    torch.manual_seed(0)
    vocab = tiny_model.config.vocab_size
    ids = torch.randint(0, vocab, (3, 11))
    mask = torch.ones_like(ids)
    weights = torch.randn(3, 11)
    results = []
    for chunk_elements in (10**9, 2 * 3 * vocab):  # one chunk; chunks of 2 positions (5 chunks, one partial)
        model = copy.deepcopy(tiny_model).train()
        logp, entropy = token_logprobs(model, ids, mask, temperature, with_entropy=True, chunk_elements=chunk_elements)
        ((logp * weights).sum() + entropy.sum()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((logp.detach(), entropy.detach(), grads))
    (logp_a, ent_a, grads_a), (logp_b, ent_b, grads_b) = results
    assert logp_a.shape == (3, 11) and (logp_a[:, 0] == 0).all() and (logp_a[:, 1:] < 0).all()
    torch.testing.assert_close(logp_a, logp_b)
    torch.testing.assert_close(ent_a, ent_b)
    assert len(grads_a) == len(grads_b) > 0
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_logprobs_match_log_softmax_by_definition(tiny_model):
    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 6))
    with torch.no_grad():
        logp, entropy = token_logprobs(tiny_model, ids, torch.ones_like(ids), 2.0, with_entropy=True, chunk_elements=1)
        logits = tiny_model(input_ids=ids).logits[:, :-1] / 2.0
    expected = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(logp[:, 1:], expected)
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy[:, 1:], -(probs * probs.log()).sum(-1))


# ---- packed log-probs: attention within each sequence, chunked head, gradients -------------------------------
def _packed_inputs(vocab, lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, vocab, (n,), generator=gen) for n in lengths]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    scored = torch.tensor([s + j for s, n in zip(starts, lengths, strict=True) for j in range(1, n)])
    return seqs, torch.cat(seqs)[None], scored


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_a_packed_sequence_scores_as_it_does_alone(tiny_model, temperature):
    """No attention crosses a packed boundary: each sequence's log-probs and entropies equal its own forward's."""
    lengths = [5, 12, 3, 9]
    seqs, ids, scored = _packed_inputs(tiny_model.config.vocab_size, lengths)
    with torch.no_grad():
        logp, entropy = packed_token_logprobs(tiny_model, ids, lengths, scored, temperature, with_entropy=True)
        ones = [torch.ones(1, len(s), dtype=torch.long) for s in seqs]
        alone = [token_logprobs(tiny_model, s[None], m, temperature, True) for s, m in zip(seqs, ones, strict=True)]
    torch.testing.assert_close(logp, torch.cat([lp[0, 1:] for lp, _ in alone]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, torch.cat([e[0, 1:] for _, e in alone]), atol=1e-5, rtol=1e-5)
    assert tiny_model.config._attn_implementation == "sdpa"  # the packed attention was switched on for the call only


def test_packing_changes_nothing_but_attending_across_would(tiny_model):
    """The same tokens as one unpacked sequence score differently after the first boundary (the test can fail)."""
    lengths = [6, 6]
    _, ids, scored = _packed_inputs(tiny_model.config.vocab_size, lengths, seed=3)
    with torch.no_grad():
        packed, _ = packed_token_logprobs(tiny_model, ids, lengths, scored)
        joined, _ = packed_token_logprobs(tiny_model, ids, [12], scored)
    torch.testing.assert_close(packed[:5], joined[:5])
    assert not torch.allclose(packed[5:], joined[5:], atol=1e-3)


def test_packed_gradients_equal_padded_gradients(tiny_model):
    lengths = [7, 4, 10]
    seqs, ids, scored = _packed_inputs(tiny_model.config.vocab_size, lengths, seed=1)
    weights = torch.randn(len(scored), generator=torch.Generator().manual_seed(2))
    packed_model, padded_model = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    logp, entropy = packed_token_logprobs(packed_model, ids, lengths, scored, 0.8, with_entropy=True)
    ((logp * weights).sum() + 0.3 * entropy.sum()).backward()
    width = max(lengths)
    padded = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(padded)
    for r, s in enumerate(seqs):
        padded[r, : len(s)], mask[r, : len(s)] = s, 1
    ref_logp, ref_entropy = token_logprobs(padded_model, padded, mask, 0.8, with_entropy=True)
    keep = mask.clone()
    keep[:, 0] = 0
    flat = weights.new_zeros(len(seqs), width)
    flat[keep.bool()] = weights
    ((ref_logp * flat).sum() + 0.3 * (ref_entropy * keep).sum()).backward()
    for (name, a), b in zip(packed_model.named_parameters(), padded_model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_checkpointing_takes_effect_in_eval_mode_with_equal_gradients(tiny_tokenizer):
    """transformers checkpoints only layers in training mode; ``checkpointing_active`` makes it run (each layer
    forwards twice: once, and again in the backward pass) while dropout stays off, and gradients do not change."""
    from conftest import build_model

    lengths = [9, 6]
    grads, calls = [], []
    for checkpointing in (False, True):
        model = build_model(tiny_tokenizer).eval()
        if checkpointing:
            enable_checkpointing(model)
        count, mlp = [0], model.model.layers[0].mlp
        mlp.forward = lambda x, c=count, f=mlp.forward: c.__setitem__(0, c[0] + 1) or f(x)  # (hooks skip recompute)
        _, ids, scored = _packed_inputs(model.config.vocab_size, lengths, seed=4)
        with checkpointing_active(model, checkpointing), packed_attention_active(model):
            logp, _ = packed_token_logprobs(model, ids, lengths, scored)
            logp.sum().backward()  # the recomputation runs here, so inside the packed attention too
        assert not model.model.layers[0].training and not model.model.layers[0].mlp.training
        grads.append([p.grad for p in model.parameters()])
        calls.append(count[0])
    assert calls == [1, 2]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_a_model_that_post_processes_its_logits_is_refused(tiny_tokenizer):
    from conftest import build_model

    model = build_model(tiny_tokenizer)
    forward = model.forward

    def capped(*args, **kwargs):  # soft-capping after the head, as Gemma 2 does
        out = forward(*args, **kwargs)
        out.logits = 3.0 * torch.tanh(out.logits / 3.0)
        return out

    model.forward = capped
    with pytest.raises(ValueError, match="packed log-probs differ"):
        check_packed_logprobs(model)


@pytest.mark.slow  # compiling on a CPU takes a minute or more
def test_compiled_layers_give_the_same_logprobs_and_gradients(tiny_model):
    lengths = [10, 30]
    _, ids, scored = _packed_inputs(tiny_model.config.vocab_size, lengths, seed=5)
    results = []
    for compiled in (False, True):
        model = copy.deepcopy(tiny_model)
        if compiled:
            assert compile_layers(model) == 3 * len(model.model.layers)
        with packed_attention_active(model):
            logp, _ = packed_token_logprobs(model, ids, lengths, scored)
            logp.sum().backward()
        results.append((logp.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_remembered_prompts_are_fresh_copies_and_follow_the_template(shipped_tiny):
    """``prompt_ids`` remembers rendered prompts: the same ids as rendering anew, a list the caller may change, and a
    changed chat template is rendered again."""
    from gtpo.model.policy import prompt_ids

    _, tokenizer = shipped_tiny
    tokenizer = copy.deepcopy(tokenizer)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2+3?"}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    first = prompt_ids(tokenizer, "S", "What is 2+3?")
    assert first == tokenizer.encode(rendered, add_special_tokens=False)
    first.append(-1)  # the caller owns the list
    assert prompt_ids(tokenizer, "S", "What is 2+3?") == first[:-1]
    tokenizer.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    assert prompt_ids(tokenizer, "S", "What is 2+3?") == tokenizer.encode("[S][What is 2+3?]", add_special_tokens=False)
