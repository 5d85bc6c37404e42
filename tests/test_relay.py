"""The relay task: the answer needs two calls, the second typing in what the first showed; mistakes are recoverable.

Checked over generated problems by running cells exactly as a sandbox session shows them (``Notebook``), and
once through the real sandbox."""

from __future__ import annotations

import random

import pytest

from gtpo.sandbox import SandboxLimits, SandboxPool
from gtpo.tasks import relay
from gtpo.tasks.notebook import Notebook
from gtpo.tasks.relay_traces import make_trace, make_traces

PROBLEMS = 300


def _problems(seed: int = 5):
    rng = random.Random(seed)
    return [relay.make_problem(rng, relay.KINDS[i % len(relay.KINDS)]) for i in range(PROBLEMS)]


def _composed(steps) -> list[str]:
    """One-cell programs a model might write instead of two calls: the second call around the first."""
    first, second = steps[0].code, steps[1].code
    inner = second[second.index("(") + 1 : -1]
    nested = second.replace(inner, first)
    return [nested, f"print({nested})", f"r = {first}\n{second.replace(inner, 'r')}"]


def test_the_intended_two_calls_give_the_answer_and_the_second_types_in_what_the_first_showed():
    for question, answer, hidden, steps in _problems():
        book = Notebook(hidden.setup_code())
        first = book.run(steps[0].code).strip()
        assert first == steps[0].shows
        assert steps[0].shows in steps[1].code, question  # the second call is written with the first's output
        assert book.run(steps[1].code).strip() == str(answer) == steps[1].shows


def test_no_single_cell_composition_gives_the_answer():
    """The tools show their result and return None, so a value cannot flow into the next call inside a cell."""
    for _, answer, hidden, steps in _problems():
        for program in _composed(steps):
            shown = Notebook(hidden.setup_code()).run(program)
            assert shown.strip().splitlines()[0] == steps[0].shows  # the inner call still shows its value
            assert "Error" in shown and str(answer) not in shown.splitlines()[-1], program


def test_every_mistake_is_recoverable_in_the_same_session():
    for _, answer, hidden, steps in _problems():
        book = Notebook(hidden.setup_code())
        name = steps[0].code.split("'")[1] if "'" in steps[0].code else "kiwi"
        for wrong in (f"lookup('{name}x')", f"lookup({name})", "f(x)", "f('7')", *_composed(steps)):
            assert "Error" in book.run(wrong)
        book.run(steps[0].code)
        assert book.run(steps[1].code).strip() == str(answer)


def test_a_wrong_name_lists_the_names_and_the_traceback_hides_the_setup():
    _, _, hidden, _ = relay.make_problem(random.Random(1), "hop")
    shown = Notebook(hidden.setup_code()).run("lookup('nope')")
    assert "KeyError" in shown and all(name in shown for name in hidden.table)
    assert "_T" not in shown and "<setup>" not in shown


def test_the_real_sandbox_shows_the_same_as_the_notebook():
    cases = _problems()[:6]
    with SandboxPool(SandboxLimits(wall_time_s=5.0), max_workers=2) as pool:
        for _, answer, hidden, steps in cases:
            session = pool.open_session()
            try:
                (setup,) = pool.run_batch([(session, hidden.setup_code())])
                assert setup.status == "ok" and setup.output == ""
                (first,) = pool.run_batch([(session, steps[0].code)])
                (composed,) = pool.run_batch([(session, _composed(steps)[0])])
                (second,) = pool.run_batch([(session, steps[1].code)])
            finally:
                pool.close_session(session)
            assert first.output.strip() == steps[0].shows
            assert composed.status == "error"
            assert second.output.strip() == str(answer)


@pytest.mark.parametrize("style", ["clean", "fix", "quit", "guess"])
def test_traces_answer_as_their_style_says(style):
    rng = random.Random(3)
    for _ in range(50):
        trace = make_trace(rng, style)
        final = trace.segments[-1][1]
        calls = [text for kind, text in trace.segments if kind == "model" and text.startswith("```python")]
        assert len(calls) == {"clean": 2, "fix": 3, "quit": 1, "guess": 0}[style]
        right = final == f"\\boxed{{{trace.answer}}}"
        assert right is (style in ("clean", "fix")), (style, trace.segments)


def test_the_training_stream_shares_no_problem_with_the_held_out_set():
    held = {(p.question, p.setup_code) for p in relay.heldout_problems()}
    assert len(held) == 300
    train = relay.train_problems(seed=0, n=3000)
    assert not held & {(p.question, p.setup_code) for p in train}
    assert len(make_traces(40, 0)) == 40


def test_the_preset_selects_the_task_its_heldout_set_and_its_model():
    from gtpo.config import load_preset, validate
    from gtpo.data.problems import load_eval_problems, load_train_problems
    from gtpo.model.source import model_path
    from gtpo.tasks import system_prompt_for

    config = validate(load_preset("relay"))
    assert load_train_problems(config.data, seed=0)[0].source == "relay"
    assert [p.id for p in load_eval_problems(config.data)] == [p.id for p in relay.heldout_problems()]
    assert system_prompt_for(config.data) == relay.SYSTEM_PROMPT
    assert model_path(config.model.name_or_path).endswith("tiny-relay") and config.rollout.max_turns == 5


@pytest.mark.slow  # 300 held-out problems through the sandbox: about 26 s
def test_the_shipped_model_starts_between_a_fifth_and_two_fifths_right():
    """The warm start leaves room both ways: the whole held-out set at the training temperature, sampled as a
    run's step-0 evaluation samples it (measured 0.313 and 0.327: one thread or two change the float sums)."""
    from gtpo.components import build_sampler
    from gtpo.config import load_preset
    from gtpo.envs.python_tool import python_tool_envs
    from gtpo.eval.evaluate import evaluate_problems
    from gtpo.model.policy import load_policy
    from gtpo.model.source import model_path
    from gtpo.rollout.spec import episode_spec

    config = load_preset("relay")
    model, tokenizer = load_policy(model_path(config.model.name_or_path))
    spec = episode_spec(config, relay.SYSTEM_PROMPT).evaluation(config.eval.temperature)
    with SandboxPool(SandboxLimits(wall_time_s=5.0), max_workers=2) as pool:
        report = evaluate_problems(
            relay.heldout_problems(), name="relay-heldout", sampler=build_sampler(config, model, tokenizer),
            tokenizer=tokenizer, make_env=python_tool_envs(pool, max_turns=spec.max_turns), spec=spec, seed=0,
        )  # fmt: skip
    assert 0.20 <= report.accuracy <= 0.40, report.accuracy
    assert report.metrics()["eval/tool_call_rate"] > 0.5
