"""The relay task: two tool calls where the second needs what the first printed, and nothing else will do.

Each problem hides a table (read with ``lookup(name)``) and a function ``f(x) = (a * x + b) % m`` in its sandbox
session (``Problem.setup_code``, run before the model's first cell). Both tools *show* their result and return
``None``, as a tool whose answer is read off a screen: the value cannot flow from one call into another inside
a program, so ``print(f(lookup('fig')))`` shows the lookup and then fails with a ``TypeError``. The model has
to read the first output and type it into its next call:

| kind | question | calls |
|---|---|---|
| ``hop`` | ``Let k = lookup('fig'). What is lookup(k)?`` | lookup('fig') shows a name; lookup of that name |
| ``iter2`` | ``What is f(f(37))?`` | f(37) shows y; f(y) |
| ``hop_f`` | ``What is f(lookup('fig'))?`` | lookup('fig') shows v; f(v) |

The answer is what the second call shows, so no arithmetic is left to do in text: what is learned is carrying
a value from one turn into the next. Every failure is recoverable within the turn cap: a wrong name raises
``KeyError`` listing the table's names, a composed call shows the inner value before it fails, and the hidden
state is never changed by a call. Problems are deterministic in (seed, index); the held-out set comes from a
reserved seed and shares no (question, setup) pair with the training stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from gtpo.tasks.hidden import HiddenState, HiddenStateTask

SYSTEM_PROMPT = "Use python; lookup(name) and f(x) print their result and return None. Answer in \\boxed{}."
KINDS = ("hop", "iter2", "hop_f")
HELDOUT_PATH = Path(__file__).resolve().parents[1] / "assets" / "tiny-relay" / "heldout.jsonl"
HELDOUT_SEED = 3_000_017

TOOLS_SOURCE = (
    "def lookup(name):\n"
    "    if name not in _T:\n"
    "        raise KeyError(f'no key {name!r}; keys: ' + ', '.join(sorted(_T)))\n"
    "    print(_T[name])\n"
    "def f(x):\n"
    "    if not isinstance(x, int):\n"
    "        raise TypeError(f'f needs an integer, got {x!r}')\n"
    "    print((_A * x + _B) % _M)\n"
)


@dataclass(frozen=True)
class Hidden(HiddenState):
    """The tools show their values and return ``None``."""

    def setup_code(self) -> str:
        """One cell that defines the table, ``lookup`` and ``f``, compiled under the file name ``<setup>`` so that
        the sandbox's tracebacks show the model its own line and the message, not the hidden code."""
        source = f"_T = {self.table!r}\n_A, _B, _M = {self.a}, {self.b}, {self.m}\n{TOOLS_SOURCE}"
        return f"exec(compile({source!r}, '<setup>', 'exec'))\n"


@dataclass(frozen=True)
class Step:
    """One call of the intended solution (without ``print``: the tools print) and the text it shows."""

    code: str
    shows: str


def make_problem(rng: random.Random, kind: str) -> tuple[str, int, Hidden, list[Step]]:
    """(question, answer, hidden state, the two intended calls in order)."""
    hidden = Hidden.draw(rng)
    names = list(hidden.table)
    if kind == "hop":
        start, target = names[0], names[1]
        value = int(hidden.table[target])
        steps = [Step(f"lookup('{start}')", target), Step(f"lookup('{target}')", str(value))]
        return f"Let k = lookup('{start}'). What is lookup(k)?", value, hidden, steps
    if kind == "iter2":
        x = rng.randint(2, 99)
        y = hidden.f(x)
        z = hidden.f(y)
        return f"What is f(f({x}))?", z, hidden, [Step(f"f({x})", str(y)), Step(f"f({y})", str(z))]
    if kind == "hop_f":
        name = rng.choice(names[2:])  # a numeric entry
        v = int(hidden.table[name])
        answer = hidden.f(v)
        steps = [Step(f"lookup('{name}')", str(v)), Step(f"f({v})", str(answer))]
        return f"What is f(lookup('{name}'))?", answer, hidden, steps
    raise ValueError(f"unknown relay kind {kind!r}; choose from {KINDS}")


TASK = HiddenStateTask("relay", KINDS, make_problem, HELDOUT_PATH, HELDOUT_SEED)
make_problems = TASK.make_problems
train_problems = TASK.train_problems
heldout_problems = TASK.heldout_problems
write_heldout = TASK.write_heldout
