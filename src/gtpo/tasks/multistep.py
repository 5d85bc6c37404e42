"""The multi-step embedded task: questions about a hidden table and a hidden function, 2 to 4 dependent calls.

Every problem comes with hidden setup code (``Problem.setup_code``) that the rollout runs in the trajectory's
sandbox session before the model's first cell (``gtpo.rollout.episode.open_sessions``): a table read with
``lookup(name)`` and a function ``f(x) = (a * x + b) % m``, both drawn per problem. The question names them but
never shows their contents, so the model must call them, read the output and use it in a later call:

| kind | example | calls |
|---|---|---|
| ``iter2`` | ``What is f(f(37))?`` | f(37), then f of its output |
| ``pair`` | ``Let a = lookup('kiwi') and b = lookup('plum'). What is a * b?`` | two lookups, then the product |
| ``hop`` | ``Let k = lookup('fig'). What is lookup(k) + 45?`` | a lookup that returns a name, its lookup, the sum |
| ``iter3`` | ``What is f(f(f(12))) + 7?`` | three calls of f, then the sum |

A wrong name raises ``KeyError`` listing the table's names, so an early call can fail and be recovered from.
Tool-level credit has something to do here: which call went wrong, and whether a later turn repaired it.
Problems are deterministic in (seed, index). Because the answer depends on the hidden table, a question alone
does not determine a problem; the held-out set (from a reserved seed) shares no (question, setup) pair with the
training stream. What this is not: the warm-start traces (``gtpo.tasks.multistep_traces``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from gtpo.tasks.hidden import HiddenState, HiddenStateTask

SYSTEM_PROMPT = "Use python; lookup(name) and f(x) are defined. Answer in \\boxed{}."
KINDS = ("iter2", "pair", "hop", "iter3")
OPS = ("+", "-", "*")
HELDOUT_PATH = Path(__file__).resolve().parents[1] / "assets" / "tiny-multistep" / "heldout.jsonl"
HELDOUT_SEED = 2_000_003

LOOKUP_SOURCE = (
    "def lookup(name):\n"
    "    if name not in _T:\n"
    "        raise KeyError(f'no key {name!r}; keys: ' + ', '.join(sorted(_T)))\n"
    "    return _T[name]\n"
)


@dataclass(frozen=True)
class Hidden(HiddenState):
    """The tools return their values: ``lookup`` reads the table, ``f`` computes."""

    def setup_code(self) -> str:
        """One cell that defines ``_T``, ``lookup`` and ``f`` in the session. The source is compiled under the
        file name ``<setup>``, which the sandbox's tracebacks leave out (they keep ``<cell N>`` frames only),
        so an error inside ``lookup`` shows the model its own line and the message, not the hidden code."""
        source = f"_T = {self.table!r}\n{LOOKUP_SOURCE}def f(x):\n    return ({self.a} * x + {self.b}) % {self.m}\n"
        return f"exec(compile({source!r}, '<setup>', 'exec'))\n"


@dataclass(frozen=True)
class Step:
    """One tool call of the intended solution: the expression the model should print, and its output."""

    code: str
    value: int | str


def make_problem(rng: random.Random, kind: str) -> tuple[str, int, Hidden, list[Step]]:
    """(question, answer, hidden state, the intended calls in order)."""
    hidden = Hidden.draw(rng)
    names = list(hidden.table)
    if kind in ("iter2", "iter3"):
        x = rng.randint(2, 99)
        steps, value = [], x
        for _ in range(2 if kind == "iter2" else 3):
            steps.append(Step(f"f({value})", hidden.f(value)))
            value = hidden.f(value)
        if kind == "iter2":
            return f"What is f(f({x}))?", value, hidden, steps
        c = rng.randint(2, 99)
        steps.append(Step(f"{value} + {c}", value + c))
        return f"What is f(f(f({x}))) + {c}?", value + c, hidden, steps
    if kind == "pair":
        first, second = rng.sample(names[2:], 2)  # numeric entries
        a, b = int(hidden.table[first]), int(hidden.table[second])
        op = rng.choice(OPS)
        answer = eval(f"{a} {op} {b}")  # two ints and one of + - *
        steps = [Step(f"lookup('{first}')", a), Step(f"lookup('{second}')", b), Step(f"{a} {op} {b}", answer)]
        question = f"Let a = lookup('{first}') and b = lookup('{second}'). What is a {op} b?"
        return question, answer, hidden, steps
    if kind == "hop":
        start, target = names[0], names[1]
        value = int(hidden.table[target])
        c = rng.randint(2, 99)
        steps = [
            Step(f"lookup('{start}')", target),
            Step(f"lookup('{target}')", value),
            Step(f"{value} + {c}", value + c),
        ]
        return f"Let k = lookup('{start}'). What is lookup(k) + {c}?", value + c, hidden, steps
    raise ValueError(f"unknown multistep kind {kind!r}; choose from {KINDS}")


TASK = HiddenStateTask("multistep", KINDS, make_problem, HELDOUT_PATH, HELDOUT_SEED)
make_problems = TASK.make_problems
train_problems = TASK.train_problems
heldout_problems = TASK.heldout_problems
write_heldout = TASK.write_heldout
