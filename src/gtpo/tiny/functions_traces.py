"""Warm-start traces for the code environment on the generated function family (``gtpo.tasks.functions``).

Each trace follows the code environment's protocol exactly (``gtpo.envs.code``): the question as
``envs.code.question`` shows it, assistant turns that are one ```` ```python ```` block stopped at its closing
fence, the sandbox's output as an ```` ```output ```` block, and a last turn without a code block ("Done.") that
submits the function as the session last defined it. An attempt is the function plus one line that checks it on
the docstring's two examples, so its output is two booleans a small model can read::

    def sift_pile(xs):
        xs = [x for x in xs if x > 2]
        return sum(xs)
    print(sift_pile([1, 4, 5]) == 9, sift_pile([2, 3, 7]) == 10)

Styles (``MIX``):

- ``clean``: the right function, ``True True``, done;
- ``fix``: a wrong function (a step with other parameters, a step left out, two steps swapped, another step or
  fold in its place) that fails an example, then the right one, ``True True``, done;
- ``repair``: an attempt that fails to run (a misspelled name in the check, a missing colon, the wrong variable
  returned: an invalid call), then the right one, done;
- ``quit``: a wrong function, its ``False``, and done anyway (the episode fails: RL's room to learn to fix).

Problems come from the family's train split only (``functions.draw(..., "train")``), never the held-out one.
Outputs come from running the cells through ``gtpo.tasks.notebook``, as a sandbox session shows them.
"""

from __future__ import annotations

import random
import re
from typing import Any

from gtpo.envs.code import preamble, question
from gtpo.tasks import functions
from gtpo.tasks.functions import Pipeline, Step
from gtpo.tasks.notebook import TraceWriter
from gtpo.tasks.traces import Trace
from gtpo.types import CodeProblem

MIX = {"clean": 0.35, "fix": 0.25, "repair": 0.1, "quit": 0.3}
SUBMIT = "Done."
"""The last turn: no code block, so the episode submits the session's function."""
LEVEL_WEIGHTS = {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
"""How often each level of the family appears in the traces."""


def solution(pipeline: Pipeline) -> str:
    """The function as an attempt writes it: the signature without types, one line per step."""
    arg = "xs" if pipeline.kind == "list" else "s"
    lines = [f"def {pipeline.name}({arg}):", *(f"    {step.code}" for step in pipeline.steps)]
    if not pipeline.steps[-1].fold:
        lines.append(f"    return {arg}")
    return "\n".join(lines)


def check_line(name: str, inputs: list[Any], outputs: list[Any]) -> str:
    """One print that compares the function with the docstring's examples: ``True True`` when both agree."""
    tests = (f"{name}({inputs[i]!r}) == {outputs[i]!r}" for i in range(functions.VISIBLE_EXAMPLES))
    return f"print({', '.join(tests)})"


def _other_step(pipeline: Pipeline, index: int, rng: random.Random) -> Step:
    """A step that could stand at ``index`` instead: the same kind of step with other parameters, or another
    step (a fold for a fold)."""
    step = pipeline.steps[index]
    if step.fold:
        if pipeline.kind == "list":
            return rng.choice([f for f in functions.LIST_FOLDS if f.key != step.key])
        return functions.str_fold(rng)
    build = functions.list_step if pipeline.kind == "list" else functions.str_step
    names = functions.LIST_STEPS if pipeline.kind == "list" else functions.STR_STEPS
    name = step.key[0] if rng.random() < 0.5 else rng.choice(names)
    return build(name, rng)


def wrong_pipeline(pipeline: Pipeline, inputs: list[Any], rng: random.Random) -> Pipeline:
    """A plausible mistake that changes at least one of the two examples' results (so its check shows False)."""
    steps = list(pipeline.steps)
    plain = [i for i, s in enumerate(steps) if not s.fold]
    visible = inputs[: functions.VISIBLE_EXAMPLES]
    for _ in range(100):
        roll = rng.random()
        mistake = list(steps)
        if roll < 0.15 and len(plain) >= 2:  # a step left out
            del mistake[rng.choice(plain)]
        elif roll < 0.3 and len(plain) >= 2:  # two neighbours swapped
            i = rng.choice(plain[:-1])
            if i + 1 in plain:
                mistake[i], mistake[i + 1] = mistake[i + 1], mistake[i]
        else:  # one step (or the fold) replaced
            i = rng.randrange(len(steps))
            mistake[i] = _other_step(pipeline, i, rng)
        wrong = Pipeline(pipeline.kind, tuple(mistake), pipeline.name)
        if not mistake or (mistake[-1].fold != steps[-1].fold):
            continue
        if any(wrong.run(x) != pipeline.run(x) for x in visible):
            return wrong
    raise ValueError(f"no visible mistake found for {pipeline.key}")


def broken_attempt(code: str, name: str, rng: random.Random) -> str:
    """``code`` (function and check) changed so that it fails to run: NameError or SyntaxError."""
    roll = rng.random()
    if roll < 0.4:  # the check calls a misspelled name
        head, check = code.rsplit("\n", 1)
        typo = name[:-1] if rng.random() < 0.5 else name.replace("_", "", 1)
        return f"{head}\n{check.replace(name + '(', typo + '(', 1)}"
    if roll < 0.7:  # the signature without its colon
        return code.replace("):\n", ")\n", 1)
    lines = code.split("\n")  # the wrong variable returned
    last = max(i for i, line in enumerate(lines) if line.startswith("    "))
    lines[last] = re.sub(r"\b(xs|s)\b", "x", lines[last])
    return "\n".join(lines)


def make_episode(rng: random.Random, style: str, level: int | None = None) -> tuple[CodeProblem, Trace]:
    """A fresh train-split problem (``level`` drawn by ``LEVEL_WEIGHTS`` if None) and one trace of ``style`` on
    it."""
    if level is None:
        levels, weights = zip(*LEVEL_WEIGHTS.items(), strict=True)
        level = rng.choices(levels, weights)[0]
    pipeline, inputs, outputs = functions.draw(rng, level, "train")
    problem = functions.render(pipeline, inputs, outputs, "trace", level)
    # the environment runs the prompt (a Python stub) first in the session, so the first call is cell 2 there
    writer = TraceWriter(question(problem), "", preamble(problem))
    check = check_line(pipeline.name, inputs, outputs)
    right = f"{solution(pipeline)}\n{check}"
    if style in ("fix", "quit"):
        writer.call(f"{solution(wrong_pipeline(pipeline, inputs, rng))}\n{check}")
    elif style == "repair":
        writer.call(broken_attempt(right, pipeline.name, rng))
    if style != "quit":
        writer.call(right)
    writer.segments.append(("model", SUBMIT))
    return problem, Trace(writer.question, "", writer.segments)


def make_trace(rng: random.Random, style: str, level: int | None = None) -> Trace:
    return make_episode(rng, style, level)[1]


def make_traces(n: int, seed: int) -> list[Trace]:
    rng = random.Random(seed)
    styles, weights = zip(*MIX.items(), strict=True)
    return [make_trace(rng, rng.choices(styles, weights)[0]) for _ in range(n)]
