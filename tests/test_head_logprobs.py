"""Chunked LM-head log-probs: values and gradients equal log_softmax over full logits, whatever the chunking."""

import pytest
import torch

from gtpo.model.head_logprobs import head_logprobs


def reference(hidden, weight, bias, targets, temperature):
    logits = (hidden @ weight.T + (0 if bias is None else bias)) / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(1, targets[:, None]).squeeze(1), -(log_probs.exp() * log_probs).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("rows_per_chunk", [1, 3, 50])
@pytest.mark.parametrize("with_bias", [False, True])
def test_values_and_gradients_equal_full_logits(temperature, rows_per_chunk, with_bias):
    gen = torch.Generator().manual_seed(0)
    rows, hidden_size, vocab = 7, 5, 11
    hidden = torch.randn(rows, hidden_size, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(vocab, generator=gen, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    logp, entropy = head_logprobs(
        hidden, weight, targets, bias=bias, temperature=temperature, with_entropy=True,
        chunk_elements=rows_per_chunk * vocab,
    )  # fmt: skip
    expected_logp, expected_entropy = reference(hidden, weight, bias, targets, temperature)
    torch.testing.assert_close(logp, expected_logp.float())
    torch.testing.assert_close(entropy, expected_entropy.float())
    g_logp = torch.randn(rows, generator=gen, dtype=torch.float64)
    g_entropy = torch.randn(rows, generator=gen, dtype=torch.float64)
    inputs = [t for t in (hidden, weight, bias) if t is not None]
    grads = torch.autograd.grad((logp * g_logp).sum() + (entropy * g_entropy).sum(), inputs)
    expected = torch.autograd.grad((expected_logp * g_logp).sum() + (expected_entropy * g_entropy).sum(), inputs)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_without_entropy_only_log_probs_and_their_gradient():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 3, generator=gen, requires_grad=True)
    weight = torch.randn(6, 3, generator=gen, requires_grad=True)
    targets = torch.tensor([0, 5, 2, 2])
    logp, entropy = head_logprobs(hidden, weight, targets, chunk_elements=12)
    assert entropy is None
    logp.sum().backward()
    # d/dh sum_i log p(t_i | h_i) = W[t_i] - E_p[W], row by row
    probs = torch.softmax(hidden.detach() @ weight.detach().T, -1)
    expected = weight.detach()[targets] - probs @ weight.detach()
    torch.testing.assert_close(hidden.grad, expected)


def test_bf16_autocast_matmuls_stay_close_to_float32():
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(9, 16, generator=gen, requires_grad=True)
    weight = (torch.randn(40, 16, generator=gen) * 0.3).requires_grad_()
    targets = torch.randint(0, 40, (9,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = head_logprobs(hidden, weight, targets, chunk_elements=80)
    assert logp.dtype == torch.float32
    logp.sum().backward()
    expected, _ = reference(hidden.detach(), weight.detach(), None, targets, 1.0)
    torch.testing.assert_close(logp.detach(), expected, atol=0.05, rtol=0.05)
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32
