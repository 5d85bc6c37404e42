"""The policy loss: PPO/GRPO clipped surrogate over model tokens, optional dual clip, k3 KL, entropy bonus;
and the truncated importance weights that correct for a sampler whose probabilities differ from the trainer's.

Pure functions of [B, T] tensors. Only ``loss_mask`` tokens count (model-sampled tokens; prompt and
tool-output observation tokens are 0 there). The aggregation divides by a normalizer that the caller may
give for the whole batch, so that gradients summed over micro-batches equal the gradient of one big batch.
See docs/algorithms.md for the formulas.

What this is not: it computes no log-probs (the trainer does) and no advantages (``gtpo.method.advantages``).
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
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate loss and its metrics. All tensors [B, T]; returns (scalar loss, metrics).

    Per token, with rho = exp(logp - old_logp):
      policy = -min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A),
      and with ``dual_clip`` c, for A < 0: policy = min(policy, -c * A) (a bound on a very large rho);
      with ``weights`` w (constants, e.g. ``importance_weights``): policy = w * policy.
    loss = agg(policy) + kl_coef * agg(k3) - entropy_coef * agg(entropy), where
      k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 >= 0 estimates KL(policy || reference).
    Metrics are this micro-batch's plain token means over masked tokens, whatever ``agg`` and
    ``denominator`` are (so they can be averaged over micro-batches): policy, clipfrac, dual_clipfrac,
    approx_kl (k3 of old vs new, i.e. (rho - 1) - log rho), ratio_mean/min/max, and kl_ref / entropy when
    given.
    With no masked token the loss is 0 and ratio metrics read 1.0 (no update, no change).
    """
    named = {"logp": logp, "old_logp": old_logp, "advantages": advantages, "loss_mask": loss_mask}
    named |= {"ref_logp": ref_logp, "entropy": entropy, "weights": weights}
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
    if weights is not None:
        policy = policy * torch.where(active, weights.detach().to(logp.dtype), zero)

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


IS_LEVELS: tuple[str, ...] = ("none", "token", "sequence")
"""Importance-correction levels (config field ``algo.is_correction``); see ``importance_weights``."""


def importance_weights(
    train_logp: torch.Tensor, sampler_logp: torch.Tensor, loss_mask: torch.Tensor, cap: float, level: str
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance weights for tokens drawn by a sampler whose probabilities differ from the trainer's,
    and the size of that difference. All tensors [B, T]; returns (weights [B, T], metrics).

    With delta = train_logp - sampler_logp (log pi_train_old - log pi_sampler) on masked tokens:
      "token":    w[i, t] = min(exp(delta[i, t]), cap)                    (truncated IS, per token)
      "sequence": w[i, t] = min(exp(sum_t' delta[i, t']), cap) on every token of sequence i
      "none":     w = 1.
    The weights are constants (no gradient); they multiply the policy term of ``clipped_policy_loss``.
    They are 1 wherever the two log-probs agree. Metrics, over masked tokens whatever the level:
    mismatch_mean (mean |delta|), mismatch_max (max |delta|), weight_mean, capped_frac (tokens where the
    cap binds).
    """
    if level not in IS_LEVELS:
        raise ValueError(f"level (config algo.is_correction) must be one of {IS_LEVELS}, got {level!r}")
    if not cap >= 1.0:
        raise ValueError(f"cap (config algo.is_cap) must be >= 1 so agreeing tokens keep weight 1, got {cap}")
    for name, tensor in (("sampler_logp", sampler_logp), ("loss_mask", loss_mask)):
        if tensor.shape != train_logp.shape:
            shapes = f"{tuple(train_logp.shape)}, got {tuple(tensor.shape)}"
            raise ValueError(f"{name} must be [B, T] like train_logp {shapes}")
    active = loss_mask > 0
    zero = torch.zeros((), dtype=torch.float64)
    delta = torch.where(active, train_logp.detach().double() - sampler_logp.detach().double(), zero)
    if level == "token":
        raw = torch.exp(delta)
    elif level == "sequence":
        raw = torch.exp(delta.sum(dim=1, keepdim=True)).expand_as(delta)
    else:
        raw = torch.ones_like(delta)
    weights = torch.where(active, raw.clamp(max=cap), torch.ones((), dtype=torch.float64))
    metrics = {
        "mismatch_mean": _masked_mean(delta.abs(), active),
        "mismatch_max": float(delta.abs()[active].max()) if active.any() else 0.0,
        "weight_mean": _masked_mean(weights, active, empty=1.0),
        "capped_frac": _masked_mean(raw > cap, active),
    }
    return weights.to(train_logp.dtype), metrics


def _masked_mean(values: torch.Tensor, active: torch.Tensor, empty: float = 0.0) -> float:
    """Plain mean over active tokens, for metrics (no gradient); ``empty`` when there is none."""
    count = int(active.sum())
    if count == 0:
        return empty
    return float(values.detach().to(torch.float64)[active].sum() / count)
