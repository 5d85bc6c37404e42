"""The policy loss: PPO/GRPO clipped surrogate over model tokens, optional dual clip, k3 KL, entropy bonus.

One pure function of [B, T] tensors. Only ``loss_mask`` tokens count (model-sampled tokens; prompt and
tool-output observation tokens are 0 there). The aggregation divides by a normalizer that the caller may
give for the whole batch, so that gradients summed over micro-batches equal the gradient of one big batch.
See docs/algorithms.md for the formulas.

What this is not: it computes no log-probs (the trainer does) and no advantages (``gtpo.advantages``).
"""

from __future__ import annotations

import torch

LOSS_AGGS: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
"""Aggregation modes (config field ``loss_agg``); see ``aggregate`` for each normalizer."""


def aggregate(
    token_values: torch.Tensor, loss_mask: torch.Tensor, agg: str, denominator: float | None = None
) -> torch.Tensor:
    """Reduce masked [B, T] token values to a scalar.

    - "token-mean": sum over masked tokens / denominator (default: masked tokens in this micro-batch).
    - "seq-mean-token-mean": sum over sequences of each sequence's token mean / denominator (default: the
      number of sequences with at least one masked token).
    - "seq-mean-token-sum-norm": sum over masked tokens / denominator (default: B * T), Dr. GRPO's
      length-independent normalizer when the caller passes sequences * length budget.
    A sequence without masked tokens adds 0 to the sum and is not counted in any default denominator.
    """
    if agg not in LOSS_AGGS:
        raise ValueError(f"agg (config loss_agg) must be one of {LOSS_AGGS}, got {agg!r}")
    loss_mask = loss_mask.to(token_values.dtype)
    masked = torch.where(loss_mask > 0, token_values * loss_mask, torch.zeros((), dtype=token_values.dtype))
    if agg == "seq-mean-token-mean":
        tokens_per_seq = loss_mask.sum(dim=1)
        numerator = (masked.sum(dim=1) / tokens_per_seq.clamp(min=1e-8)).sum()
        default = (tokens_per_seq > 0).sum().item()
    elif agg == "token-mean":
        numerator, default = masked.sum(), loss_mask.sum().item()
    else:
        numerator, default = masked.sum(), float(loss_mask.numel())
    if denominator is None:
        denominator = float(default) if default > 0 else 1.0  # empty micro-batch: numerator is 0, stays 0
    elif not denominator > 0:
        raise ValueError(f"denominator must be > 0 (the whole batch's normalizer), got {denominator}")
    return numerator / denominator


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    denominator: float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate loss and its metrics. All tensors [B, T]; returns (scalar loss, metrics).

    Per token, with rho = exp(logp - old_logp):
      policy = -min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A),
      and with ``dual_clip`` c, for A < 0: policy = min(policy, -c * A) (a bound on a very large rho).
    loss = agg(policy) + kl_coef * agg(k3) - entropy_coef * agg(entropy), where
      k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 >= 0 estimates KL(policy || reference).
    Metrics are this micro-batch's plain token means over masked tokens, whatever ``agg`` and
    ``denominator`` are (so they can be averaged over micro-batches): policy, clipfrac, dual_clipfrac,
    approx_kl (k3 of old vs new, i.e. (rho - 1) - log rho), ratio_mean/min/max, and kl_ref / entropy when
    given.
    With no masked token the loss is 0 and ratio metrics read 1.0 (no update, no change).
    """
    named = {"logp": logp, "old_logp": old_logp, "advantages": advantages, "loss_mask": loss_mask}
    named |= {"ref_logp": ref_logp, "entropy": entropy}
    for name, tensor in named.items():
        if tensor is not None and (tensor.dim() != 2 or tensor.shape != logp.shape):
            raise ValueError(f"{name} must be [B, T] like logp {tuple(logp.shape)}, got {tuple(tensor.shape)}")
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low} and {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (e.g. 3.0) or None, got {dual_clip}")

    mask = loss_mask.to(logp.dtype)
    active = mask > 0
    zero = torch.zeros((), dtype=logp.dtype)
    # Off-mask positions may hold anything (padding, -inf); keep them out of exp() so nothing turns NaN.
    log_ratio = torch.where(active, logp - old_logp.detach(), zero)
    ratio = torch.exp(log_ratio)
    adv = torch.where(active, advantages.detach().to(logp.dtype), zero)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    policy = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped
    dual_active = torch.zeros_like(active)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (policy > bound)
        policy = torch.where(dual_active, bound, policy)

    loss = aggregate(policy, mask, agg, denominator)
    metrics = {
        "policy": _masked_mean(policy, active),
        "clipfrac": _masked_mean(clip_active & ~dual_active, active),
        "dual_clipfrac": _masked_mean(dual_active, active),
        "approx_kl": _masked_mean((ratio - 1.0) - log_ratio, active),
        "ratio_mean": _masked_mean(ratio, active, empty=1.0),
        "ratio_min": ratio[active].min().item() if active.any() else 1.0,
        "ratio_max": ratio[active].max().item() if active.any() else 1.0,
    }
    if ref_logp is not None:
        ref_minus_logp = torch.where(active, ref_logp.detach() - logp, zero)
        k3 = torch.exp(ref_minus_logp) - ref_minus_logp - 1.0
        metrics["kl_ref"] = _masked_mean(k3, active)
        if kl_coef:
            loss = loss + kl_coef * aggregate(k3, mask, agg, denominator)
    elif kl_coef:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp (log-probs of the reference policy)")
    if entropy is not None:
        metrics["entropy"] = _masked_mean(entropy, active)
        if entropy_coef:
            loss = loss - entropy_coef * aggregate(torch.where(active, entropy, zero), mask, agg, denominator)
    elif entropy_coef:
        raise ValueError(f"entropy_coef={entropy_coef} needs the per-token entropy tensor")
    return loss, metrics


def _masked_mean(values: torch.Tensor, active: torch.Tensor, empty: float = 0.0) -> float:
    """Plain mean over active tokens, for metrics (no gradient); ``empty`` when there is none."""
    count = int(active.sum())
    if count == 0:
        return empty
    return float(values.detach().to(torch.float64)[active].sum() / count)
