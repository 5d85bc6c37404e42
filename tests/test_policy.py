"""token_logprobs: the chunked, checkpointed float32 path equals the one-shot computation, values and gradients."""

import copy

import pytest
import torch

from gtpo.policy import token_logprobs


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
