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

Tool outputs come from executing the trace's code (project-written, trusted) in-process through ``Notebook``,
which renders cells exactly as the sandbox does (its cell names, value display and short tracebacks, from
``gtpo.sandbox.cell``), so a trace shows the model the same text that a rollout will.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import random
from typing import Any

from gtpo.sandbox.cell import exec_cell, short_traceback
from gtpo.sandbox.session import join_output
from gtpo.tasks.multistep import KINDS, make_problem
from gtpo.tasks.traces import Trace, wrong_number
from gtpo.tools import format_tool_output

MIX = {"clean": 0.5, "fix": 0.2, "guess": 0.15, "quit": 0.15}


class Notebook:
    """Trusted cells run in-process, shown as a sandbox session shows them (same ``<cell N>`` numbering: the
    hidden setup is cell 1 when there is one)."""

    def __init__(self, setup_code: str = "") -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.cells_run = 0
        if setup_code:
            output = self.run(setup_code)
            if output:
                raise RuntimeError(f"setup code printed or failed: {output}")

    def run(self, code: str) -> str:
        self.cells_run += 1
        out = io.StringIO()
        error = ""
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                exec_cell(code, f"<cell {self.cells_run}>", self.namespace, out)
        except Exception as err:  # the "fix" traces fail on purpose
            error = short_traceback(err)
        return join_output(out.getvalue(), error)


def _misspell(name: str, rng: random.Random) -> str:
    i = rng.randrange(len(name))
    letter = rng.choice([c for c in "aeioulnrst" if c != name[i]])
    return name[:i] + letter + name[i + 1 :]


def _broken(code: str, rng: random.Random) -> str | None:
    """A plausible wrong version of one intended call, or None if this call has none."""
    if code.startswith("lookup('"):
        name = code[len("lookup('") : -2]
        return f"lookup('{_misspell(name, rng)}')" if rng.random() < 0.6 else f"lookup({name})"
    if code.startswith("f("):
        return "f(x)"
    return None


def make_trace(rng: random.Random, style: str) -> Trace:
    question, answer, hidden, steps = make_problem(rng, rng.choice(KINDS))
    segments: list[tuple[str, str]] = []
    if style == "guess":
        segments.append(("model", f"\\boxed{{{wrong_number(answer, rng)}}}"))
        return Trace(question, str(answer), segments, hidden.setup_code())
    notebook = Notebook(hidden.setup_code())

    def call(expr: str) -> str:
        code = f"print({expr})"
        segments.append(("model", f"```python\n{code}\n```"))
        output = notebook.run(code)
        segments.append(("tool", format_tool_output(output)))
        return output.strip()

    n_calls = len(steps) if style != "quit" else rng.randint(1, len(steps) - 1)
    breakable = [i for i, step in enumerate(steps) if step.code.startswith(("lookup(", "f("))]
    broken_at = rng.choice(breakable) if style == "fix" else -1
    last = ""
    for index, step in enumerate(steps[:n_calls]):
        broken = _broken(step.code, rng) if index == broken_at else None
        if broken is not None:
            call(broken)
        last = call(step.code)
    final = last if style != "quit" or last != str(answer) else str(wrong_number(answer, rng))
    segments.append(("model", f"\\boxed{{{final}}}"))
    return Trace(question, str(answer), segments, hidden.setup_code())


def make_traces(n: int, seed: int) -> list[Trace]:
    rng = random.Random(seed)
    styles, weights = zip(*MIX.items(), strict=True)
    return [make_trace(rng, rng.choices(styles, weights)[0]) for _ in range(n)]
