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

import json
import random
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from gtpo.types import Problem

SYSTEM_PROMPT = "Use python; lookup(name) and f(x) print their result and return None. Answer in \\boxed{}."
KINDS = ("hop", "iter2", "hop_f")
NAMES = ("kiwi", "plum", "fig", "lime", "pear", "date", "yam", "corn", "bean", "leek", "okra", "sage", "mint", "dill")
TABLE_SIZE = 6
HELDOUT_PATH = Path(__file__).resolve().parents[1] / "assets" / "tiny-relay" / "heldout.jsonl"
HELDOUT_SEED = 3_000_017
TRAIN_SIZE = 20_000

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
class Hidden:
    """The per-problem state the setup code creates: the table and f's constants."""

    table: dict[str, int | str]
    a: int
    b: int
    m: int

    def f(self, x: int) -> int:
        return (self.a * x + self.b) % self.m

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


def hidden_state(rng: random.Random) -> Hidden:
    names = rng.sample(NAMES, TABLE_SIZE)
    table: dict[str, int | str] = {name: rng.randint(10, 99) for name in names}
    table[names[0]] = names[1]  # the entry a "hop" follows (a distractor for the other kinds)
    return Hidden(table=table, a=rng.randint(2, 9), b=rng.randint(1, 99), m=rng.randint(101, 499))


def make_problem(rng: random.Random, kind: str) -> tuple[str, int, Hidden, list[Step]]:
    """(question, answer, hidden state, the two intended calls in order)."""
    hidden = hidden_state(rng)
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


def make_problems(n: int, seed: int, kinds: tuple[str, ...] = KINDS, prefix: str = "relay") -> list[Problem]:
    rng = random.Random(seed)
    problems = []
    for i in range(n):
        question, answer, hidden, _ = make_problem(rng, kinds[i % len(kinds)])
        problems.append(
            Problem(
                id=f"{prefix}-{seed}-{i}",
                question=question,
                answer=str(answer),
                source="relay",
                setup_code=hidden.setup_code(),
            )
        )
    return problems


@cache
def _heldout_keys() -> frozenset[tuple[str, str]]:
    return frozenset((p.question, p.setup_code) for p in heldout_problems())


def train_problems(seed: int = 0, n: int = TRAIN_SIZE) -> list[Problem]:
    """The training pool for a run seed, without any (question, setup) pair of the held-out set."""
    if seed == HELDOUT_SEED:
        raise ValueError(f"seed {HELDOUT_SEED} is reserved for the held-out set; use another seed")
    held = _heldout_keys()
    return [p for p in make_problems(n, seed) if (p.question, p.setup_code) not in held]


def heldout_problems() -> list[Problem]:
    """The shipped held-out set (regenerate with ``write_heldout``)."""
    lines = HELDOUT_PATH.read_text().splitlines()
    return [Problem(**json.loads(line)) for line in lines if line.strip()]


def write_heldout(path: Path = HELDOUT_PATH, n: int = 300) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [asdict(p) for p in make_problems(n, HELDOUT_SEED, prefix="heldout")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
