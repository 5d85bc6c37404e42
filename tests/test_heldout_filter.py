"""The filters that keep held-out problems out of the training stream, each fed a colliding pool.

The disjointness tests beside each task (test_tasks, test_multistep, test_relay, test_rgym) hold by
construction: a reserved seed rarely draws a training question, so the filter behind them is seldom exercised.
Here each filter gets a pool built to collide with the held-out set, and must drop exactly what its task's key
names: the question for arith and reasoning-gym (a question determines its answer there), the (question,
setup) pair for the hidden-state tasks (the question alone does not determine the problem). A problem that
repeats a held-out question with another answer is still that question: keyed on (question, answer), a filter
would let it through.
"""

from __future__ import annotations

import dataclasses

import pytest

from gtpo.config import DataConfig
from gtpo.data.problems import load_train_problems
from gtpo.tasks import arith, multistep, relay, rgym
from gtpo.tasks.hidden import HiddenStateTask
from gtpo.types import Problem


def _other_answer(problem: Problem) -> str:
    return problem.answer + "0"


def test_arith_drops_a_held_out_question_whatever_its_answer(monkeypatch):
    held = arith.heldout_problems()[0]
    pool = [
        dataclasses.replace(held, id="same-question-other-answer", answer=_other_answer(held)),
        Problem(id="fresh", question="What is 1234 * 567?", answer=str(1234 * 567), source="arith"),
    ]
    assert pool[1].question not in {p.question for p in arith.heldout_problems()}
    monkeypatch.setattr(arith, "make_problems", lambda *args, **kwargs: list(pool))
    assert [p.id for p in arith.train_problems(seed=0, n=len(pool))] == ["fresh"]


@pytest.mark.parametrize("task", [multistep, relay], ids=["multistep", "relay"])
def test_a_hidden_state_task_drops_a_held_out_question_and_setup_pair_and_keeps_the_question_on_other_setup(
    monkeypatch, task
):
    heldout = task.heldout_problems()
    held = heldout[0]
    other_setup = next(p.setup_code for p in heldout if p.setup_code != held.setup_code)
    keys = {(p.question, p.setup_code) for p in heldout}
    assert (held.question, other_setup) not in keys
    pool = [
        dataclasses.replace(held, id="same-pair-other-answer", answer=_other_answer(held)),
        dataclasses.replace(held, id="same-question-same-answer-other-setup", setup_code=other_setup),
        dataclasses.replace(held, id="same-pair", answer=held.answer),
    ]
    monkeypatch.setattr(HiddenStateTask, "make_problems", lambda *args, **kwargs: list(pool))
    kept = [p.id for p in task.train_problems(seed=0, n=len(pool))]
    assert kept == ["same-question-same-answer-other-setup"]


def test_a_reasoning_gym_stream_drops_held_out_questions_whatever_their_answers(monkeypatch):
    """No reasoning-gym needed: its loader is replaced by two fixed lists (the filter is gtpo's own)."""
    sets = {
        "data.eval": [Problem(id="h0", question="Q0", answer="1"), Problem(id="h1", question="Q1", answer="2")],
        "data.train": [
            Problem(id="t0", question="Q0", answer="9"),  # a held-out question with another answer
            Problem(id="t1", question="Q1", answer="2"),  # a held-out problem as it is
            Problem(id="t2", question="Q2", answer="2"),  # a held-out answer to another question
        ],
    }
    monkeypatch.setattr(rgym, "load", lambda source, field, *args: list(sets[field]))
    both = DataConfig(train="reasoning-gym:basic_arithmetic", eval="reasoning-gym:basic_arithmetic")
    assert [p.id for p in load_train_problems(both, seed=0)] == ["t2"]
    apart = dataclasses.replace(both, eval="")  # no held-out set: nothing to leave out
    assert [p.id for p in load_train_problems(apart, seed=0)] == ["t0", "t1", "t2"]
