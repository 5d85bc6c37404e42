"""Warm-start traces for the multi-step task: one call per step, errors that the next turn repairs, and failures.

Styles (``MIX``), in the spirit of the arithmetic traces (``gtpo.tasks.traces``):

- ``clean``: every intended call in its own turn (``print(lookup('kiwi'))``, read the output, use it in the next
  call), then ``\\boxed{}`` of the last output;
- ``fix``: like clean, but one call is first written wrong (a misspelled name -> ``KeyError``, an unquoted name
  or ``f(x)`` with no ``x`` -> ``NameError``) and the next turn repeats it correctly;
- ``guess``: a direct ``\\boxed{}`` of a plausible wrong number, no tool;
- ``quit``: the first calls are right, then the trace answers with an intermediate output (wrong).

So the warm-started model starts neither hopeless nor perfect, and what RL can improve is spread over turns:
calling at all, spelling names, carrying each output into the next call, and not stopping early.

Tool outputs come from executing the trace's code (project-written, trusted) through ``gtpo.tasks.notebook``,
which renders cells exactly as the sandbox does, so a trace shows the model the same text that a rollout will.
"""

from __future__ import annotations

import random

from gtpo.tasks.multistep import KINDS, make_problem
from gtpo.tasks.notebook import TraceWriter, misspell
from gtpo.tasks.traces import Trace, wrong_number

MIX = {"clean": 0.5, "fix": 0.2, "guess": 0.15, "quit": 0.15}


def _broken(code: str, rng: random.Random) -> str | None:
    """A plausible wrong version of one intended call, or None if this call has none."""
    if code.startswith("lookup('"):
        name = code[len("lookup('") : -2]
        return f"lookup('{misspell(name, rng)}')" if rng.random() < 0.6 else f"lookup({name})"
    if code.startswith("f("):
        return "f(x)"
    return None


def make_trace(rng: random.Random, style: str) -> Trace:
    question, answer, hidden, steps = make_problem(rng, rng.choice(KINDS))
    writer = TraceWriter(question, answer, hidden.setup_code())
    if style == "guess":
        return writer.boxed(wrong_number(answer, rng))
    n_calls = len(steps) if style != "quit" else rng.randint(1, len(steps) - 1)
    breakable = [i for i, step in enumerate(steps) if step.code.startswith(("lookup(", "f("))]
    broken_at = rng.choice(breakable) if style == "fix" else -1
    last = ""
    for index, step in enumerate(steps[:n_calls]):
        broken = _broken(step.code, rng) if index == broken_at else None
        if broken is not None:
            writer.call(f"print({broken})")
        last = writer.call(f"print({step.code})")
    final = last if style != "quit" or last != str(answer) else str(wrong_number(answer, rng))
    return writer.boxed(final)


def make_traces(n: int, seed: int) -> list[Trace]:
    rng = random.Random(seed)
    styles, weights = zip(*MIX.items(), strict=True)
    return [make_trace(rng, rng.choices(styles, weights)[0]) for _ in range(n)]
