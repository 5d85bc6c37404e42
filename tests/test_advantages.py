"""gtpo.method.advantages: discounted turn returns, GTPO/GRPO normalization, broadcasting to tokens.

Expected values are hand arithmetic; the vectorized code is also checked against a plain-Python loop on
random ragged groups. The invariances tested are the ones that actually hold (see docs/algorithms.md):
scaling every reward of a set (with scale_by_std), adding a constant to every *return* of a set (which
single-turn rewards and, under per-turn-index normalization, equal-length final rewards produce), but not
adding a constant to every turn reward of ragged multi-turn trajectories.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from gtpo.method.advantages import (
    call_sign_agreement,
    discounted_returns,
    grpo_advantages,
    gtpo_advantages,
    turns_to_tokens,
)
from gtpo.method.rewards import format_ok, grpo_rewards, turn_rewards


def _padded(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged per-trajectory turn rewards -> ([B, K] rewards, [B, K] mask)."""
    k = max(len(r) for r in rows)
    rewards = torch.zeros(len(rows), k, dtype=torch.float64)
    mask = torch.zeros(len(rows), k, dtype=torch.bool)
    for i, row in enumerate(rows):
        rewards[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        mask[i, : len(row)] = True
    return rewards, mask


# ---- discounted_returns ----------------------------------------------------------------------------


def test_three_turn_returns_by_hand() -> None:
    r1, r2, r3 = 0.5, -0.1, 1.0
    rewards, mask = _padded([[r1, r2, r3]])
    expected = [r1 + 0.9 * r2 + 0.81 * r3, r2 + 0.9 * r3, r3]
    assert discounted_returns(rewards, mask, 0.9)[0].tolist() == pytest.approx(expected, abs=1e-12)


def test_padded_turns_get_zero_and_do_not_leak() -> None:
    rewards, mask = _padded([[1.0, 2.0], [-0.1, 0.0, 1.0]])
    rewards[0, 2] = 100.0  # garbage under the mask must not reach turn 2 or turn 1 of trajectory 0
    returns = discounted_returns(rewards, mask, 0.5)
    assert returns[0].tolist() == pytest.approx([1.0 + 0.5 * 2.0, 2.0, 0.0], abs=1e-12)
    assert returns[1].tolist() == pytest.approx([-0.1 + 0.5 * 0.0 + 0.25 * 1.0, 0.0 + 0.5 * 1.0, 1.0])


def test_a_masked_turn_inside_the_mask_still_counts_its_distance() -> None:
    # not produced by turn_rewards (masks are prefixes there), but the definition is positional:
    # R_j = sum over valid k >= j of gamma^(k - j) r_k
    rewards = torch.tensor([[1.0, 7.0, 2.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True]])
    assert discounted_returns(rewards, mask, 0.5)[0].tolist() == pytest.approx([1.0 + 0.25 * 2.0, 0.0, 2.0])


def test_gamma_one_sums_and_gamma_zero_keeps_rewards() -> None:
    rewards, mask = _padded([[0.2, -0.1, 1.0]])
    summed = [0.2 - 0.1 + 1.0, -0.1 + 1.0, 1.0]
    assert discounted_returns(rewards, mask, 1.0)[0].tolist() == pytest.approx(summed)
    assert discounted_returns(rewards, mask, 0.0)[0].tolist() == pytest.approx([0.2, -0.1, 1.0])


@pytest.mark.parametrize("gamma", [-0.1, 1.5])
def test_gamma_out_of_range_is_an_error(gamma: float) -> None:
    rewards, mask = _padded([[1.0]])
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(rewards, mask, gamma)


def test_mismatched_mask_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match="turn_mask"):
        discounted_returns(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool), 0.9)


# ---- gtpo_advantages: hand cases -------------------------------------------------------------------


def test_group_norm_pools_all_turns_of_the_group() -> None:
    # trajectory 0: one correct turn, R = [1]; trajectory 1: no-call penalty then 0, R = [-0.1 + 0.9 * 0, 0]
    rewards, mask = _padded([[1.0], [-0.1, 0.0]])
    pooled = [1.0, -0.1, 0.0]
    mean = (1.0 - 0.1 + 0.0) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in pooled) / 3)  # population std (divide by n)
    adv = gtpo_advantages(rewards, mask, torch.tensor([5, 5]), 0.9, eps=1e-6)
    assert adv[0].tolist() == pytest.approx([(1.0 - mean) / (std + 1e-6), 0.0])
    assert adv[1].tolist() == pytest.approx([(-0.1 - mean) / (std + 1e-6), (0.0 - mean) / (std + 1e-6)])


def test_turn_index_norm_uses_each_position_separately() -> None:
    rewards, mask = _padded([[0.0, 1.0], [0.0, 0.0], [1.0]])
    returns_0 = [0.9 * 1.0, 0.0, 1.0]  # turn 1 of all three trajectories
    returns_1 = [1.0, 0.0]  # turn 2 exists only in trajectories 0 and 1
    m0, m1 = sum(returns_0) / 3, sum(returns_1) / 2
    s0 = math.sqrt(sum((x - m0) ** 2 for x in returns_0) / 3)
    s1 = math.sqrt(sum((x - m1) ** 2 for x in returns_1) / 2)
    adv = gtpo_advantages(rewards, mask, torch.tensor([0, 0, 0]), 0.9, norm="turn_index", eps=0.0)
    assert adv[:, 0].tolist() == pytest.approx([(x - m0) / s0 for x in returns_0])
    assert adv[:2, 1].tolist() == pytest.approx([(x - m1) / s1 for x in returns_1])
    assert adv[2, 1] == 0.0


def test_batch_norm_pools_every_turn_of_every_group() -> None:
    # group 3 holds R = [1] and R = [-0.1 + 0.9 * 1.0, 1.0]; group 8 holds R = [0]: one set of four returns
    rewards, mask = _padded([[1.0], [-0.1, 1.0], [0.0]])
    pooled = [1.0, -0.1 + 0.9 * 1.0, 1.0, 0.0]
    mean = sum(pooled) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in pooled) / 4)
    adv = gtpo_advantages(rewards, mask, torch.tensor([3, 3, 8]), 0.9, norm="batch", eps=0.0)
    assert adv[0, 0].item() == pytest.approx((1.0 - mean) / std)
    assert adv[1].tolist() == pytest.approx([(pooled[1] - mean) / std, (1.0 - mean) / std])
    # the one-trajectory group 8 is a set of one under "group" (advantage 0) but not under "batch"
    assert adv[2, 0].item() == pytest.approx((0.0 - mean) / std) and adv[2, 0].item() < 0
    assert gtpo_advantages(rewards, mask, torch.tensor([3, 3, 8]), 0.9, norm="group")[2, 0].item() == 0.0


def test_turn_index_norm_pushes_a_long_trajectory_harder_than_its_turn_count() -> None:
    """The length bias of per-turn-index normalization, by hand (docs/algorithms.md, section 4).

    Six 1-turn failures, one 3-turn success, one 3-turn failure, gamma = 1: every failure's every return is 0.
    Pooled (group or batch), equal returns get equal advantages, so the long failure is pushed down exactly
    3 times as hard as a short one: once per turn. Per turn index, turns 2 and 3 are compared only with the
    other long trajectory, a set {1, 0} standardized to +-1, while turn 1's set of eight gives a return of 0
    only -1/sqrt(7): the long failure is pushed 1 + 2 sqrt(7) = 6.3 times as hard.
    """
    rows = [[0.0]] * 6 + [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    rewards, mask = _padded(rows)
    ids = torch.zeros(8, dtype=torch.long)
    short, long_fail = 0, 7

    pooled = gtpo_advantages(rewards, mask, ids, 1.0, norm="group", eps=0.0)
    # 12 returns, three of them 1: mean 1/4, population std sqrt(3)/4
    assert pooled[short, 0].item() == pytest.approx((0 - 1 / 4) / (math.sqrt(3) / 4))
    assert pooled[long_fail].tolist() == pytest.approx([(0 - 1 / 4) / (math.sqrt(3) / 4)] * 3)
    assert pooled[long_fail].sum().item() / pooled[short].sum().item() == pytest.approx(3.0)
    assert torch.allclose(gtpo_advantages(rewards, mask, ids, 1.0, norm="batch", eps=0.0), pooled)

    per_index = gtpo_advantages(rewards, mask, ids, 1.0, norm="turn_index", eps=0.0)
    # turn 1: eight returns, one of them 1: mean 1/8, population std sqrt(7)/8; turns 2 and 3: {1, 0} -> +-1
    assert per_index[short, 0].item() == pytest.approx(-1 / math.sqrt(7))
    assert per_index[long_fail].tolist() == pytest.approx([-1 / math.sqrt(7), -1.0, -1.0])
    assert per_index[long_fail].sum().item() / per_index[short].sum().item() == pytest.approx(1 + 2 * math.sqrt(7))


def test_groups_do_not_mix_and_ids_need_not_be_contiguous() -> None:
    rewards, mask = _padded([[1.0], [0.0], [5.0], [3.0]])
    adv = gtpo_advantages(rewards, mask, torch.tensor([-7, -7, 1000, 1000]), 0.9, eps=0.0)
    # each group is {high, low} with population std = half the gap: advantages +1 / -1
    assert adv[:, 0].tolist() == pytest.approx([1.0, -1.0, 1.0, -1.0])


def test_mean_centering_only_without_std() -> None:
    rewards, mask = _padded([[1.0], [0.0], [0.0], [0.0]])
    adv = gtpo_advantages(rewards, mask, torch.zeros(4, dtype=torch.long), 0.9, scale_by_std=False)
    assert adv[:, 0].tolist() == pytest.approx([1.0 - 0.25, -0.25, -0.25, -0.25])


@pytest.mark.parametrize("norm", ["group", "turn_index"])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_zero_variance_and_singleton_sets_give_zero_not_nan(norm: str, scale_by_std: bool) -> None:
    # group 0: identical trajectories whose returns are all 0.5 + 0.5 * 1.0 = 1.0 (every set constant);
    # group 1: a single one-turn trajectory (a set of one)
    rewards, mask = _padded([[0.5, 1.0], [0.5, 1.0], [0.3]])
    adv = gtpo_advantages(rewards.float(), mask, torch.tensor([0, 0, 1]), 0.5, norm=norm, scale_by_std=scale_by_std)
    assert torch.equal(adv, torch.zeros_like(adv))


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_batch_norm_of_equal_returns_or_a_single_turn_is_zero(scale_by_std: bool) -> None:
    # across two groups every return is 0.5 + 0.5 * 1.0 = 1.0 or 1.0: one constant set
    rewards, mask = _padded([[0.5, 1.0], [1.0], [0.5, 1.0]])
    adv = gtpo_advantages(rewards, mask, torch.tensor([0, 1, 1]), 0.5, norm="batch", scale_by_std=scale_by_std)
    assert torch.equal(adv, torch.zeros_like(adv))
    one, one_mask = _padded([[0.3]])
    assert gtpo_advantages(one, one_mask, torch.tensor([0]), 0.5, norm="batch").item() == 0.0


def test_constant_set_is_exactly_zero_despite_rounding_in_the_mean() -> None:
    # in float64, mean(0.1, 0.1, 0.1) - 0.1 = 1.4e-17, not 0: dividing by std + eps would amplify it
    # (to +-1 with eps = 0); a set whose values are all equal must give exactly 0
    rewards, mask = _padded([[0.1], [0.1], [0.1]])
    assert (rewards[:, 0] - rewards[:, 0].mean()).abs().max() > 0  # the residue this test is about
    for eps in (0.0, 1e-6):
        adv = gtpo_advantages(rewards, mask, torch.tensor([4, 4, 4]), 0.9, eps=eps)
        assert torch.equal(adv, torch.zeros_like(adv))
    grpo = grpo_advantages(rewards[:, 0], torch.tensor([4, 4, 4]), eps=0.0)
    assert torch.equal(grpo, torch.zeros(3, dtype=torch.float64))


def test_masked_turns_get_zero_and_their_content_is_ignored() -> None:
    rewards, mask = _padded([[1.0, 0.0, 0.5], [0.2], [0.0, 0.3]])
    garbage = torch.where(mask, rewards, torch.full_like(rewards, 42.0))
    for norm in ("group", "turn_index", "batch"):
        adv = gtpo_advantages(garbage, mask, torch.tensor([1, 1, 1]), 0.9, norm=norm)
        assert torch.all(adv[~mask] == 0.0)
        assert torch.equal(adv, gtpo_advantages(rewards, mask, torch.tensor([1, 1, 1]), 0.9, norm=norm))


def test_bad_arguments_are_errors() -> None:
    rewards, mask = _padded([[1.0], [0.0]])
    with pytest.raises(ValueError, match="adv_norm"):
        gtpo_advantages(rewards, mask, torch.tensor([0, 0]), 0.9, norm="trajectory")
    with pytest.raises(ValueError, match="group_ids"):
        gtpo_advantages(rewards, mask, torch.tensor([0]), 0.9)
    with pytest.raises(ValueError, match="integer"):
        gtpo_advantages(rewards, mask, torch.tensor([0.0, 1.0]), 0.9)
    with pytest.raises(ValueError, match="eps"):
        gtpo_advantages(rewards, mask, torch.tensor([0, 0]), 0.9, eps=-1.0)


# ---- properties on random ragged batches -----------------------------------------------------------


def _random_batch(seed: int) -> tuple[list[list[float]], list[int]]:
    rng = random.Random(seed)
    group_names = rng.sample(range(-50, 500), 4)  # arbitrary, non-contiguous ids
    rows, groups = [], []
    for g in group_names:
        for _ in range(rng.randint(1, 5)):
            n = rng.randint(1, 4)
            row = [rng.choice([0.0, -0.1, -0.2]) for _ in range(n)]
            row[-1] += rng.choice([0.0, 1.0, rng.random() * 0.5])
            rows.append(row)
            groups.append(g)
    order = list(range(len(rows)))
    rng.shuffle(order)  # members of a group need not be adjacent
    return [rows[i] for i in order], [groups[i] for i in order]


def _set_key(group: int, turn: int, norm: str) -> tuple[int, ...]:
    """The normalization set of turn ``turn`` of a trajectory in ``group``, as written in docs/algorithms.md."""
    return {"group": (group,), "turn_index": (group, turn), "batch": ()}[norm]


def _reference_gtpo(
    rows: list[list[float]], groups: list[int], gamma: float, norm: str, scale_by_std: bool, eps: float
) -> list[list[float]]:
    """Plain-Python GTPO advantages: the definition, written as loops."""
    returns = [[sum(gamma ** (k - j) * row[k] for k in range(j, len(row))) for j in range(len(row))] for row in rows]
    sets: dict[tuple[int, ...], list[float]] = {}
    for i, row_returns in enumerate(returns):
        for j, value in enumerate(row_returns):
            sets.setdefault(_set_key(groups[i], j, norm), []).append(value)
    out = []
    for i, row_returns in enumerate(returns):
        out_row = []
        for j, value in enumerate(row_returns):
            members = sets[_set_key(groups[i], j, norm)]
            if max(members) == min(members):
                out_row.append(0.0)
                continue
            mean = sum(members) / len(members)
            std = math.sqrt(sum((x - mean) ** 2 for x in members) / len(members))
            out_row.append((value - mean) / (std + eps) if scale_by_std else value - mean)
        out.append(out_row)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("norm", ["group", "turn_index", "batch"])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_vectorized_matches_loop_reference(seed: int, norm: str, scale_by_std: bool) -> None:
    rows, groups = _random_batch(seed)
    rewards, mask = _padded(rows)
    adv = gtpo_advantages(rewards, mask, torch.tensor(groups), 0.9, norm=norm, scale_by_std=scale_by_std)
    expected = _reference_gtpo(rows, groups, 0.9, norm, scale_by_std, 1e-6)
    for i, row in enumerate(expected):
        assert adv[i, : len(row)].tolist() == pytest.approx(row, abs=1e-9)


def _set_members(groups: list[int], mask: torch.Tensor, norm: str) -> dict[tuple[int, ...], list[tuple[int, int]]]:
    sets: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for i, j in mask.nonzero().tolist():
        sets.setdefault(_set_key(groups[i], j, norm), []).append((i, j))
    return sets


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("norm", ["group", "turn_index", "batch"])
def test_zero_mean_and_unit_mean_square_per_set(seed: int, norm: str) -> None:
    rows, groups = _random_batch(seed)
    rewards, mask = _padded(rows)
    adv = gtpo_advantages(rewards, mask, torch.tensor(groups), 0.9, norm=norm, eps=0.0)
    for members in _set_members(groups, mask, norm).values():
        values = torch.stack([adv[i, j] for i, j in members])
        assert values.sum().item() == pytest.approx(0.0, abs=1e-9)
        mean_square = (values**2).mean().item()
        assert mean_square == pytest.approx(1.0) or mean_square == 0.0  # 0 only for a constant set


@pytest.mark.parametrize("norm", ["group", "turn_index", "batch"])
def test_scaling_rewards_scales_nothing_with_std_and_everything_without(norm: str) -> None:
    rows, groups = _random_batch(11)
    rewards, mask = _padded(rows)
    ids = torch.tensor(groups)
    base = gtpo_advantages(rewards, mask, ids, 0.9, norm=norm, eps=0.0)
    assert torch.allclose(gtpo_advantages(3.0 * rewards, mask, ids, 0.9, norm=norm, eps=0.0), base)
    centered = gtpo_advantages(rewards, mask, ids, 0.9, norm=norm, scale_by_std=False)
    scaled = gtpo_advantages(3.0 * rewards, mask, ids, 0.9, norm=norm, scale_by_std=False)
    assert torch.allclose(scaled, 3.0 * centered)


def test_constant_shift_of_single_turn_rewards_changes_nothing() -> None:
    # one turn per trajectory: R = r, so a shift of every reward is a shift of every return of the set
    rewards, mask = _padded([[1.0], [0.0], [0.4], [0.0], [1.0]])
    ids = torch.tensor([3, 3, 3, 9, 9])
    for scale_by_std in (True, False):
        base = gtpo_advantages(rewards, mask, ids, 0.9, scale_by_std=scale_by_std)
        shifted = gtpo_advantages(rewards + 0.7, mask, ids, 0.9, scale_by_std=scale_by_std)
        assert torch.allclose(shifted, base)


def test_final_reward_shift_is_invariant_per_turn_index_for_equal_lengths() -> None:
    # all trajectories have 3 turns: +c on every last turn adds c * gamma^(2 - j) to every return at
    # position j, a constant within each turn-index set
    rows = [[0.0, -0.1, 1.0], [-0.1, 0.0, 0.0], [0.0, 0.0, 0.3]]
    rewards, mask = _padded(rows)
    shifted = rewards.clone()
    shifted[:, 2] += 0.5
    ids = torch.tensor([0, 0, 0])
    base = gtpo_advantages(rewards, mask, ids, 0.9, norm="turn_index")
    assert torch.allclose(gtpo_advantages(shifted, mask, ids, 0.9, norm="turn_index"), base)


def test_shifting_every_turn_reward_is_not_invariant_for_ragged_trajectories() -> None:
    # why the reward-shift invariance of GRPO does not carry over: with 1 vs 2 turns, +c on every turn adds
    # c to the 1-turn return but c * (1 + gamma) to the first return of the 2-turn trajectory
    rewards, mask = _padded([[1.0], [0.0, 0.0]])
    ids = torch.tensor([0, 0])
    base = gtpo_advantages(rewards, mask, ids, 0.9)
    shifted = gtpo_advantages(torch.where(mask, rewards + 0.5, rewards), mask, ids, 0.9)
    assert not torch.allclose(shifted, base)


# ---- GRPO ------------------------------------------------------------------------------------------


def test_grpo_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    adv = grpo_advantages(rewards, torch.tensor([2, 2, 2, 2, 8, 8]), eps=1e-6)
    mean, std = 0.5, 0.5  # group 2: two of four right; population std of {1, 0, 0, 1}
    hi, lo = (1.0 - mean) / (std + 1e-6), (0.0 - mean) / (std + 1e-6)
    assert adv.tolist() == pytest.approx([hi, lo, lo, hi, 0.0, 0.0])  # group 8 all right: no signal


def test_grpo_is_invariant_to_shift_and_scale() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.9])
    ids = torch.tensor([0, 0, 0, 0, 1, 1])
    base = grpo_advantages(rewards, ids, eps=0.0)
    assert torch.allclose(grpo_advantages(2.5 * rewards - 4.0, ids, eps=0.0), base)
    centered = grpo_advantages(rewards, ids, scale_by_std=False)
    assert torch.allclose(grpo_advantages(rewards - 4.0, ids, scale_by_std=False), centered)


def test_grpo_rejects_a_2d_reward() -> None:
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(2, 1), torch.tensor([0, 0]))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("norm", ["group", "turn_index"])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_single_turn_gtpo_without_shaping_or_penalty_equals_grpo(seed: int, norm: str, scale_by_std: bool) -> None:
    rng = random.Random(seed)
    groups = [g for g in rng.sample(range(1000), 3) for _ in range(rng.randint(1, 6))]
    correct = [rng.random() < 0.4 for _ in groups]
    invalid = [[False] for _ in groups]
    first_call = [True for _ in groups]
    rewards, mask = turn_rewards(
        [float(c) for c in correct], invalid, first_call, format_penalty=0.0, no_call_penalty=0.0
    )
    gtpo = gtpo_advantages(rewards, mask, torch.tensor(groups), 1.0, norm=norm, scale_by_std=scale_by_std)
    grpo = grpo_advantages(
        grpo_rewards(correct, format_ok(invalid, first_call)), torch.tensor(groups), scale_by_std=scale_by_std
    )
    assert torch.allclose(gtpo[:, 0], grpo, atol=1e-6)


# ---- turns_to_tokens -------------------------------------------------------------------------------


def test_turns_to_tokens_broadcasts_each_turn_and_zeroes_non_model_tokens() -> None:
    values = torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.0, 0.0]])
    turn_ids = torch.tensor([[-1, -1, 0, 0, -1, 1, 1, -1, 2], [-1, 0, 0, 0, -1, -1, -1, -1, -1]])
    expected = [
        [0.0, 0.0, 0.5, 0.5, 0.0, -1.0, -1.0, 0.0, 2.0],
        [0.0, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    assert turns_to_tokens(values, turn_ids).tolist() == expected


def test_turns_to_tokens_rejects_out_of_range_turn_ids() -> None:
    with pytest.raises(ValueError, match="turn_ids"):
        turns_to_tokens(torch.zeros(1, 2), torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="turn_ids"):
        turns_to_tokens(torch.zeros(1, 2), torch.tensor([[-2, 0]]))
    with pytest.raises(ValueError, match="same B"):
        turns_to_tokens(torch.zeros(2, 2), torch.tensor([[0, 1]]))


def test_call_sign_agreement_counts_calls_with_a_signed_advantage() -> None:
    # (0,0) valid +0.5 agrees; (0,1) valid -0.2 disagrees; (0,2) no call; (1,0) invalid -0.7 agrees;
    # (1,1) advantage 0 not counted; (1,2) valid +0.3 agrees -> 3 of 4.
    adv = torch.tensor([[0.5, -0.2, 0.9], [-0.7, 0.0, 0.3]])
    is_call = torch.tensor([[True, True, False], [True, True, True]])
    is_invalid = torch.tensor([[False, False, False], [True, False, False]])
    assert call_sign_agreement(adv, is_call, is_invalid) == (0.75, 4)
    share, counted = call_sign_agreement(torch.zeros(2, 3), is_call, is_invalid)
    assert counted == 0 and math.isnan(share)
    with pytest.raises(ValueError, match="one shape"):
        call_sign_agreement(adv, is_call[:, :2], is_invalid)
