"""gtpo.method.losses: the clipped surrogate, its aggregation modes, gradient accumulation, KL and metrics.

Single-token cases check the clip boundaries and their gradients by hand; a tiny softmax policy with a
shared weight matrix checks that micro-batch gradients (given the global denominator) add up to the
full-batch gradient in every aggregation mode.
"""

from __future__ import annotations

import math

import pytest
import torch

from gtpo.method.losses import LOSS_AGGS, aggregate, clipped_policy_loss


def _one_token(ratio: float, advantage: float, **kwargs: object) -> tuple[float, float, dict[str, float]]:
    """Loss and d loss / d logp for a single token whose probability ratio new/old is ``ratio``."""
    old = torch.tensor([[-1.0]])
    logp = (old + math.log(ratio)).requires_grad_(True)
    loss, metrics = clipped_policy_loss(logp, old, torch.tensor([[advantage]]), torch.ones(1, 1), **kwargs)
    loss.backward()
    assert logp.grad is not None
    return loss.item(), logp.grad.item(), metrics


# ---- ratio 1: plain policy gradient ----------------------------------------------------------------


def test_ratio_one_is_plain_policy_gradient_token_mean() -> None:
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -0.7, -9.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-0.5, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, _ = clipped_policy_loss(logp, logp.detach(), adv, mask)
    n = 5  # masked tokens
    assert loss.item() == pytest.approx(-(1.0 + 1.0 + 1.0 - 0.5 - 0.5) / n)
    as_bool, _ = clipped_policy_loss(logp, logp.detach(), adv, mask.bool())
    assert as_bool.item() == loss.item()
    loss.backward()
    # the gradient of -A * rho at rho = 1 is the REINFORCE gradient -A * d logp
    assert logp.grad is not None
    assert torch.allclose(logp.grad, -adv * mask / n)


def test_ratio_one_seq_mean_token_mean_by_hand() -> None:
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -0.7, -9.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-0.5, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, _ = clipped_policy_loss(logp, logp.detach(), adv, mask, agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(-((1.0 + 1.0 + 1.0) / 3 + (-0.5 - 0.5) / 2) / 2)
    loss.backward()
    assert logp.grad is not None
    expected = torch.tensor([[-1.0 / 3, -1.0 / 3, -1.0 / 3], [0.5 / 2, 0.5 / 2, 0.0]]) / 2
    assert torch.allclose(logp.grad, expected)


def test_ratio_one_token_sum_norm_divides_by_the_fixed_normalizer() -> None:
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -0.7, -9.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-0.5, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    default, _ = clipped_policy_loss(logp, logp.detach(), adv, mask, agg="seq-mean-token-sum-norm")
    assert default.item() == pytest.approx(-(3.0 - 1.0) / (2 * 3))  # B * T
    given, _ = clipped_policy_loss(logp, logp.detach(), adv, mask, agg="seq-mean-token-sum-norm", denominator=2 * 100)
    assert given.item() == pytest.approx(-(3.0 - 1.0) / (2 * 100))  # sequences * length budget


# ---- clip boundaries -------------------------------------------------------------------------------


def test_positive_advantage_is_clipped_just_past_one_plus_clip_high() -> None:
    loss, grad, metrics = _one_token(1.2 * 1.001, 1.0, clip_high=0.2)
    assert loss == pytest.approx(-1.2)
    assert grad == 0.0
    assert metrics["clipfrac"] == 1.0
    loss, grad, metrics = _one_token(1.2 * 0.999, 1.0, clip_high=0.2)
    assert loss == pytest.approx(-1.2 * 0.999)
    assert grad == pytest.approx(-1.2 * 0.999)  # d(-A rho)/d logp = -A rho
    assert metrics["clipfrac"] == 0.0


def test_clip_high_is_separate_from_clip_low() -> None:
    _, grad, _ = _one_token(1.25, 1.0, clip_low=0.2, clip_high=0.28)
    assert grad == pytest.approx(-1.25)  # inside 1 + 0.28
    loss, grad, _ = _one_token(1.3, 1.0, clip_low=0.2, clip_high=0.28)
    assert (loss, grad) == (pytest.approx(-1.28), 0.0)


def test_negative_advantage_is_clipped_just_below_one_minus_clip_low() -> None:
    loss, grad, _ = _one_token(0.8 * 0.999, -1.0, clip_low=0.2)
    assert loss == pytest.approx(0.8)
    assert grad == 0.0
    loss, grad, _ = _one_token(0.8 * 1.001, -1.0, clip_low=0.2)
    assert loss == pytest.approx(0.8 * 1.001)
    assert grad == pytest.approx(0.8 * 1.001)


def test_clip_never_stops_a_gradient_that_moves_back_toward_old_policy() -> None:
    # A > 0 and rho below 1 - clip_low, or A < 0 and rho above 1 + clip_high: the pessimistic min keeps rho*A
    loss, grad, _ = _one_token(0.5, 1.0)
    assert (loss, grad) == (pytest.approx(-0.5), pytest.approx(-0.5))
    loss, grad, _ = _one_token(1.5, -1.0)
    assert (loss, grad) == (pytest.approx(1.5), pytest.approx(1.5))


def test_dual_clip_bounds_large_ratios_for_negative_advantages() -> None:
    loss, grad, metrics = _one_token(4.0, -2.0, dual_clip=3.0)
    assert loss == pytest.approx(3.0 * 2.0)  # -c * A
    assert grad == 0.0
    assert metrics["dual_clipfrac"] == 1.0
    assert metrics["clipfrac"] == 0.0
    loss, grad, metrics = _one_token(2.5, -2.0, dual_clip=3.0)
    assert (loss, grad) == (pytest.approx(2.5 * 2.0), pytest.approx(2.5 * 2.0))
    assert metrics["dual_clipfrac"] == 0.0
    loss, _, _ = _one_token(4.0, -2.0)
    assert loss == pytest.approx(4.0 * 2.0)  # without dual clip the loss is unbounded in rho
    loss, grad, _ = _one_token(4.0, 2.0, dual_clip=3.0)
    assert (loss, grad) == (pytest.approx(-1.2 * 2.0), 0.0)  # positive A: ordinary clip only


# ---- masking ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", LOSS_AGGS)
def test_fully_masked_rows_contribute_nothing(agg: str) -> None:
    torch.manual_seed(0)
    logp = -torch.rand(2, 4) - 0.1
    old = logp + 0.1 * torch.randn(2, 4)
    adv = torch.randn(2, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # a third row, fully masked, full of values that would poison any arithmetic they reached
    padded_logp = torch.cat([logp, torch.tensor([[-math.inf, math.nan, 0.0, 50.0]])]).requires_grad_(True)
    poison = torch.tensor([[0.0, math.nan, -math.inf, -50.0]])
    base_logp = logp.clone().requires_grad_(True)
    denominator = 2.0 * 4 if agg == "seq-mean-token-sum-norm" else None  # only that default depends on B
    loss, metrics = clipped_policy_loss(base_logp, old, adv, mask, agg=agg, denominator=denominator)
    padded_loss, padded_metrics = clipped_policy_loss(
        padded_logp,
        torch.cat([old, poison]),
        torch.cat([adv, torch.tensor([[math.nan, 1.0, 1.0, 1.0]])]),
        torch.cat([mask, torch.zeros(1, 4)]),
        agg=agg,
        denominator=denominator,
        ref_logp=torch.cat([old, poison]),
        entropy=torch.cat([torch.rand(2, 4), torch.full((1, 4), math.nan)]),
    )
    assert padded_loss.item() == pytest.approx(loss.item())
    loss.backward()
    padded_loss.backward()
    assert padded_logp.grad is not None and base_logp.grad is not None
    assert torch.allclose(padded_logp.grad[:2], base_logp.grad)
    assert torch.equal(padded_logp.grad[2], torch.zeros(4))
    assert all(math.isfinite(v) for v in padded_metrics.values())
    assert padded_metrics["ratio_max"] == pytest.approx(metrics["ratio_max"])


@pytest.mark.parametrize("agg", LOSS_AGGS)
def test_all_masked_micro_batch_gives_zero_loss_and_finite_metrics(agg: str) -> None:
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, metrics = clipped_policy_loss(
        logp,
        torch.zeros(2, 3),
        torch.ones(2, 3),
        torch.zeros(2, 3),
        agg=agg,
        ref_logp=torch.zeros(2, 3),
        entropy=torch.ones(2, 3),
    )
    loss.backward()
    assert loss.item() == 0.0
    assert logp.grad is not None and torch.equal(logp.grad, torch.zeros(2, 3))
    assert all(math.isfinite(v) for v in metrics.values())


# ---- gradient accumulation -------------------------------------------------------------------------


class _TinyPolicy:
    """logp of fixed actions under softmax(x @ W): a shared parameter, like a real model's weights."""

    def __init__(self, batch: int, length: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch, length, 5, generator=gen)
        self.actions = torch.randint(0, 7, (batch, length), generator=gen)
        self.weight = torch.randn(5, 7, generator=gen).requires_grad_(True)
        with torch.no_grad():
            logp, _ = self(slice(None))
        # old and reference log-probs off by noise: ratios fall on both sides of the clip range
        self.old_logp = logp + 0.3 * torch.randn(batch, length, generator=gen)
        self.ref_logp = logp + 0.5 * torch.randn(batch, length, generator=gen)
        self.advantages = torch.randn(batch, length, generator=gen)
        lengths = torch.tensor([length, 3, 0, 1, length - 2, 5])[:batch]  # ragged, one empty row
        self.mask = (torch.arange(length)[None, :] < lengths[:, None]).float()

    def __call__(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = torch.log_softmax(self.x[rows] @ self.weight, dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return log_probs.gather(-1, self.actions[rows, :, None]).squeeze(-1), entropy

    def loss(self, rows: slice, agg: str, denominator: float | None) -> torch.Tensor:
        logp, entropy = self(rows)
        loss, _ = clipped_policy_loss(
            logp,
            self.old_logp[rows],
            self.advantages[rows],
            self.mask[rows],
            clip_low=0.2,
            clip_high=0.28,
            dual_clip=3.0,
            agg=agg,
            denominator=denominator,
            ref_logp=self.ref_logp[rows],
            kl_coef=0.05,
            entropy=entropy,
            entropy_coef=0.01,
        )
        return loss


def _global_denominator(agg: str, mask: torch.Tensor) -> float:
    if agg == "token-mean":
        return mask.sum().item()
    if agg == "seq-mean-token-mean":
        return float((mask.sum(1) > 0).sum().item())
    return float(mask.numel())  # B * T: the full batch's own default


@pytest.mark.parametrize("agg", LOSS_AGGS)
@pytest.mark.parametrize("micro", [1, 2, 4])
def test_gradient_accumulation_equals_one_big_batch(agg: str, micro: int) -> None:
    policy = _TinyPolicy(batch=6, length=8, seed=3)
    full = policy.loss(slice(None), agg, None)
    full.backward()
    assert policy.weight.grad is not None
    full_grad = policy.weight.grad.clone()
    policy.weight.grad = None

    denominator = _global_denominator(agg, policy.mask)
    total = 0.0
    for start in range(0, 6, micro):
        part = policy.loss(slice(start, start + micro), agg, denominator)
        part.backward()
        total += part.item()
    assert total == pytest.approx(full.item(), abs=1e-6)
    assert torch.allclose(policy.weight.grad, full_grad, atol=1e-6)
    assert full_grad.abs().sum() > 0


def test_without_the_global_denominator_micro_batches_do_not_add_up() -> None:
    # why the argument exists: per-micro-batch token means weight tokens of short micro-batches more
    policy = _TinyPolicy(batch=6, length=8, seed=3)
    full = policy.loss(slice(None), "token-mean", None).item()
    parts = [policy.loss(slice(s, s + 2), "token-mean", None).item() for s in range(0, 6, 2)]
    assert sum(parts) / 3 != pytest.approx(full, abs=1e-4)


# ---- KL, entropy, metrics --------------------------------------------------------------------------


def test_k3_kl_is_zero_at_the_reference_and_positive_elsewhere() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv, mask = torch.tensor([[0.5, -0.5]]), torch.ones(1, 2)
    plain, _ = clipped_policy_loss(logp, logp.detach(), adv, mask)
    same, metrics = clipped_policy_loss(logp, logp.detach(), adv, mask, ref_logp=logp.detach(), kl_coef=0.1)
    assert metrics["kl_ref"] == 0.0
    assert same.item() == pytest.approx(plain.item())
    ref = torch.tensor([[-0.5, -2.3]])
    shifted, metrics = clipped_policy_loss(logp, logp.detach(), adv, mask, ref_logp=ref, kl_coef=0.1)
    k3 = [math.exp(0.5) - 0.5 - 1.0, math.exp(-0.3) + 0.3 - 1.0]  # exp(d) - d - 1 with d = ref - logp
    assert metrics["kl_ref"] == pytest.approx(sum(k3) / 2)
    assert all(v > 0 for v in k3)
    assert shifted.item() == pytest.approx(plain.item() + 0.1 * sum(k3) / 2)


def test_entropy_bonus_lowers_the_loss_and_is_reported() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    adv, mask = torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    entropy = torch.tensor([[0.6, 0.2, 9.0]])
    plain, _ = clipped_policy_loss(logp, logp, adv, mask)
    bonus, metrics = clipped_policy_loss(logp, logp, adv, mask, entropy=entropy, entropy_coef=0.5)
    assert metrics["entropy"] == pytest.approx((0.6 + 0.2) / 2)
    assert bonus.item() == pytest.approx(plain.item() - 0.5 * (0.6 + 0.2) / 2)


def test_metrics_by_hand() -> None:
    old = torch.zeros(1, 4)
    ratios = [1.0, 1.5, 0.5, 1.1]
    logp = torch.log(torch.tensor([ratios]))
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0]])  # token 2 clipped above, token 3 clipped below
    _, metrics = clipped_policy_loss(logp, old, adv, torch.ones(1, 4), ref_logp=old, entropy=torch.ones(1, 4))
    expected_keys = {"policy", "clipfrac", "dual_clipfrac", "approx_kl", "ratio_mean", "ratio_min"}
    assert expected_keys | {"ratio_max", "kl_ref", "entropy"} == set(metrics)
    assert metrics["clipfrac"] == pytest.approx(2 / 4)
    assert metrics["ratio_mean"] == pytest.approx(sum(ratios) / 4)
    assert (metrics["ratio_min"], metrics["ratio_max"]) == (pytest.approx(0.5), pytest.approx(1.5))
    assert metrics["approx_kl"] == pytest.approx(sum((r - 1) - math.log(r) for r in ratios) / 4)
    assert metrics["policy"] == pytest.approx(-(1.0 + 1.2 - 0.8 + 1.1) / 4)
    assert all(math.isfinite(v) for v in metrics.values())


# ---- bad input -------------------------------------------------------------------------------------


def test_bad_arguments_are_errors() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="loss_agg"):
        clipped_policy_loss(x, x, x, x, agg="sum")
    with pytest.raises(ValueError, match="advantages"):
        clipped_policy_loss(x, x, torch.zeros(2, 4), x)
    with pytest.raises(ValueError, match="denominator"):
        clipped_policy_loss(x, x, x, x, denominator=0.0)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_policy_loss(x, x, x, x, dual_clip=0.5)
    with pytest.raises(ValueError, match="ref_logp"):
        clipped_policy_loss(x, x, x, x, kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy"):
        clipped_policy_loss(x, x, x, x, entropy_coef=0.1)


def test_aggregate_alone_follows_its_definitions() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aggregate(values, mask, "token-mean").item() == pytest.approx((1 + 2 + 4) / 3)
    assert aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx(((1 + 2) / 2 + 4 / 1) / 2)
    assert aggregate(values, mask, "seq-mean-token-sum-norm").item() == pytest.approx((1 + 2 + 4) / (2 * 3))
    assert aggregate(values, mask, "token-mean", denominator=10).item() == pytest.approx((1 + 2 + 4) / 10)
