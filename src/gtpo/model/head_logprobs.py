"""Token log-probs (and entropies) straight from hidden states and the LM head, never holding [N, V] logits.

``log p(t | h) = z_t - logsumexp(z)`` with ``z = (h W^T + b) / temperature``. A policy's vocabulary is large
(152k for Qwen2.5), so float32 logits of a 16k-token micro-batch would take 10 GB, more than the whole
activation memory of a 1.5B model. Here the head runs over chunks of rows: the forward pass keeps only one
log-normalizer per token, and the backward pass recomputes each chunk's logits and turns them at once into
the gradients of the hidden states and of the weight (two matmuls), so peak memory is one chunk of logits (two
with entropy).

Gradients, per row with p = softmax(z) and incoming gradients g (of log p_t) and e (of the entropy H):
  d log p_t / dz = onehot(t) - p,     dH / dz = -p * (log p + H),
  dz/dh = W / temperature,            dz/dW = h / temperature.
Matmuls follow the caller's autocast (bf16 on GPUs); the softmax arithmetic is float32.

What this is not: it does not run the model (``gtpo.model.policy``) and knows nothing of the loss.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_ELEMENTS = 2**28
"""Logits computed at once (rows x vocabulary): 1 GiB of float32, whatever the vocabulary."""


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float32 ``log p(targets[i] | hidden[i])`` [M] and, if asked, the entropies [M] of the same tempered
    distributions. ``hidden`` [M, H], ``weight`` [V, H] (the LM head's), ``targets`` [M] token ids."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [M, H] and targets [M], got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    rows = max(1, chunk_elements // weight.shape[0])
    logp, entropy = _HeadLogprobs.apply(hidden, weight, bias, targets, float(temperature), with_entropy, rows)
    return logp, (entropy if with_entropy else None)


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Tempered float32 logits of one chunk (the matmul itself in the autocast dtype, if any)."""
    z = torch.nn.functional.linear(hidden, weight, bias).float()
    return z.div_(temperature) if temperature != 1.0 else z


class _HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        temperature: float,
        with_entropy: bool,
        rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        count = hidden.shape[0]
        logp = hidden.new_empty(count, dtype=torch.float32)
        log_norm = hidden.new_empty(count, dtype=torch.float32)
        entropy = hidden.new_empty(count if with_entropy else 0, dtype=torch.float32)
        for lo in range(0, count, rows):
            hi = min(lo + rows, count)
            z = _logits(hidden[lo:hi], weight, bias, temperature)
            log_norm[lo:hi] = torch.logsumexp(z, dim=-1)
            logp[lo:hi] = z.gather(1, targets[lo:hi, None]).squeeze(1) - log_norm[lo:hi]
            if with_entropy:
                z.sub_(log_norm[lo:hi, None])  # now log p
                entropy[lo:hi] = -z.exp().mul_(z).sum(-1)  # in place: two chunks of logits alive, not three
            del z  # before the next chunk's logits exist
        device = hidden.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.settings = (temperature, with_entropy, rows)
        ctx.save_for_backward(hidden, weight, bias, targets, log_norm, entropy)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor, grad_entropy: torch.Tensor | None) -> tuple:
        hidden, weight, bias, targets, log_norm, entropy = ctx.saved_tensors
        temperature, with_entropy, rows = ctx.settings
        device, autocast_on, autocast_dtype = ctx.autocast
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        use_entropy = with_entropy and grad_entropy is not None
        # Without autocast the float32 gradient meets the weights in their own dtype (bf16 under FSDP's
        # mixed precision); with it, autocast picks the matmul dtype as in the forward pass.
        cast = (lambda t: t) if autocast_on else (lambda t: t.to(weight.dtype))
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
            for lo in range(0, hidden.shape[0], rows):
                hi = min(lo + rows, hidden.shape[0])
                log_probs = _logits(hidden[lo:hi], weight, bias, temperature).sub_(log_norm[lo:hi, None])
                # In place, and the chunk freed before the next: one chunk of logits alive (two with entropy),
                # where out-of-place products and the last chunk's leftovers held up to four (4 GiB at the default
                # chunk of a 152k vocabulary).
                if use_entropy:  # g * (onehot - p) + e * (-p * (log p + H)) = -p * (g + e * (log p + H)) + g * onehot
                    grad_z = log_probs.exp()  # p, then in place the gradient
                    log_probs.add_(entropy[lo:hi, None]).mul_(grad_entropy[lo:hi, None]).add_(grad_logp[lo:hi, None])
                    grad_z.mul_(log_probs).neg_()
                else:  # g * (onehot - p)
                    grad_z = log_probs.exp_().mul_(-grad_logp[lo:hi, None])
                grad_z.scatter_add_(1, targets[lo:hi, None], grad_logp[lo:hi, None])  # the onehot part
                if temperature != 1.0:
                    grad_z.div_(temperature)
                if need_hidden:
                    grad_hidden[lo:hi] = cast(grad_z) @ weight
                if need_weight:
                    grad_weight += cast(grad_z).t() @ hidden[lo:hi]
                if need_bias:
                    grad_bias += grad_z.sum(0)
                del log_probs, grad_z  # before the next chunk's logits exist
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None
