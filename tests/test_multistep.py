"""The multi-step task: its generator, its hidden sandbox preload, and warm-start traces that show what the
sandbox shows.

Answers are checked by running the question itself in a real sandbox session opened with the problem's setup
code (``gtpo.envs.python_tool.open_sessions``), not by the generator's own arithmetic.
"""

from __future__ import annotations

import collections
import random
import re

import pytest
from conftest import ScriptedSampler

from gtpo.envs.python_tool import open_sessions, python_tool_envs
from gtpo.rollout.episode import rollout
from gtpo.rollout.spec import EpisodeSpec
from gtpo.tasks import multistep
from gtpo.tasks.multistep import KINDS, heldout_problems, make_problem, make_problems, train_problems
from gtpo.tasks.multistep_traces import make_traces
from gtpo.tasks.notebook import Notebook
from gtpo.tools import extract_code, format_tool_output
from gtpo.types import Problem


@pytest.fixture(scope="module")
def pool():
    from gtpo.sandbox import SandboxPool

    with SandboxPool(max_workers=2) as sandbox:
        yield sandbox


def _question_as_code(question: str) -> str:
    """'Let a = X and b = Y. What is E?' -> 'a = X\\nb = Y\\nprint(E)'; 'What is E?' -> 'print(E)'."""
    lets, _, asked = question.rpartition("What is ")
    statements = re.sub(r"^Let |\. $", "", lets).split(" and ") if lets else []
    return "\n".join([*statements, f"print({asked.rstrip('?')})"])


def test_problems_are_deterministic_and_need_two_to_four_calls():
    assert make_problems(8, seed=3) == make_problems(8, seed=3)
    assert make_problems(8, seed=3) != make_problems(8, seed=4)
    rng = random.Random(0)
    calls = collections.defaultdict(set)
    for i in range(200):
        kind = KINDS[i % len(KINDS)]
        _, _, _, steps = make_problem(rng, kind)
        calls[kind].add(len(steps))
    assert calls == {"iter2": {2}, "pair": {3}, "hop": {3}, "iter3": {4}}


def test_answers_match_the_question_run_in_a_preloaded_sandbox(pool):
    problems = make_problems(12, seed=7)
    sessions = open_sessions(pool, problems)
    try:
        results = pool.run_batch([(s, _question_as_code(p.question)) for s, p in zip(sessions, problems, strict=True)])
    finally:
        for session in sessions:
            pool.close_session(session)
    for problem, result in zip(problems, results, strict=True):
        assert result.status == "ok", (problem.question, result.output)
        assert result.output.strip() == problem.answer, problem.question


def test_hidden_state_is_what_decides_the_answer():
    # the same question text recurs with different hidden functions, and so with different answers
    by_question = collections.defaultdict(set)
    for p in make_problems(4000, seed=1, kinds=("iter2",)):
        by_question[p.question].add(p.answer)
    assert any(len(answers) > 1 for answers in by_question.values())


def test_heldout_ships_regenerates_and_is_disjoint_from_training(tmp_path):
    held = heldout_problems()
    assert len(held) == 300 and all(p.setup_code for p in held)
    multistep.write_heldout(tmp_path / "heldout.jsonl")
    assert (tmp_path / "heldout.jsonl").read_text() == multistep.HELDOUT_PATH.read_text()
    keys = {(p.question, p.setup_code) for p in held}
    assert not keys & {(p.question, p.setup_code) for p in train_problems(seed=0, n=3000)}
    with pytest.raises(ValueError, match="reserved"):
        train_problems(seed=multistep.HELDOUT_SEED, n=1)


def test_wrong_name_raises_a_key_error_that_lists_the_names(pool):
    problem = make_problems(1, seed=2, kinds=("pair",))[0]
    (session,) = open_sessions(pool, [problem])
    try:
        result = pool.run_batch([(session, "print(lookup('nosuchname'))")])[0]
    finally:
        pool.close_session(session)
    assert result.status == "error"
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("KeyError: \"no key 'nosuchname'; keys: ")
    assert "<setup>" not in result.output and "_T" not in result.output  # the hidden code stays hidden


def test_a_failing_setup_is_a_clear_error_and_closes_its_session():
    class Recorder:
        def __init__(self):
            self.opened, self.closed = [], []

        def open_session(self):
            self.opened.append(f"s{len(self.opened)}")
            return self.opened[-1]

        def run_batch(self, calls):
            from gtpo.types import ExecResult

            return [ExecResult("error", "NameError: name 'oops' is not defined\n") for _ in calls]

        def close_session(self, session_id):
            self.closed.append(session_id)

    executor = Recorder()
    with pytest.raises(RuntimeError, match=r"setup code of problem 'broken'.*NameError"):
        open_sessions(executor, [Problem(id="broken", question="q", answer="1", setup_code="oops")])
    assert executor.closed == executor.opened == ["s0"]
    assert open_sessions(executor, [Problem(id="plain", question="q", answer="1")]) == ["s1"]  # nothing to run


def test_rollout_preloads_each_session_and_never_shows_the_setup(pool, tiny_tokenizer):
    setup = "exec(compile('_T = {\"kiwi\": 41}\\ndef lookup(name):\\n    return _T[name]\\n', '<setup>', 'exec'))\n"
    problem = Problem(id="p", question="What is lookup('kiwi') + 1?", answer="42", setup_code=setup)
    replies = ["```python\nprint(lookup('kiwi'))\n```", "```python\nprint(41 + 1)\n```", "\\boxed{42}"]
    sampler = ScriptedSampler(tiny_tokenizer, lambda text, turn: replies[turn])
    envs = python_tool_envs(pool, max_turns=4)
    result = rollout([problem], 3, sampler, tiny_tokenizer, envs, EpisodeSpec(system_prompt="s", max_turns=4))
    for trajectory in result.trajectories:
        assert [t.tool_output for t in trajectory.turns[:2]] == ["41\n", "42\n"]
        assert trajectory.correct
        text = tiny_tokenizer.decode(trajectory.input_ids)
        assert "_T" not in text and "compile" not in text and "<setup>" not in text


def test_traces_show_exactly_what_the_sandbox_shows(pool):
    """Warm-start traces are rendered in-process; replaying their cells in real sessions gives the same text."""
    traces = [t for t in make_traces(80, seed=3) if any(kind == "tool" for kind, _ in t.segments)]
    with_errors = [t for t in traces if any("Error" in text for kind, text in t.segments if kind == "tool")]
    assert len(with_errors) >= 5
    for trace in with_errors[:5] + traces[:5]:
        problem = Problem(id="t", question=trace.question, answer="", setup_code=trace.setup_code)
        (session,) = open_sessions(pool, [problem])
        try:
            pairs = zip(trace.segments, trace.segments[1:], strict=False)
            for (kind, text), (next_kind, observation) in pairs:
                if kind == "model" and next_kind == "tool":
                    code, _, _ = extract_code(text)
                    result = pool.run_batch([(session, code)])[0]
                    assert format_tool_output(result.output) == observation
        finally:
            pool.close_session(session)


def test_trace_mix_and_endings():
    traces = make_traces(400, seed=0)
    endings = collections.Counter()
    for trace in traces:
        model = [text for kind, text in trace.segments if kind == "model"]
        tools = [text for kind, text in trace.segments if kind == "tool"]
        right = model[-1] == f"\\boxed{{{trace.answer}}}"
        recovered = any("Error" in text for text in tools)
        style = "guess" if not tools else ("fix" if recovered else ("clean" if right else "quit"))
        endings[style] += 1
        if style in ("fix", "clean"):
            assert right
        else:
            assert not right
    assert all(endings[style] > 30 for style in ("clean", "fix", "guess", "quit")), endings
    assert Notebook("x = 1\n").run("x + 1") == "2\n"  # a final bare expression is shown, as in the sandbox


def test_the_preset_selects_the_task_its_heldout_set_and_its_model():
    from gtpo.config import load_preset, validate
    from gtpo.data.problems import load_eval_problems, load_train_problems
    from gtpo.model.source import model_path
    from gtpo.tasks import system_prompt_for

    config = validate(load_preset("multistep"))
    train = load_train_problems(config.data, seed=0)
    held = load_eval_problems(config.data)
    assert train[0].source == "multistep" and train[0].setup_code
    assert [p.id for p in held] == [p.id for p in heldout_problems()]
    assert system_prompt_for(config.data) == multistep.SYSTEM_PROMPT
    assert model_path(config.model.name_or_path).endswith("tiny-multistep")
    assert model_path("tiny").endswith("tiny") and model_path("org/model") == "org/model"
    assert config.rollout.max_turns == 6


def test_gtpo_eval_knows_the_heldout_set_and_its_prompt():
    from gtpo.eval.cli import EvalConfig, _task_of, load_sets

    config = EvalConfig(benchmarks=("multistep-heldout",), limit=5)
    problems = load_sets(config)["multistep-heldout"]
    assert len(problems) == 5 and all(p.setup_code for p in problems)
    assert _task_of(config) == "multistep"
