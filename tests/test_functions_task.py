"""The generated function-writing problems: deterministic, split cleanly, short, and graded by the harness."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from gtpo.sandbox.hidden_tests import HiddenTestHarness, HiddenTestJob, HiddenTestLimits
from gtpo.tasks import functions

SRC = str(Path(__file__).resolve().parents[1] / "src")


def body(problem) -> list[str]:
    """The reference's lines after the docstring: one per step, then ``return`` unless a fold returns."""
    return problem.reference[len(problem.prompt) :].splitlines()


def step_lines(problem) -> list[str]:
    lines = body(problem)
    return lines[:-1] if lines[-1].strip() in ("return xs", "return s") else lines


def expected_values(problem) -> list[object]:
    check = ast.parse(problem.tests).body[0]
    return [ast.literal_eval(s.test.comparators[0]) for s in check.body]


@pytest.fixture(scope="module")
def train():
    return functions.train_problems(seed=0, n=800)


@pytest.fixture(scope="module")
def heldout():
    return functions.heldout_problems()


@pytest.fixture(scope="module")
def harness():
    with HiddenTestHarness(HiddenTestLimits(call_time_s=2.0), max_workers=2) as h:
        yield h


def test_problems_are_deterministic_in_seed_and_index(train):
    assert functions.train_problems(seed=0, n=800) == train
    assert functions.problem(0, 17, train[17].difficulty) == train[17]
    assert functions.train_problems(seed=1, n=50) != train[:50]


def test_the_held_out_set_is_the_same_in_another_interpreter(heldout):
    """Python salts str hashes per process; the generator must not depend on that."""
    digest = hashlib.sha256("".join(p.prompt + p.tests for p in heldout).encode()).hexdigest()
    script = (
        "import hashlib\nfrom gtpo.tasks import functions\n"
        "print(hashlib.sha256(''.join(p.prompt + p.tests for p in functions.heldout_problems()).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert other.stdout.strip() == digest


def test_train_and_held_out_never_share_a_problem(train, heldout):
    steps_of = {tuple(step_lines(p)) for p in heldout}
    more_train = functions.train_problems(seed=7, n=800)
    assert not steps_of & {tuple(step_lines(p)) for p in train + more_train}
    assert len(steps_of) == len(heldout)  # no two held-out problems share their steps either


def test_levels_count_steps_and_come_in_turn(train, heldout):
    assert [p.difficulty for p in heldout[:8]] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert Counter(p.difficulty for p in heldout) == dict.fromkeys(functions.LEVELS, functions.HELDOUT_PER_LEVEL)
    for problem in train + heldout:
        assert len(step_lines(problem)) == problem.difficulty, problem.reference


def test_prompts_and_solutions_stay_short(train):
    for problem in train:
        assert len(problem.prompt) <= 500 and len(body(problem)) <= 5
        if problem.difficulty == 1:
            assert len(body(problem)) <= 3  # a one-step problem takes a two-line solution
    easy = [p for p in train if p.difficulty == 1]
    assert max(len(p.prompt) for p in easy) <= 320


def test_prompts_show_examples_and_never_the_solution(train):
    for problem in train[:200]:
        assert problem.prompt.count(f">>> {problem.entry_point}(") == functions.VISIBLE_EXAMPLES
        assert all(line.strip() not in problem.prompt for line in step_lines(problem))
        assert problem.prompt.startswith(f"def {problem.entry_point}(")


def test_no_constant_answer_passes_most_tests(train):
    for problem in train:
        values = expected_values(problem)
        assert len(values) == functions.TESTS_PER_PROBLEM
        assert max(Counter(map(repr, values)).values()) <= functions.MAX_SAME_OUTPUT


def test_every_step_changes_some_expected_value(train):
    """Skipping any one step of the reference fails a test (run here: the references are our own code)."""
    for problem in train[:300]:
        lines = body(problem)
        for skip in range(len(step_lines(problem))):
            if lines[skip].lstrip().startswith("return"):
                continue  # dropping the fold changes the return type anyway
            namespace: dict = {}
            exec(problem.prompt + "\n".join(lines[:skip] + lines[skip + 1 :]) + "\n", namespace)
            check = compile(problem.tests, "<tests>", "exec")
            exec(check, namespace)
            with pytest.raises(AssertionError):
                namespace["check"](namespace[problem.entry_point])


def test_references_pass_their_hidden_tests_and_plausible_wrong_solutions_fail(train, heldout, harness):
    sample = train[:40] + heldout[:40]
    rights = harness.run_batch([HiddenTestJob(p.reference, p.tests, p.entry_point, p.setup) for p in sample])
    assert [r.status for r in rights] == ["passed"] * len(sample)
    assert {r.total for r in rights} == {functions.TESTS_PER_PROBLEM}
    wrongs = []
    for p in sample:
        lines = body(p)
        skipped_first = p.prompt + "\n".join(lines[1:] if len(step_lines(p)) > 1 else [lines[0], "    return 0"])
        wrongs.append(HiddenTestJob(skipped_first + "\n", p.tests, p.entry_point, p.setup))
    assert [r.status for r in harness.run_batch(wrongs)] == ["failed"] * len(sample)


def test_a_level_that_does_not_exist_is_an_error():
    with pytest.raises(ValueError, match="level must be one of"):
        functions.problem(0, 0, level=9)
