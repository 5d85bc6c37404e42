"""Credit glue: trajectory records reach the pure reward/advantage functions unchanged."""

import math
import statistics

import pytest
import torch

from gtpo.method.advantages import gtpo_advantages
from gtpo.method.credit import assign_credit
from gtpo.method.similarity import tfidf_code_similarity
from gtpo.types import Problem, Trajectory, Turn

PROBLEM = Problem(id="p", question="q", answer="1")


def _traj(group, correct, turns):
    """A math-task record as the rollout leaves it: the environment rewarded the last turn 1 if correct."""
    turns[-1].reward = float(correct)
    return Trajectory(problem=PROBLEM, group_id=group, turns=turns, correct=correct)


def _turn(code=None, invalid=False):
    return Turn(text="t", code=code, has_tool_call=code is not None, invalid_call=invalid)


def _batch():
    return [
        _traj(0, True, [_turn("x = 2", invalid=True), _turn("print(x)"), _turn()]),
        _traj(0, False, [_turn()]),
        _traj(0, False, [_turn("print(x)"), _turn()]),
        _traj(7, True, [_turn("print(1)"), _turn()]),
        _traj(7, True, [_turn("print(1)"), _turn()]),
    ]


def _credit(algo, batch=None, **overrides):
    settings = dict(
        algo=algo,
        gamma=0.9,
        adv_norm="group",
        scale_by_std=True,
        format_penalty=0.1,
        no_call_penalty=0.1,
        shaping=False,
        shaping_alpha=0.5,
        similarity=tfidf_code_similarity,
    )
    settings.update(overrides)
    return assign_credit(_batch() if batch is None else batch, **settings)


@pytest.mark.parametrize("adv_norm", ["group", "turn_index", "batch"])
def test_gtpo_turn_advantages_match_the_pure_function(adv_norm):
    credit = _credit("gtpo", adv_norm=adv_norm)
    # Turn rewards by hand: acc on the last turn; -0.1 per invalid call; -0.1 when turn 1 has no call.
    rewards = torch.tensor([[-0.1, 0.0, 1.0], [-0.1, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    expected = gtpo_advantages(rewards, mask, torch.tensor([0, 0, 0, 7, 7]), 0.9, norm=adv_norm)
    torch.testing.assert_close(credit.turn_advantages, expected)
    torch.testing.assert_close(credit.trajectory_rewards, (rewards * mask).sum(1))


def test_grpo_puts_each_trajectory_advantage_on_all_its_turns():
    batch = [
        _traj(0, True, [_turn("x = 2"), _turn()]),  # right, valid call on turn 1: reward 1
        _traj(0, True, [_turn("x = 2", invalid=True), _turn("print(x)"), _turn()]),  # right, bad call: min(1, 0) = 0
        _traj(0, False, [_turn("print(1)"), _turn()]),  # wrong: 0
        _traj(7, True, [_turn("print(1)"), _turn()]),  # 1
        _traj(7, False, [_turn()]),  # wrong, no call: 0
    ]
    credit = _credit("grpo", batch=batch)
    assert credit.trajectory_rewards.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    # Group 0, rewards 1, 0, 0: mean 1/3, population std sqrt(((2/3)^2 + 2 (1/3)^2) / 3) = sqrt(2) / 3, so the
    # advantages are (2/3) / (sqrt(2)/3) = sqrt(2) and (-1/3) / (sqrt(2)/3) = -1/sqrt(2).
    # Group 7, rewards 1, 0: mean 1/2, std 1/2: advantages +1 and -1. Padded turns stay 0.
    r2 = math.sqrt(2)
    expected = [[r2, r2, 0.0], [-1 / r2] * 3, [-1 / r2, -1 / r2, 0.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]
    torch.testing.assert_close(credit.turn_advantages, torch.tensor(expected), atol=1e-5, rtol=0)


def test_shaping_only_lifts_failures_in_groups_with_a_success():
    credit = _credit("gtpo", shaping=True)
    acc = credit.accuracy_values
    assert acc[0] == 1.0 and acc[3] == acc[4] == 1.0
    assert acc[1] == 0.0  # failed without code: nothing to compare
    assert 0.0 < acc[2] < 0.5  # shares `print(x)` with the success, alpha = 0.5 caps it
    assert _credit("grpo", shaping=True).accuracy_values[2] == 0.0  # GRPO is never shaped


def test_unknown_algo_is_refused():
    with pytest.raises(ValueError, match="algo"):
        _credit("ppo")


def test_outcome_penalties_land_on_the_last_turn_and_on_the_grpo_reward():
    penalties = [-0.5, 0.0, -1.0, 0.0, -0.25]  # e.g. overlong.mode="penalty"
    credit = _credit("gtpo", outcome_penalties=penalties)
    # the hand-made turn rewards of the test above, with each penalty added to the trajectory's last turn
    rewards = torch.tensor(
        [[-0.1, 0.0, 1.0 - 0.5], [-0.1, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0 - 0.25, 0.0]]
    )
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    expected = gtpo_advantages(rewards, mask, torch.tensor([0, 0, 0, 7, 7]), 0.9)
    torch.testing.assert_close(credit.turn_advantages, expected)
    grpo = _credit("grpo", outcome_penalties=penalties)
    torch.testing.assert_close(grpo.trajectory_rewards, torch.tensor([0.0 - 0.5, 0.0, 0.0 - 1.0, 1.0, 1.0 - 0.25]))


def test_pooled_turn_credit_pushes_down_the_valid_calls_of_a_group_that_is_all_right():
    """Both trajectories call validly, then answer right: turn returns 0.9 and 1.0 (gamma 0.9, no penalties).
    Pooled over the group's turns the call sits below the mean (0.95), so both calls get a negative advantage:
    agreement 0 of 2. GRPO gives zero advantages (equal rewards) and per-turn-index normalization compares each
    call only with the other call: nothing counted, so no metric."""
    group = [_traj(0, True, [_turn("print(1)"), _turn()]), _traj(0, True, [_turn("print(2)"), _turn()])]
    assert _credit("gtpo", group).metrics["adv/call_sign_agreement"] == 0.0
    for algo, adv_norm in (("grpo", "group"), ("gtpo", "turn_index")):
        assert "adv/call_sign_agreement" not in _credit(algo, group, adv_norm=adv_norm).metrics


def test_call_sign_agreement_on_a_mixed_batch():
    """_batch() by hand (gamma 0.9, pooled per group). GRPO: group 0's rewards min(acc, fmt_ok) are 0, 0, 0 (the
    right one made an invalid call) and group 7's are equal: every advantage 0, nothing counted.
    GTPO, group 0 returns: row 0: -0.1 + 0.9 * 0.9 = 0.71, 0.9, 1.0; row 1: -0.1; row 2: 0, 0 -> mean 0.418:
    row 0's invalid call (0.71) is pushed up (wrong), its valid call (0.9) up (right), row 2's valid call (0)
    down (wrong). Group 7: each valid call (0.9 against the pooled mean 0.95) down (wrong, twice). 1 of 5."""
    assert "adv/call_sign_agreement" not in _credit("grpo").metrics
    assert _credit("gtpo").metrics["adv/call_sign_agreement"] == pytest.approx(0.2)


# ------------------------------------------------------------------------------------ environment rewards
def _game_turn(reward, invalid=False):
    return Turn(text="t", has_tool_call=True, invalid_call=invalid, reward=reward)


def _game_batch():
    """A game without tools (no no-call penalty): row 0 moves (0.25), makes an invalid move, then wins (1.0);
    row 1 moves twice (0.25 each) and runs out of turns."""
    won = [_game_turn(0.25), _game_turn(0.0, invalid=True), _game_turn(1.0)]
    return [
        Trajectory(problem=PROBLEM, group_id=0, turns=won, correct=True, uses_tools=False),
        Trajectory(problem=PROBLEM, group_id=0, turns=[_game_turn(0.25), _game_turn(0.25)], uses_tools=False),
    ]


def test_gtpo_turn_rewards_are_the_environments_rewards_plus_the_format_penalty():
    credit = _credit("gtpo", _game_batch())
    torch.testing.assert_close(credit.turn_rewards, torch.tensor([[0.25, -0.1, 1.0], [0.25, 0.25, 0.0]]))
    # Returns by hand (gamma 0.9): row 0: 1.0, -0.1 + 0.9 = 0.8, 0.25 + 0.9 * 0.8 = 0.97; row 1: 0.25, 0.475.
    returns = [0.97, 0.8, 1.0, 0.475, 0.25]
    mean, std = statistics.fmean(returns), statistics.pstdev(returns)
    expected = torch.tensor(
        [[(r - mean) / (std + 1e-6) for r in returns[:3]], [*((r - mean) / (std + 1e-6) for r in returns[3:]), 0.0]]
    )
    torch.testing.assert_close(credit.turn_advantages, expected)


def test_a_first_turn_without_a_call_is_penalized_only_where_the_environment_offers_a_tool():
    quiet = [_game_turn(0.0), _game_turn(1.0)]
    for turn in quiet:
        turn.has_tool_call = False
    game = Trajectory(problem=PROBLEM, group_id=0, turns=quiet, correct=True, uses_tools=False)
    tool = Trajectory(problem=PROBLEM, group_id=0, turns=[Turn(text="t"), Turn(text="t", reward=1.0)], correct=True)
    credit = _credit("gtpo", [game, tool])
    torch.testing.assert_close(credit.turn_rewards, torch.tensor([[0.0, 1.0], [-0.1, 1.0]]))


@pytest.mark.parametrize(("episode_return", "rewards"), [("sum", [0.0, 0.5]), ("last", [0.0, 0.25])])
def test_grpo_rewards_the_episode_return_and_caps_a_format_violation_at_zero(episode_return, rewards):
    # row 0 returns 1.25 (sum) or 1.0 (last) but made an invalid move: 0; row 1 is clean: 0.5 or 0.25
    credit = _credit("grpo", _game_batch(), episode_return=episode_return)
    torch.testing.assert_close(credit.trajectory_rewards, torch.tensor(rewards))
    mean, std = statistics.fmean(rewards), statistics.pstdev(rewards)
    expected = torch.tensor(
        [[(rewards[0] - mean) / (std + 1e-6)] * 3, [(rewards[1] - mean) / (std + 1e-6)] * 2 + [0.0]]
    )
    torch.testing.assert_close(credit.turn_advantages, expected)


def test_every_credit_variant_logs_its_call_sign_agreement_on_the_same_batch():
    """_batch() by hand (gamma 0.9), the calls being row 0's invalid turn 1 and valid turn 2, row 2's valid turn 1,
    rows 3 and 4's valid turn 1. Group 7's two trajectories are identical, so every set there is constant except
    the pooled one (each call, return 0.9 against the pooled mean 0.95, is pushed down).
    - group: 1 of 5 (the default's own figure, above);
    - turn_index and turn_index_carry: group 0's turn 1 holds returns {0.71, -0.1, 0} (mean 0.203): row 0's invalid
      call up (wrong), row 2's valid call down (wrong); turn 2 holds {0.9, 0} or, carried, {0.9, -0.1, 0}:
      row 0's valid call up (right). Group 7 gives 0: 1 of 3;
    - a2tgpo: group 0's turn-1 rewards {-0.1, -0.1, 0} standardize to -0.71, -0.71, +1.41, turns 2 and 3 are
      constant or alone, so row 0's invalid call is pushed down and row 2's valid call up: 2 of 2;
    - hybrid: the pooled advantages plus half the group-normalized reward sums (0.9, -0.1, 0 in group 0, equal in
      group 7): every sign stays the pooled one, 1 of 5;
    - grpo: every advantage 0, nothing counted, so no field."""
    metrics = _credit("gtpo").metrics
    assert metrics["adv/call_sign_agreement/group"] == metrics["adv/call_sign_agreement"] == pytest.approx(1 / 5)
    assert metrics["adv/call_sign_agreement/turn_index"] == pytest.approx(1 / 3)
    assert metrics["adv/call_sign_agreement/turn_index_carry"] == pytest.approx(1 / 3)
    assert metrics["adv/call_sign_agreement/a2tgpo"] == 1.0
    assert metrics["adv/call_sign_agreement/hybrid"] == pytest.approx(1 / 5)
    assert "adv/call_sign_agreement/grpo" not in metrics
    # the variants do not depend on the run's own credit: the same fields under GRPO's
    grpo = _credit("grpo").metrics
    assert {k: v for k, v in grpo.items() if k.startswith("adv/call_sign_agreement/")} == {
        k: v for k, v in metrics.items() if k.startswith("adv/call_sign_agreement/")
    }


def test_traj_adv_weight_one_puts_the_normalized_reward_sum_on_every_turn():
    # group 0 sums its turn rewards to 0.9, -0.1 and 0 (mean 4/15); group 7's equal sums give 0
    sums = [0.9, -0.1, 0.0]
    mean = sum(sums) / 3
    std = math.sqrt(sum((s - mean) ** 2 for s in sums) / 3)
    a = [(s - mean) / (std + 1e-6) for s in sums]
    expected = [[a[0]] * 3, [a[1], 0.0, 0.0], [a[2], a[2], 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    credit = _credit("gtpo", traj_adv_weight=1.0)
    torch.testing.assert_close(credit.turn_advantages, torch.tensor(expected), atol=1e-5, rtol=0)
    half = _credit("gtpo", traj_adv_weight=0.5).turn_advantages
    torch.testing.assert_close(half, 0.5 * _credit("gtpo").turn_advantages + 0.5 * torch.tensor(expected))
