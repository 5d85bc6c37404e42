"""The shipped code model's traces, recipe and preset: the code environment's exact protocol, train-split problems
only, episodes that the real sandbox and hidden tests grade as each style says, and the pinned start.

Traces are replayed through the real rollout (a scripted sampler speaks the trace's model turns), the run's tool
sandbox and the hidden-test harness: what the environment shows after each call must be the trace's tool output.
"""

from __future__ import annotations

import random

import pytest
from conftest import ScriptedSampler

from gtpo.config import SandboxConfig
from gtpo.envs.code import SYSTEM_PROMPT, as_problem, code_envs, question
from gtpo.rollout.spec import EpisodeSpec
from gtpo.tasks import functions
from gtpo.tasks.notebook import Notebook
from gtpo.tiny.functions_traces import (
    SUBMIT,
    broken_attempt,
    check_line,
    make_episode,
    make_trace,
    make_traces,
    solution,
    wrong_pipeline,
)

STYLES = ("clean", "fix", "repair", "quit")
PASSES = {"clean": True, "fix": True, "repair": True, "quit": False}
CALLS = {"clean": 1, "fix": 2, "repair": 2, "quit": 1}


@pytest.fixture(scope="module")
def sandbox():
    from gtpo.components import build_sandbox

    pool = build_sandbox(SandboxConfig(workers=2))
    yield pool
    pool.close()


def _calls(trace) -> list[str]:
    return [text for kind, text in trace.segments if kind == "model" and text.startswith("```python")]


def _outputs(trace) -> list[str]:
    return [text for kind, text in trace.segments if kind == "tool"]


@pytest.mark.parametrize("style", STYLES)
def test_traces_follow_the_protocol_and_their_style(style):
    rng = random.Random(11)
    for _ in range(40):
        trace = make_trace(rng, style)
        calls, outputs = _calls(trace), _outputs(trace)
        kinds = [kind for kind, _ in trace.segments]
        assert kinds == ["model", "tool"] * CALLS[style] + ["model"]  # call, output, ..., the submission
        assert trace.segments[-1] == ("model", SUBMIT) and "```" not in SUBMIT
        assert all(c.endswith("\n```") and c.count("```") == 2 for c in calls)  # stopped at the closing fence
        assert trace.question.startswith("Write this function:\n```python\ndef ")
        last = outputs[-1]
        assert ("True True" in last) is PASSES[style], trace.segments
        if style in ("fix", "quit"):
            assert "False" in outputs[0] and "Error" not in outputs[0]
        if style == "repair":
            assert "Error" in outputs[0]


def test_a_trace_shows_the_question_as_the_environment_does():
    rng = random.Random(4)
    pipeline, inputs, outputs = functions.draw(random.Random(4), 2, "train")
    trace = make_trace(rng, "clean", level=2)
    assert trace.question == question(functions.render(pipeline, inputs, outputs, "any", 2))


def test_mistakes_show_on_the_examples_and_broken_attempts_fail_to_run():
    rng = random.Random(7)
    for level in functions.LEVELS * 30:
        pipeline, inputs, outputs = functions.draw(rng, level, "train")
        wrong = wrong_pipeline(pipeline, inputs, rng)
        assert any(wrong.run(x) != y for x, y in zip(inputs[:2], outputs[:2], strict=True))
        right = f"{solution(pipeline)}\n{check_line(pipeline.name, inputs, outputs)}"
        assert Notebook().run(right).strip() == "True True"
        shown = Notebook().run(broken_attempt(right, pipeline.name, rng))
        assert shown.rstrip().splitlines()[-1].startswith(("NameError", "SyntaxError")), shown


def test_traces_use_train_problems_only():
    """Held-out problems are told apart by their steps, which the docstring's first line spells out."""

    def described(text: str) -> str:
        return text.split('"""', 1)[1].splitlines()[0]

    held = {described(p.prompt) for p in functions.heldout_problems()}
    traces = {described(t.question) for t in make_traces(400, 0)}
    assert len(traces) > 300 and not held & traces


def _replay(sandbox, tokenizer, episodes):
    """Each (problem, trace) as an episode: a scripted sampler speaks the trace's model turns."""
    from gtpo.rollout.episode import rollout

    problems = [problem.__class__(**{**problem.__dict__, "id": f"t{i}"}) for i, (problem, _) in enumerate(episodes)]
    turns = {question(p): [text for kind, text in trace.segments if kind == "model"] for p, (_, trace) in
             zip(problems, episodes, strict=True)}  # fmt: skip

    def respond(context: str, _: int) -> str:  # the system prompt names an ```output block too: count outputs
        return next(texts for q, texts in turns.items() if q in context)[context.count("```output\n")]

    spec = EpisodeSpec(SYSTEM_PROMPT, max_turns=4, max_new_tokens_per_turn=1500, max_total_tokens=8000)
    make_env = code_envs(sandbox, max_turns=4)
    out = rollout([as_problem(p, "traces") for p in problems], 1, ScriptedSampler(tokenizer, respond), tokenizer,
                  make_env, spec)  # fmt: skip
    return out.trajectories


def test_replayed_traces_show_their_own_outputs_and_pass_as_their_style_says(sandbox, tiny_tokenizer):
    rng = random.Random(21)
    styles = [style for style in STYLES for _ in range(3)]
    episodes = [make_episode(rng, style) for style in styles]
    for style, (_, trace), t in zip(styles, episodes, _replay(sandbox, tiny_tokenizer, episodes), strict=True):
        assert [turn.observation for turn in t.turns[:-1]] == _outputs(trace)  # the sandbox shows what the trace does
        assert t.finish_reason == "submitted" and t.turns[-1].code is None
        assert t.correct is PASSES[style], (style, trace.segments)  # all 8 hidden tests, or not
        assert sum(turn.invalid_call for turn in t.turns) == (style == "repair")


def test_the_recipe_builds_from_scratch_into_tiny_code_and_measures_on_the_preset():
    from gtpo.tiny import CODE_MODEL_DIR, SHIPPED_MODELS
    from gtpo.tiny.build import RECIPES

    recipe = RECIPES["functions"]
    assert recipe.out == CODE_MODEL_DIR == SHIPPED_MODELS["tiny-code"] and recipe.init_from is None
    assert recipe.presets == ("code",) and recipe.traces == "gtpo.tiny.functions_traces"


def test_the_preset_selects_the_family_its_heldout_set_and_its_model():
    from gtpo.config import load_preset, validate
    from gtpo.envs.sources import eval_problems, system_prompt, train_problems
    from gtpo.model.source import model_path

    config = validate(load_preset("code"))
    train = train_problems(config.data, seed=0)
    assert train[0].source.startswith("code:functions") and train[0].task.source == "functions"
    held = eval_problems(config.data)
    assert [p.id for p in held] == [p.id for p in functions.heldout_problems(*_heldout_args(config.data.eval))]
    assert system_prompt(config.data) == SYSTEM_PROMPT
    assert model_path(config.model.name_or_path).endswith("tiny-code") and config.rollout.max_turns == 4


def _heldout_args(source: str) -> tuple[int, tuple[int, ...]]:
    """(problems per level, levels) of a ``code:functions[?...]`` held-out source."""
    from gtpo.envs.code import parse

    _, options, _ = parse(source, "data.eval")
    levels = tuple(int(v) for v in str(options.get("levels", "1,2,3,4")).split(","))
    return int(options.get("problems", functions.HELDOUT_PER_LEVEL)), levels


def test_the_shipped_tokenizer_fits_every_trace_in_the_presets_lengths():
    from gtpo.config import load_preset
    from gtpo.model.policy import load_policy
    from gtpo.model.source import model_path
    from gtpo.tiny.build import tokenize_trace

    config = load_preset("code")
    _, tokenizer = load_policy(model_path(config.model.name_or_path))
    for trace in make_traces(300, 1):
        ids, _ = tokenize_trace(tokenizer, trace, SYSTEM_PROMPT)
        assert len(ids) <= config.rollout.max_total_tokens
        for kind, text in trace.segments:
            if kind == "model":
                assert len(tokenizer.encode(text, add_special_tokens=False)) < config.rollout.max_new_tokens_per_turn


@pytest.mark.slow  # 200 held-out episodes through the sandbox and the hidden tests: about 50 s
def test_the_shipped_model_starts_between_a_fifth_and_two_fifths_right():
    """The warm start leaves room both ways: the preset's whole held-out set at the training temperature, sampled
    as a run's step-0 evaluation samples it."""
    from gtpo.components import build_sampler
    from gtpo.config import load_preset
    from gtpo.envs.sources import env_factory, eval_problems, eval_source
    from gtpo.eval.evaluate import evaluate_problems
    from gtpo.model.policy import load_policy
    from gtpo.model.source import model_path
    from gtpo.rollout.spec import episode_spec

    config = load_preset("code")
    model, tokenizer = load_policy(model_path(config.model.name_or_path))
    spec = episode_spec(config, SYSTEM_PROMPT).evaluation(config.eval.temperature)
    from gtpo.components import build_sandbox

    with build_sandbox(SandboxConfig(workers=2)) as pool:
        make_env = env_factory(eval_source(config.data), "data.eval", sandbox=pool, max_turns=spec.max_turns)
        report = evaluate_problems(
            eval_problems(config.data), name="code-heldout", sampler=build_sampler(config, model, tokenizer),
            tokenizer=tokenizer, make_env=make_env, spec=spec, seed=0,
        )  # fmt: skip
    assert 0.20 <= report.accuracy <= 0.40, report.accuracy
    assert report.metrics()["eval/tool_call_rate"] > 0.5
