"""The training-signal controls as pure functions, against values computed by hand: DAPO's soft overlong
penalty, the informative-group filter, truncated importance weights and their use in the policy loss."""

from __future__ import annotations

import math

import pytest
import torch

from gtpo.method.losses import clipped_policy_loss, importance_weights
from gtpo.method.rewards import informative_groups, overlong_penalty

# ---- overlong_penalty ---------------------------------------------------------------------------------


def test_overlong_penalty_is_zero_before_the_buffer_and_linear_inside_it() -> None:
    # L_max = 100, buffer 20: free up to 80, then -(L - 80) / 20, -1 at the cap
    got = overlong_penalty([10, 80, 81, 90, 99, 100], max_length=100, buffer=20)
    assert got == pytest.approx([0.0, 0.0, -1 / 20, -10 / 20, -19 / 20, -1.0])


def test_overlong_penalty_factor_and_zero_buffer() -> None:
    assert overlong_penalty([90, 100], max_length=100, buffer=20, factor=0.5) == pytest.approx([-0.25, -0.5])
    assert overlong_penalty([99, 100, 101], max_length=100, buffer=0) == [0.0, -1.0, -1.0]


def test_overlong_penalty_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty([1], max_length=10, buffer=11)
    with pytest.raises(ValueError, match=r"overlong\.penalty"):
        overlong_penalty([1], max_length=10, buffer=2, factor=-1.0)


# ---- informative_groups -------------------------------------------------------------------------------


def test_groups_whose_scores_all_agree_are_not_informative() -> None:
    # group 0 all right (1, 1), group 1 all wrong with the same penalty, group 2 mixed, group 5 a shaped failure
    scores = [1.0, 1.0, -0.1, -0.1, 1.0, 0.0, 1.0, 0.3]
    groups = [0, 0, 1, 1, 2, 2, 5, 5]
    assert informative_groups(scores, groups) == [False, False, False, False, True, True, True, True]


def test_a_format_event_alone_makes_a_group_informative() -> None:
    # all wrong, one with an invalid call: GTPO's format penalty still separates them
    assert informative_groups([0.0, -0.1, 0.0], [3, 3, 3]) == [True, True, True]
    assert informative_groups([0.5], [1]) == [False]  # a group of one has no spread


# ---- importance_weights -------------------------------------------------------------------------------

MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def test_weights_are_one_when_sampler_and_trainer_agree() -> None:
    logp = torch.tensor([[-0.5, -1.2, -7.0], [-0.1, -2.0, -0.3]])
    for level in ("none", "token", "sequence"):
        weights, metrics = importance_weights(logp, logp.clone(), MASK, cap=2.0, level=level)
        assert torch.equal(weights, torch.ones_like(logp))
        assert metrics["mismatch_mean"] == 0.0 and metrics["mismatch_max"] == 0.0
        assert metrics["weight_mean"] == 1.0 and metrics["capped_frac"] == 0.0


def test_token_level_weights_by_hand() -> None:
    sampler = torch.tensor([[-1.0, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    # deltas on masked tokens: 0.5, -0.25 | 1.0, -1.0, 0.0 (the unmasked third token of row 0 is ignored)
    train = sampler + torch.tensor([[0.5, -0.25, 9.0], [1.0, -1.0, 0.0]])
    weights, metrics = importance_weights(train, sampler, MASK, cap=2.0, level="token")
    expected = [[math.exp(0.5), math.exp(-0.25), 1.0], [2.0, math.exp(-1.0), 1.0]]  # exp(1) = 2.72 capped at 2
    assert weights.tolist() == [pytest.approx(row, rel=1e-6) for row in expected]
    assert metrics["mismatch_mean"] == pytest.approx((0.5 + 0.25 + 1.0 + 1.0 + 0.0) / 5)
    assert metrics["mismatch_max"] == pytest.approx(1.0)
    assert metrics["capped_frac"] == pytest.approx(1 / 5)
    assert metrics["weight_mean"] == pytest.approx((math.exp(0.5) + math.exp(-0.25) + 2.0 + math.exp(-1.0) + 1.0) / 5)


def test_sequence_level_weights_by_hand() -> None:
    sampler = torch.zeros(2, 3)
    train = torch.tensor([[0.5, -0.25, 9.0], [0.4, 0.4, 0.4]])
    weights, metrics = importance_weights(train, sampler, MASK, cap=3.0, level="sequence")
    row0 = math.exp(0.5 - 0.25)  # the product of the row's token ratios
    row1 = min(math.exp(1.2), 3.0)  # exp(1.2) = 3.32, capped
    assert weights[0, :2].tolist() == pytest.approx([row0, row0], rel=1e-6)
    assert weights[1].tolist() == pytest.approx([row1] * 3, rel=1e-6)
    assert weights[0, 2].item() == 1.0  # off the mask
    assert metrics["capped_frac"] == pytest.approx(3 / 5)


def test_importance_weights_reject_bad_settings() -> None:
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="is_cap"):
        importance_weights(logp, logp, torch.ones(1, 2), cap=0.5, level="token")
    with pytest.raises(ValueError, match="is_correction"):
        importance_weights(logp, logp, torch.ones(1, 2), cap=2.0, level="tokens")
    with pytest.raises(ValueError, match="sampler_logp"):
        importance_weights(logp, torch.zeros(1, 3), torch.ones(1, 2), cap=2.0, level="token")


def test_weights_scale_each_token_policy_term_and_its_gradient() -> None:
    logp = torch.tensor([[-0.5, -1.0], [-0.3, -0.7]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    mask = torch.ones(2, 2)
    w = torch.tensor([[0.5, 2.0], [1.0, 0.25]])
    loss, _ = clipped_policy_loss(logp, logp.detach(), adv, mask, weights=w)
    # at ratio 1 the token loss is -A, weighted: -(0.5*1 + 2*(-1) + 1*2 + 0.25*0.5) / 4
    assert loss.item() == pytest.approx(-(0.5 - 2.0 + 2.0 + 0.125) / 4)
    loss.backward()
    assert torch.allclose(logp.grad, -adv * w / 4)
    plain, _ = clipped_policy_loss(logp, logp.detach(), adv, mask, weights=torch.ones(2, 2))
    unweighted, _ = clipped_policy_loss(logp, logp.detach(), adv, mask)
    assert plain.item() == unweighted.item()
