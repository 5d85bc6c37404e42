"""Warm-start traces for the relay task: two calls carried over turns, repaired mistakes, and failures.

Styles (``MIX``), in the spirit of the other tasks' traces:

- ``clean``: the first call (``lookup('fig')``), its output read, the second call with that output typed in,
  then ``\\boxed{}`` of what it showed;
- ``fix``: like clean, but one call is first written wrong and the next turn repairs it: a misspelled or
  unquoted name (``KeyError``/``NameError``), ``f(x)`` with no ``x``, or both calls composed in one cell
  (the inner value is shown, then ``TypeError``), which the next turn replaces by the second call;
- ``guess``: a direct ``\\boxed{}`` of a plausible wrong number, no tool;
- ``quit``: the first call, then ``\\boxed{}`` of its output (the intermediate value: wrong).

Outputs come from running the trace's cells through ``gtpo.tasks.notebook`` (as a sandbox session shows them).
"""

from __future__ import annotations

import random

from gtpo.tasks.notebook import TraceWriter, misspell
from gtpo.tasks.relay import KINDS, make_problem
from gtpo.tasks.traces import Trace, wrong_number

MIX = {"clean": 0.45, "fix": 0.25, "guess": 0.15, "quit": 0.15}


def _broken(first: str, second: str, rng: random.Random) -> tuple[int, str]:
    """Which call (0 or 1) is written wrong first, and how."""
    which = rng.randrange(2)
    code = (first, second)[which]
    roll = rng.random()
    if which == 0 and roll < 0.3:  # both calls in one cell: the inner value shows, then the outer call fails
        return 0, second.replace(second[second.index("(") + 1 : -1], first)
    if code.startswith("lookup('"):
        name = code[len("lookup('") : -2]
        return which, f"lookup('{misspell(name, rng)}')" if roll < 0.7 else f"lookup({name})"
    return which, "f(x)"


def make_trace(rng: random.Random, style: str) -> Trace:
    question, answer, hidden, steps = make_problem(rng, rng.choice(KINDS))
    writer = TraceWriter(question, answer, hidden.setup_code())
    if style == "guess":
        return writer.boxed(wrong_number(answer, rng))
    broken_at, broken = _broken(steps[0].code, steps[1].code, rng) if style == "fix" else (-1, "")
    last = ""
    for index, step in enumerate(steps[: 1 if style == "quit" else 2]):
        if index == broken_at:
            writer.call(broken)
        last = writer.call(step.code)
    return writer.boxed(last)


def make_traces(n: int, seed: int) -> list[Trace]:
    rng = random.Random(seed)
    styles, weights = zip(*MIX.items(), strict=True)
    return [make_trace(rng, rng.choices(styles, weights)[0]) for _ in range(n)]
