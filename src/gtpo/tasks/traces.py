"""Programmatically written TIR traces for the tiny model's supervised warm start.

The mix is deliberate: clean tool use, an error that the next turn fixes, and a direct answer that is a
plausible but wrong guess. The warm-started model therefore starts neither hopeless nor perfect, and RL has
headroom that comes from *using the tool* (see docs/embedded_default.md).
Tool outputs are produced by actually executing the trace's (project-written, trusted) code.
"""

from __future__ import annotations

import contextlib
import io
import random
from dataclasses import dataclass

from gtpo.tasks.arith import KINDS, make_problem
from gtpo.tools import format_tool_output

MIX = {"clean": 0.55, "fix": 0.15, "guess": 0.30}


@dataclass
class Trace:
    question: str
    answer: str
    segments: list[tuple[str, str]]
    """(kind, text) with kind "model" (trained on) or "tool" (observation, never trained on)."""
    setup_code: str = ""
    """The problem's hidden setup (``Problem.setup_code``), run before the trace's first cell; never shown."""


def run_code(code: str) -> str:
    """Execute trusted trace code like the sandbox would show it: stdout, or the error's last line."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(code, {})
    except Exception as err:  # the "fix" traces show the model an error on purpose
        return f"{type(err).__name__}: {err}"
    return out.getvalue()


def _code_turn(code: str) -> tuple[str, str]:
    return ("model", f"```python\n{code}\n```")


def wrong_number(answer: int, rng: random.Random) -> int:
    """A plausible wrong answer: 1 to 3 digits of the right one changed."""
    digits = list(str(answer))
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(digits))
        digits[i] = str(rng.randint(1 if i == 0 else 0, 9))
    guess = int("".join(digits))
    return guess if guess != answer else answer + rng.randint(1, 9)


def make_trace(rng: random.Random, style: str) -> Trace:
    question, answer, expr = make_problem(rng, rng.choice(KINDS))
    segments: list[tuple[str, str]] = []
    if style == "guess":
        segments.append(("model", f"\\boxed{{{wrong_number(answer, rng)}}}"))
        return Trace(question, str(answer), segments)
    if style == "fix":
        bad = f"print(y)\ny = {expr}"
        segments += [_code_turn(bad), ("tool", format_tool_output(run_code(bad)))]
    code = f"print({expr})"
    segments += [_code_turn(code), ("tool", format_tool_output(run_code(code)))]
    segments.append(("model", f"\\boxed{{{answer}}}"))
    return Trace(question, str(answer), segments)


def make_traces(n: int, seed: int) -> list[Trace]:
    rng = random.Random(seed)
    styles, weights = zip(*MIX.items(), strict=True)
    return [make_trace(rng, rng.choices(styles, weights)[0]) for _ in range(n)]
