"""gtpo.method.rewards: GTPO turn rewards and penalties, the GRPO reward, self-supervised accuracy shaping."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from gtpo.method.rewards import (
    episode_returns,
    format_ok,
    grpo_episode_rewards,
    grpo_rewards,
    shaped_accuracy,
    turn_rewards,
)

# ---- turn_rewards ----------------------------------------------------------------------------------


def _close(rewards: torch.Tensor, expected: list[list[float]]) -> bool:
    return torch.allclose(rewards, torch.tensor(expected, dtype=torch.float32))


def test_invalid_call_on_turn_two_of_a_correct_trajectory() -> None:
    rewards, mask = turn_rewards([1.0], [[False, True, False]], [True])
    assert _close(rewards, [[0.0, -0.1, 1.0]])
    assert mask.tolist() == [[True, True, True]]


def test_no_call_on_turn_one() -> None:
    rewards, _ = turn_rewards([1.0], [[False]], [False])
    assert _close(rewards, [[1.0 - 0.1]])


def test_both_penalties_add() -> None:
    rewards, _ = turn_rewards([0.0], [[False, True]], [False])
    assert _close(rewards, [[-0.1, -0.1]])
    # and on the same turn, if the events say so
    rewards, _ = turn_rewards([0.0], [[True]], [False])
    assert _close(rewards, [[-0.1 - 0.1]])


def test_ragged_batch_pads_with_masked_zeros() -> None:
    acc = [1.0, 0.0, 0.35]
    invalid = [[True, False], [False, False, True, False], [False]]
    rewards, mask = turn_rewards(acc, invalid, [True, True, False])
    assert rewards.shape == (3, 4)
    assert rewards.dtype == torch.float32 and mask.dtype == torch.bool
    assert _close(rewards, [[-0.1, 1.0, 0.0, 0.0], [0.0, 0.0, -0.1, 0.0], [0.35 - 0.1, 0.0, 0.0, 0.0]])
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]


def test_penalty_sizes_are_configurable_and_zero_disables_them() -> None:
    invalid, first = [[True, True], [False]], [False, False]
    rewards, _ = turn_rewards([1.0, 0.0], invalid, first, format_penalty=0.3, no_call_penalty=0.05)
    assert _close(rewards, [[-0.3 - 0.05, 1.0 - 0.3], [-0.05, 0.0]])
    rewards, _ = turn_rewards([1.0, 0.0], invalid, first, format_penalty=0.0, no_call_penalty=0.0)
    assert _close(rewards, [[0.0, 1.0], [0.0, 0.0]])


def test_bad_turn_reward_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one turn"):
        turn_rewards([1.0], [[]], [True])
    with pytest.raises(ValueError, match="lengths"):
        turn_rewards([1.0, 0.0], [[False]], [True])
    with pytest.raises(ValueError, match="format_penalty"):
        turn_rewards([1.0], [[False]], [True], format_penalty=-0.1)


# ---- format_ok and the GRPO reward -----------------------------------------------------------------


def test_format_ok_reads_the_events() -> None:
    invalid = [[False, False], [False, True], [False], [True]]
    first_call = [True, True, False, True]
    assert format_ok(invalid, first_call) == [True, False, False, False]


def test_grpo_reward_is_min_of_accuracy_and_format() -> None:
    correct = [True, True, False, False]
    fmt = [True, False, True, False]
    assert grpo_rewards(correct, fmt).tolist() == [
        min(1.0, 1.0),
        min(1.0, 0.0),
        min(0.0, 1.0),
        min(0.0, 0.0),
    ]


def test_grpo_reward_needs_one_entry_per_trajectory() -> None:
    with pytest.raises(ValueError, match="lengths"):
        grpo_rewards([True], [True, False])


# ---- shaped_accuracy -------------------------------------------------------------------------------

SUCCESS = "import math\nr = (5 + math.sqrt(25 - 24)) / 2\nprint(r)"
NEAR_MISS = "import math\nr = (5 - math.sqrt(25 - 24)) / 2\nprint(r)"
UNRELATED = "total = 0\nfor k in range(10):\n    total += k * k\nprint(total)"


def test_shaping_orders_failures_by_similarity_and_keeps_them_below_one() -> None:
    correct = [True, False, False, False, False, False]
    codes = [SUCCESS, NEAR_MISS, UNRELATED, "", NEAR_MISS, UNRELATED]
    groups = [10, 10, 10, 10, 20, 20]  # group 20 has no success
    acc = shaped_accuracy(correct, codes, groups, alpha=0.5)
    assert acc[0] == 1.0
    assert 0.5 > acc[1] > acc[2] >= 0.0
    assert acc[3] == 0.0  # a failure without code
    assert acc[4:] == [0.0, 0.0]  # no success in the group: no shaping


def test_default_shaping_is_half_the_tfidf_cosine_worked_by_hand() -> None:
    # "a = 1" and "a = 2": terms a, =, (a, =) in both (df 2 of N = 2 snippets: idf ln(3/3) + 1 = 1) and
    # 1, (=, 1) / 2, (=, 2) in one each (idf w = ln(3/2) + 1). Cosine = shared 3 / (3 + 2 w^2) for both norms.
    acc = shaped_accuracy([True, False], ["a = 1", "a = 2"], [0, 0], alpha=0.5)
    w = math.log(3 / 2) + 1
    assert acc == pytest.approx([1.0, 0.5 * 3 / (3 + 2 * w**2)], rel=1e-6)


def _fixed_similarity(matrix: list[list[float]]) -> Callable[[list[str], list[str]], torch.Tensor]:
    def similarity(a: list[str], b: list[str]) -> torch.Tensor:
        return torch.tensor(matrix)

    return similarity


def test_shaping_averages_clipped_similarities_over_successes() -> None:
    correct = [True, True, False]
    codes = ["a = 1", "b = 2", "c = 3"]
    # out-of-range similarities (an embedding model may give them) are clipped to [0, 1] before the mean
    acc = shaped_accuracy(correct, codes, [0, 0, 0], alpha=0.4, similarity=_fixed_similarity([[1.7, -0.3]]))
    assert acc == pytest.approx([1.0, 1.0, 0.4 * (1.0 + 0.0) / 2])
    acc = shaped_accuracy(correct, codes, [0, 0, 0], alpha=0.4, similarity=_fixed_similarity([[0.6, 0.2]]))
    assert acc[2] == pytest.approx(0.4 * (0.6 + 0.2) / 2)


def test_successes_without_code_are_not_references() -> None:
    seen: list[list[str]] = []

    def similarity(a: list[str], b: list[str]) -> torch.Tensor:
        seen.append(b)
        return torch.full((len(a), len(b)), 0.8)

    acc = shaped_accuracy([True, True, False], ["", SUCCESS, NEAR_MISS], [1, 1, 1], similarity=similarity)
    assert seen == [[SUCCESS]]
    assert acc[2] == pytest.approx(0.5 * 0.8)
    # a group whose only success has no code: nothing to compare to, no shaping
    assert shaped_accuracy([True, False], ["", NEAR_MISS], [1, 1]) == [1.0, 0.0]


def test_alpha_zero_switches_shaping_off() -> None:
    correct = [True, False, False]
    assert shaped_accuracy(correct, [SUCCESS, NEAR_MISS, SUCCESS], [0, 0, 0], alpha=0.0) == [1.0, 0.0, 0.0]


def test_identical_code_that_failed_still_ranks_below_success() -> None:
    acc = shaped_accuracy([True, False], [SUCCESS, SUCCESS], [0, 0], alpha=0.5)
    assert acc == pytest.approx([1.0, 0.5])


def test_shaped_accuracy_lands_on_the_last_turn() -> None:
    acc = shaped_accuracy([True, False], [SUCCESS, NEAR_MISS], [0, 0])
    rewards, _ = turn_rewards(acc, [[False], [False, False, False]], [True, True])
    assert rewards[1].tolist() == pytest.approx([0.0, 0.0, acc[1]])
    assert 0.0 < acc[1] < 0.5


def test_bad_shaping_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="shaping_alpha"):
        shaped_accuracy([True], ["x"], [0], alpha=1.5)
    with pytest.raises(ValueError, match="lengths"):
        shaped_accuracy([True, False], ["x"], [0, 0])
    with pytest.raises(ValueError, match="shape"):
        shaped_accuracy([True, False], ["x", "y"], [0, 0], similarity=_fixed_similarity([[0.5, 0.5]]))


# ------------------------------------------------------------------------------- environment step rewards
def test_step_rewards_add_to_the_format_terms_turn_by_turn() -> None:
    # a game: 0.25 for a good move, an invalid move (0 from the game, -0.1 from GTPO), 1.0 for the win
    rewards, _ = turn_rewards([0.0], [[False, True, False]], [True], step_rewards=[[0.25, 0.0, 1.0]])
    torch.testing.assert_close(rewards, torch.tensor([[0.25, -0.1, 1.0]]))
    # acc still lands on the last turn, on top of the environment's reward there (a shaped failure)
    rewards, _ = turn_rewards([0.3], [[False, False]], [False], step_rewards=[[0.25, 0.0]])
    torch.testing.assert_close(rewards, torch.tensor([[0.25 - 0.1, 0.0 + 0.3]]))
    with pytest.raises(ValueError, match="one per turn"):
        turn_rewards([0.0], [[False, False]], [True], step_rewards=[[1.0]])


def test_episode_returns_sum_or_take_the_last_step() -> None:
    steps = [[0.25, 0.0, 1.0], [0.5], []]
    assert episode_returns(steps) == [1.25, 0.5, 0.0]
    assert episode_returns(steps, "last") == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="episode_return"):
        episode_returns(steps, "mean")


def test_grpo_episode_reward_caps_a_format_violation_at_zero() -> None:
    # clean: the return as is; a violation: at most 0 (a negative return stays negative)
    assert grpo_episode_rewards([1.25, -0.3, 0.7, -0.3], [True, True, False, False]).tolist() == pytest.approx(
        [1.25, -0.3, 0.0, -0.3]
    )
    # 0/1 returns: exactly the paper's min(acc, fmt)
    correct, fmt = [True, True, False, False], [True, False, True, False]
    assert grpo_episode_rewards([float(c) for c in correct], fmt).tolist() == grpo_rewards(correct, fmt).tolist()
