"""A run's settings reach its credit: ``bind_credit`` turns ``algo.*`` and ``overlong.*`` into the advantages and
rewards docs/algorithms.md states, checked against values computed by hand.

test_credit.py checks ``assign_credit`` with ``scale_by_std`` on and no overlong penalty, and test_signal_controls.py
the pure penalty with its buffer in tokens; these check the settings that those leave at one value: GRPO and
GTPO without std scaling (section 4, 6) and the buffer given as a share of ``rollout.max_total_tokens`` (section 10).
"""

from __future__ import annotations

import math

import pytest
import torch

from gtpo.config import from_dict
from gtpo.method.credit import assign_credit, bind_credit
from gtpo.method.similarity import tfidf_code_similarity
from gtpo.types import Problem, Trajectory, Turn

PROBLEM = Problem(id="p", question="q", answer="1")


def _traj(group: int, correct: bool, turns: list[Turn]) -> Trajectory:
    """A math-task record as the rollout leaves it: the last turn's reward is 1 if the answer is right."""
    turns[-1].reward = float(correct)
    return Trajectory(problem=PROBLEM, group_id=group, turns=turns, correct=correct)


def _turn(code: str | None = None) -> Turn:
    return Turn(text="t", code=code, has_tool_call=code is not None)


def _right() -> Trajectory:
    """A valid call, then the right answer: GRPO reward 1; GTPO turn rewards [0, 1]."""
    return _traj(0, True, [_turn("print(1)"), _turn()])


def _grpo_batch() -> list[Trajectory]:
    return [
        _traj(0, True, [_turn("print(1)"), _turn()]),  # right, valid call: 1
        _traj(0, False, [_turn("print(2)"), _turn()]),  # wrong: 0
        _traj(0, False, [_turn()]),  # wrong, no call: 0
        _traj(7, True, [_turn("print(1)"), _turn()]),  # 1
        _traj(7, False, [_turn("print(3)"), _turn()]),  # 0
    ]


def _bound(settings: dict, similarity=None):
    return bind_credit(from_dict(settings), similarity)


@pytest.mark.parametrize("through", ["assign_credit", "bind_credit"])
def test_grpo_without_scale_by_std_only_centers_the_rewards(through):
    """Rewards 1, 0, 0 (group 0) and 1, 0 (group 7). Centered only (Dr. GRPO): 1 - 1/3 = 2/3 and -1/3; 1/2 and -1/2.
    Scaled (the default): divided by the population std sqrt(2)/3 and 1/2: sqrt(2), -1/sqrt(2); +1, -1."""
    batch = _grpo_batch()
    first_turn = {}
    for scale_by_std in (False, True):
        if through == "bind_credit":
            credit, _ = _bound({"algo": {"algo": "grpo", "scale_by_std": scale_by_std}})
            result = credit(batch, [10] * len(batch))
        else:
            result = assign_credit(
                batch, algo="grpo", gamma=0.9, adv_norm="group", scale_by_std=scale_by_std, format_penalty=0.1,
                no_call_penalty=0.1, shaping=False, shaping_alpha=0.5, similarity=None,
            )  # fmt: skip
        first_turn[scale_by_std] = result.turn_advantages[:, 0]
    centered = [2 / 3, -1 / 3, -1 / 3, 1 / 2, -1 / 2]
    r2 = math.sqrt(2)
    torch.testing.assert_close(first_turn[False], torch.tensor(centered), atol=1e-6, rtol=0)
    torch.testing.assert_close(first_turn[True], torch.tensor([r2, -1 / r2, -1 / r2, 1.0, -1.0]), atol=1e-5, rtol=0)


def test_gtpo_without_scale_by_std_only_centers_the_pooled_returns():
    """A right trajectory (turn rewards 0, 1; returns 0.9 * 1 = 0.9 and 1) and a wrong one without a call (reward
    -0.1 from the no-call penalty; return -0.1), pooled: mean (0.9 + 1 - 0.1) / 3 = 0.6."""
    batch = [_right(), _traj(0, False, [_turn()])]
    credit, _ = _bound({"algo": {"scale_by_std": False}}, tfidf_code_similarity)
    got = credit(batch, [10, 10]).turn_advantages
    torch.testing.assert_close(got, torch.tensor([[0.9 - 0.6, 1.0 - 0.6], [-0.1 - 0.6, 0.0]]), atol=1e-6, rtol=0)


OVERLONG = {"overlong": {"mode": "penalty", "buffer": 0.25, "penalty": 0.5}, "rollout": {"max_total_tokens": 100}}
LENGTHS = [70, 75, 85, 95, 100, 120]
# The buffer is 0.25 x 100 = 25 tokens, starting after 100 - 25 = 75: no penalty up to 75, then -0.5 x (L - 75) / 25,
# the whole -0.5 at the cap and beyond.
PENALTIES = [0.0, 0.0, -0.5 * 10 / 25, -0.5 * 20 / 25, -0.5, -0.5]


@pytest.mark.parametrize("algo", ["grpo", "gtpo"])
def test_the_overlong_buffer_is_a_share_of_the_token_cap(algo):
    """Every trajectory is right with a valid call (GRPO reward 1; GTPO turn rewards 0 and 1, summing to 1), so each
    reward is 1 plus its penalty."""
    batch = [_right() for _ in LENGTHS]
    credit, score = _bound({**OVERLONG, "algo": {"algo": algo}}, tfidf_code_similarity)
    expected = [1.0 + p for p in PENALTIES]
    assert score(batch, LENGTHS) == pytest.approx(expected, abs=1e-6)
    assert credit(batch, LENGTHS).trajectory_rewards.tolist() == pytest.approx(expected, abs=1e-6)


def test_the_default_overlong_buffer_is_a_fifth_of_the_default_cap():
    """Defaults (section 10): buffer 0.2 of max_total_tokens 512 = 102.4 tokens, penalty 1.0. Halfway through the
    buffer, 512 - 102.4 / 2 = 460.8 tokens (461 whether the buffer is rounded to 102 tokens or not), earns -0.5."""
    batch = [_right() for _ in range(3)]
    _, score = _bound({"overlong": {"mode": "penalty"}, "algo": {"algo": "grpo"}})
    assert score(batch, [400, 461, 512]) == pytest.approx([1.0, 0.5, 0.0], abs=0.005)


@pytest.mark.parametrize("mode", ["none", "mask"])
def test_no_penalty_unless_the_mode_is_penalty(mode):
    batch = [_right() for _ in LENGTHS]
    _, score = _bound({**OVERLONG, "overlong": {**OVERLONG["overlong"], "mode": mode}, "algo": {"algo": "grpo"}})
    assert score(batch, LENGTHS) == [1.0] * len(LENGTHS)
