"""Credit glue: trajectory records reach the pure reward/advantage functions unchanged."""

import pytest
import torch

from gtpo.advantages import grpo_advantages, gtpo_advantages
from gtpo.credit import assign_credit
from gtpo.similarity import tfidf_code_similarity
from gtpo.types import Problem, Trajectory, Turn

PROBLEM = Problem(id="p", question="q", answer="1")


def _traj(group, correct, turns):
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


def _credit(algo, **overrides):
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
    return assign_credit(_batch(), **settings)


@pytest.mark.parametrize("adv_norm", ["group", "turn_index", "batch"])
def test_gtpo_turn_advantages_match_the_pure_function(adv_norm):
    credit = _credit("gtpo", adv_norm=adv_norm)
    # Turn rewards by hand: acc on the last turn; -0.1 per invalid call; -0.1 when turn 1 has no call.
    rewards = torch.tensor([[-0.1, 0.0, 1.0], [-0.1, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    expected = gtpo_advantages(rewards, mask, torch.tensor([0, 0, 0, 7, 7]), 0.9, norm=adv_norm)
    torch.testing.assert_close(credit.turn_advantages, expected)
    torch.testing.assert_close(credit.trajectory_rewards, (rewards * mask).sum(1))


def test_grpo_puts_the_trajectory_advantage_on_every_turn():
    credit = _credit("grpo")
    # GRPO reward min(acc, fmt_ok): trajectory 0 is correct but had an invalid call -> 0.
    expected = grpo_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 0, 7, 7]))
    assert credit.turn_advantages[0].tolist() == [expected[0].item()] * 3
    assert credit.turn_advantages[1, 1:].tolist() == [0.0, 0.0]  # padded turns stay 0
    torch.testing.assert_close(credit.turn_advantages[:, 0], expected)


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
