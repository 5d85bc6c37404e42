"""Turn-credit variants beside GTPO's pooled normalization: per-turn-index sets that hold stopped trajectories
(``adv_norm="turn_index_carry"``), A2TGPO's per-index rewards accumulated (``"a2tgpo"``), the turn/trajectory
hybrid (``traj_adv_weight``), and the per-variant call-sign diagnostic.

Expected values are hand arithmetic (a set's mean and population std written out from its listed members);
the carry variant is also checked against a plain-Python loop on random ragged groups, and against GRPO where
the two must agree. See docs/algorithms.md, section 4, for the length-bias cases worked here.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from gtpo.config import ConfigError, from_dict, validate
from gtpo.method.advantages import (
    CREDIT_VARIANTS,
    NORMS,
    a2tgpo_advantages,
    agreement_by_variant,
    carried_returns,
    grpo_advantages,
    gtpo_advantages,
    hybrid_advantages,
    variant_advantages,
)


def _padded(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged per-trajectory turn rewards -> ([B, K] rewards, [B, K] mask)."""
    k = max(len(r) for r in rows)
    rewards = torch.zeros(len(rows), k, dtype=torch.float64)
    mask = torch.zeros(len(rows), k, dtype=torch.bool)
    for i, row in enumerate(rows):
        rewards[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        mask[i, : len(row)] = True
    return rewards, mask


def _z(value: float, members: list[float]) -> float:
    """(value - mean) / population std of the listed set: the standardization every test writes out."""
    mean = sum(members) / len(members)
    std = math.sqrt(sum((x - mean) ** 2 for x in members) / len(members))
    return (value - mean) / std


# ---- carried_returns -------------------------------------------------------------------------------


def test_a_stopped_trajectory_holds_its_last_return() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [7.0, 5.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, False, False], [False, True, False]])
    # row 1 stopped after turn 1: it holds 4 (the 9s under the mask are never read); row 2 holds 0 before its
    # first valid turn and 5 after its last
    assert carried_returns(returns, mask).tolist() == [[1.0, 2.0, 3.0], [4.0, 4.0, 4.0], [0.0, 5.0, 5.0]]


# ---- turn_index_carry: the length-bias case of docs/algorithms.md --------------------------------------


def test_carry_removes_the_turn_count_bias_of_per_turn_index_normalization() -> None:
    """Six 1-turn failures, one 3-turn success, one 3-turn failure, gamma 1 (docs/algorithms.md, section 4).

    Plain turn_index: turns 2 and 3 are compared only with the other trajectory that went on ({1, 0} -> +-1),
    so the failure that continued is pushed 1 + 2 sqrt(7) = 6.3 times as hard as a failure that stopped,
    for the same outcome. Carried: the stopped failures hold 0 at turns 2 and 3, every position holds the
    eight outcomes {1, 0 x 7} (mean 1/8, population std sqrt(7)/8), so each turn of either failure gets
    -1/sqrt(7): the long failure is pushed exactly 3 times as hard, once per turn, as under GRPO.
    """
    rewards, mask = _padded([[0.0]] * 6 + [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    ids = torch.zeros(8, dtype=torch.long)
    short, long_win, long_fail = 0, 6, 7

    plain = gtpo_advantages(rewards, mask, ids, 1.0, norm="turn_index", eps=0.0)
    assert plain[long_fail].sum().item() / plain[short].sum().item() == pytest.approx(1 + 2 * math.sqrt(7))

    carry = gtpo_advantages(rewards, mask, ids, 1.0, norm="turn_index_carry", eps=0.0)
    fail, win = (0 - 1 / 8) / (math.sqrt(7) / 8), (1 - 1 / 8) / (math.sqrt(7) / 8)  # -1/sqrt(7), sqrt(7)
    assert carry[short].tolist() == pytest.approx([fail, 0.0, 0.0])
    assert carry[long_fail].tolist() == pytest.approx([fail] * 3)
    assert carry[long_win].tolist() == pytest.approx([win] * 3)
    assert carry[long_fail].sum().item() / carry[short].sum().item() == pytest.approx(3.0)


def test_carry_by_hand_with_discount_and_penalties() -> None:
    # A: invalid call (-0.1), then right: R = [-0.1 + 0.9 * 1, 1]; B: one turn, no call (-0.1), wrong: R = [-0.1];
    # C: three turns, right: R = [0.81, 0.9, 1]. Position 1 holds B's -0.1; position 2 holds A's 1 and B's -0.1.
    rewards, mask = _padded([[-0.1, 1.0], [-0.1], [0.0, 0.0, 1.0]])
    adv = gtpo_advantages(rewards, mask, torch.tensor([3, 3, 3]), 0.9, norm="turn_index_carry", eps=0.0)
    at_0, at_1, at_2 = [0.8, -0.1, 0.81], [1.0, -0.1, 0.9], [1.0, -0.1, 1.0]
    assert adv[0].tolist() == pytest.approx([_z(0.8, at_0), _z(1.0, at_1), 0.0])
    assert adv[1].tolist() == pytest.approx([_z(-0.1, at_0), 0.0, 0.0])
    assert adv[2].tolist() == pytest.approx([_z(0.81, at_0), _z(0.9, at_1), _z(1.0, at_2)])


def _random_ragged(seed: int, outcome_only: bool) -> tuple[list[list[float]], list[int]]:
    rng = random.Random(seed)
    rows, groups = [], []
    for g in rng.sample(range(-50, 500), 3):
        for _ in range(rng.randint(2, 6)):
            row = [0.0 if outcome_only else rng.choice([0.0, -0.1]) for _ in range(rng.randint(1, 4))]
            row[-1] += float(rng.random() < 0.5)
            rows.append(row)
            groups.append(g)
    return rows, groups


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_carry_is_grpo_on_every_turn_for_outcome_only_rewards(seed: int, scale_by_std: bool) -> None:
    """gamma 1 and rewards only on the last turn: every return and every held value is the outcome, so every
    position's set is the group's outcomes, GRPO's set, whatever the turn counts. Plain turn_index is not."""
    rows, groups = _random_ragged(seed, outcome_only=True)
    rewards, mask = _padded(rows)
    ids = torch.tensor(groups)
    grpo = grpo_advantages(rewards.sum(dim=1), ids, scale_by_std=scale_by_std)
    expected = torch.where(mask, grpo[:, None], torch.zeros((), dtype=torch.float64))
    carry = gtpo_advantages(rewards, mask, ids, 1.0, norm="turn_index_carry", scale_by_std=scale_by_std)
    torch.testing.assert_close(carry, expected)


def test_plain_turn_index_is_not_grpo_on_the_same_groups() -> None:
    # the contrast that lets the test above fail: on these ragged groups per-index sets differ from GRPO's
    differs = 0
    for seed in range(6):
        rows, groups = _random_ragged(seed, outcome_only=True)
        rewards, mask = _padded(rows)
        ids = torch.tensor(groups)
        grpo = grpo_advantages(rewards.sum(dim=1), ids)
        plain = gtpo_advantages(rewards, mask, ids, 1.0, norm="turn_index")
        differs += not torch.allclose(plain, torch.where(mask, grpo[:, None], torch.zeros((), dtype=torch.float64)))
    assert differs >= 3


def _reference_carry(rows: list[list[float]], groups: list[int], gamma: float, eps: float) -> list[list[float]]:
    """The definition as loops: position j of every trajectory of the group, a stopped one holding its last return."""
    returns = [[sum(gamma ** (k - j) * row[k] for k in range(j, len(row))) for j in range(len(row))] for row in rows]
    width = max(len(r) for r in rows)
    held = [[r[min(j, len(r) - 1)] for j in range(width)] for r in returns]
    out = []
    for i, row_returns in enumerate(returns):
        out_row = []
        for j, value in enumerate(row_returns):
            members = [held[m][j] for m in range(len(rows)) if groups[m] == groups[i]]
            if max(members) == min(members):
                out_row.append(0.0)
                continue
            mean = sum(members) / len(members)
            std = math.sqrt(sum((x - mean) ** 2 for x in members) / len(members))
            out_row.append((value - mean) / (std + eps))
        out.append(out_row)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_carry_vectorized_matches_loop_reference(seed: int) -> None:
    rows, groups = _random_ragged(seed, outcome_only=False)
    rewards, mask = _padded(rows)
    adv = gtpo_advantages(rewards, mask, torch.tensor(groups), 0.9, norm="turn_index_carry")
    for i, row in enumerate(_reference_carry(rows, groups, 0.9, 1e-6)):
        assert adv[i, : len(row)].tolist() == pytest.approx(row, abs=1e-9)
        assert torch.all(adv[i, len(row) :] == 0.0)


# ---- a2tgpo ----------------------------------------------------------------------------------------


def test_a2tgpo_divides_the_accumulated_sum_by_the_square_root_of_its_terms() -> None:
    # two 4-turn trajectories whose rewards differ at every position: each position's set {1, 0} -> +1 / -1,
    # so from turn j the sum has 4 - j terms of +1, divided by sqrt(4 - j): 4/2, 3/sqrt(3), 2/sqrt(2), 1
    rewards, mask = _padded([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    adv = a2tgpo_advantages(rewards, mask, torch.tensor([0, 0]), 1.0, eps=0.0)
    assert adv[0].tolist() == pytest.approx([4 / 2, 3 / math.sqrt(3), 2 / math.sqrt(2), 1.0])
    assert adv[1].tolist() == pytest.approx([-4 / 2, -3 / math.sqrt(3), -2 / math.sqrt(2), -1.0])
    # with gamma 0.5 the terms are discounted before the division: (1 + 0.5 + 0.25 + 0.125) / 2 at turn 1
    assert a2tgpo_advantages(rewards, mask, torch.tensor([0, 0]), 0.5, eps=0.0)[0, 0].item() == pytest.approx(
        (1 + 0.5 + 0.25 + 0.125) / 2
    )
    assert torch.equal(gtpo_advantages(rewards, mask, torch.tensor([0, 0]), 1.0, norm="a2tgpo", eps=0.0), adv)


def test_a2tgpo_credits_a_right_answer_less_when_the_trajectory_went_on() -> None:
    """The length bias verl RFC #7244 describes for per-index rewards summed into a return, by hand.

    S1 answers right at once, L1 calls then answers right; S0 and L0 the same, wrong (gamma 1, no penalties).
    Turn 1 holds {1, 0, 0, 0} (mean 1/4, std sqrt(3)/4): S1 gets sqrt(3), the others -1/sqrt(3) (L1's 0 is a
    call, ranked against S1's answer). Turn 2 holds {1, 0}: L1 +1, L0 -1. So the turn that decided to go on
    gets (-1/sqrt(3) + 1)/sqrt(2) = 0.30 where the same outcome reached at once gets sqrt(3) = 1.73, and a wrong
    trajectory that went on gets (-1/sqrt(3) - 1)/sqrt(2) = -1.12 against -0.58: going on is pushed down
    whatever the outcome. GTPO's pooled normalization and the carry variant give S1 and L1 the same first turn.
    """
    rewards, mask = _padded([[1.0], [0.0, 1.0], [0.0], [0.0, 0.0]])
    ids = torch.zeros(4, dtype=torch.long)
    adv = a2tgpo_advantages(rewards, mask, ids, 1.0, eps=0.0)
    r3 = math.sqrt(3)
    assert adv[0, 0].item() == pytest.approx(r3)
    assert adv[1].tolist() == pytest.approx([(-1 / r3 + 1) / math.sqrt(2), 1.0])
    assert adv[2, 0].item() == pytest.approx(-1 / r3)
    assert adv[3].tolist() == pytest.approx([(-1 / r3 - 1) / math.sqrt(2), -1.0])
    for norm in ("group", "turn_index_carry"):
        other = gtpo_advantages(rewards, mask, ids, 1.0, norm=norm, eps=0.0)
        assert other[0, 0].item() == pytest.approx(other[1, 0].item())
        assert other[2, 0].item() == pytest.approx(other[3, 0].item())


# ---- invariances shared by the new norms -----------------------------------------------------------


@pytest.mark.parametrize("norm", ["turn_index_carry", "a2tgpo"])
def test_scaling_every_reward_changes_nothing_with_std(norm: str) -> None:
    rows, groups = _random_ragged(4, outcome_only=False)
    rewards, mask = _padded(rows)
    ids = torch.tensor(groups)
    base = gtpo_advantages(rewards, mask, ids, 0.9, norm=norm, eps=0.0)
    torch.testing.assert_close(gtpo_advantages(2.5 * rewards, mask, ids, 0.9, norm=norm, eps=0.0), base)
    centered = gtpo_advantages(rewards, mask, ids, 0.9, norm=norm, scale_by_std=False)
    scaled = gtpo_advantages(2.5 * rewards, mask, ids, 0.9, norm=norm, scale_by_std=False)
    torch.testing.assert_close(scaled, 2.5 * centered)


def test_carry_is_unchanged_by_a_shift_of_every_outcome_at_gamma_one() -> None:
    # gamma 1: +c on every last turn adds c to every return and to every held value: each set shifts by c
    rows, groups = _random_ragged(5, outcome_only=False)
    rewards, mask = _padded(rows)
    last = mask.sum(dim=1) - 1
    shifted = rewards.clone()
    shifted[torch.arange(len(rows)), last] += 0.7
    ids = torch.tensor(groups)
    base = gtpo_advantages(rewards, mask, ids, 1.0, norm="turn_index_carry")
    torch.testing.assert_close(gtpo_advantages(shifted, mask, ids, 1.0, norm="turn_index_carry"), base)


@pytest.mark.parametrize("norm", ["turn_index_carry", "a2tgpo"])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_constant_sets_and_lone_trajectories_give_exactly_zero(norm: str, scale_by_std: bool) -> None:
    # group 0: two identical trajectories (every set constant); group 1: one trajectory (sets of one);
    # 0.1-sized rewards leave float residue in a mean, which must not become a +-1 advantage
    rewards, mask = _padded([[0.1, 0.1], [0.1, 0.1], [0.3, -0.1, 1.0]])
    adv = gtpo_advantages(rewards, mask, torch.tensor([0, 0, 1]), 0.9, norm=norm, scale_by_std=scale_by_std, eps=0.0)
    assert torch.equal(adv, torch.zeros_like(adv))


@pytest.mark.parametrize("norm", ["turn_index_carry", "a2tgpo"])
def test_masked_turns_get_zero_and_their_content_is_ignored(norm: str) -> None:
    rewards, mask = _padded([[1.0, 0.0, 0.5], [0.2], [0.0, 0.3]])
    garbage = torch.where(mask, rewards, torch.full_like(rewards, 42.0))
    adv = gtpo_advantages(garbage, mask, torch.tensor([1, 1, 1]), 0.9, norm=norm)
    assert torch.all(adv[~mask] == 0.0)
    assert torch.equal(adv, gtpo_advantages(rewards, mask, torch.tensor([1, 1, 1]), 0.9, norm=norm))


# ---- hybrid ----------------------------------------------------------------------------------------


def test_hybrid_mixes_turn_and_trajectory_advantages_by_hand() -> None:
    turn = torch.tensor([[1.0, -0.5], [2.0, 7.0]])
    trajectory = torch.tensor([0.4, -1.0])
    mask = torch.tensor([[True, True], [True, False]])
    mixed = hybrid_advantages(turn, trajectory, mask, 0.25)
    expected = [[0.75 * 1.0 + 0.25 * 0.4, 0.75 * -0.5 + 0.25 * 0.4], [0.75 * 2.0 - 0.25, 0.0]]  # 7.0 is masked
    torch.testing.assert_close(mixed, torch.tensor(expected))
    assert hybrid_advantages(turn, trajectory, mask, 0.0).tolist() == [[1.0, -0.5], [2.0, 0.0]]
    torch.testing.assert_close(hybrid_advantages(turn, trajectory, mask, 1.0), torch.tensor([[0.4, 0.4], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="traj_adv_weight"):
        hybrid_advantages(turn, trajectory, mask, 1.5)
    with pytest.raises(ValueError, match=r"\[B\]"):
        hybrid_advantages(turn, trajectory[:1], mask, 0.5)


def test_traj_adv_weight_is_checked_with_the_field_and_the_fix() -> None:
    assert validate(from_dict({"algo": {"traj_adv_weight": 0.5}})).algo.traj_adv_weight == 0.5
    with pytest.raises(ConfigError, match=r"algo\.traj_adv_weight.*\[0, 1\]"):
        validate(from_dict({"algo": {"traj_adv_weight": 2.0}}))
    with pytest.raises(ConfigError, match=r"algo\.traj_adv_weight.*grpo"):
        validate(from_dict({"algo": {"algo": "grpo", "traj_adv_weight": 0.5}}))


# ---- the per-variant diagnostic ----------------------------------------------------------------------


def test_variant_advantages_are_each_schemes_own_function() -> None:
    rows, groups = _random_ragged(2, outcome_only=False)
    rewards, mask = _padded(rows)
    ids = torch.tensor(groups)
    grpo_r = torch.tensor([float(row[-1] >= 1.0) for row in rows], dtype=torch.float64)
    variants = variant_advantages(rewards, mask, ids, grpo_r, gamma=0.9, scale_by_std=True)
    assert tuple(variants) == CREDIT_VARIANTS == (*NORMS, "hybrid", "grpo")
    for norm in NORMS:
        assert torch.equal(variants[norm], gtpo_advantages(rewards, mask, ids, 0.9, norm=norm))
    summed = grpo_advantages(rewards.sum(dim=1), ids)
    torch.testing.assert_close(variants["hybrid"], hybrid_advantages(variants["group"], summed, mask, 0.5))
    grpo = grpo_advantages(grpo_r, ids)
    torch.testing.assert_close(variants["grpo"], torch.where(mask, grpo[:, None], torch.zeros((), dtype=torch.float64)))


def test_agreement_by_variant_names_each_scheme_and_skips_those_with_nothing_counted() -> None:
    is_call = torch.tensor([[True, True], [True, False]])
    is_invalid = torch.tensor([[True, False], [False, False]])
    variants = {
        "a": torch.tensor([[-1.0, 2.0], [3.0, 0.0]]),  # invalid down, valid up, valid up: 3 of 3
        "b": torch.tensor([[1.0, 2.0], [-3.0, 0.0]]),  # invalid up, valid up, valid down: 1 of 3
        "c": torch.zeros(2, 2),  # nothing signed: left out
    }
    assert agreement_by_variant(variants, is_call, is_invalid) == {
        "adv/call_sign_agreement/a": 1.0,
        "adv/call_sign_agreement/b": pytest.approx(1 / 3),
    }
