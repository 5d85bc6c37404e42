"""What the hidden-state tasks (``multistep``, ``relay``) share: a per-problem table and function that live only in
the problem's sandbox session, and the problem set built on them (training pool, held-out file, reserved seed).

Each task says how its tools are written (``HiddenState.setup_code``, overridden per task) and what its questions
are (its ``make_problem``); the rest is here once, so the two tasks generate, filter and ship problems the same way.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Self

from gtpo.types import Problem

NAMES = ("kiwi", "plum", "fig", "lime", "pear", "date", "yam", "corn", "bean", "leek", "okra", "sage", "mint", "dill")
TABLE_SIZE = 6


@dataclass(frozen=True)
class HiddenState:
    """A problem's hidden state: the table read with ``lookup(name)`` and ``f(x) = (a * x + b) % m``."""

    table: dict[str, int | str]
    a: int
    b: int
    m: int

    def f(self, x: int) -> int:
        return (self.a * x + self.b) % self.m

    def setup_code(self) -> str:
        """The cell that creates this state in a session; each task writes its own tools."""
        raise NotImplementedError

    @classmethod
    def draw(cls, rng: random.Random) -> Self:
        names = rng.sample(NAMES, TABLE_SIZE)
        table: dict[str, int | str] = {name: rng.randint(10, 99) for name in names}
        table[names[0]] = names[1]  # the entry a "hop" follows (a distractor for the other kinds)
        return cls(table=table, a=rng.randint(2, 9), b=rng.randint(1, 99), m=rng.randint(101, 499))


MakeProblem = Callable[[random.Random, str], tuple[str, int, HiddenState, list[Any]]]
"""(rng, kind) -> (question, answer, hidden state, the intended calls in order)."""


@dataclass(frozen=True)
class HiddenStateTask:
    """A task's problems: deterministic in (seed, index), the held-out set from a reserved seed, and a training
    pool that shares no (question, setup) pair with it (the question alone does not determine a problem)."""

    name: str
    kinds: tuple[str, ...]
    make_problem: MakeProblem
    heldout_path: Path
    heldout_seed: int
    train_size: int = 20_000

    def make_problems(self, n: int, seed: int, kinds: tuple[str, ...] | None = None, prefix: str = "") -> list[Problem]:
        kinds = kinds or self.kinds
        rng = random.Random(seed)
        problems = []
        for i in range(n):
            question, answer, hidden, _ = self.make_problem(rng, kinds[i % len(kinds)])
            problems.append(
                Problem(
                    id=f"{prefix or self.name}-{seed}-{i}",
                    question=question,
                    answer=str(answer),
                    source=self.name,
                    setup_code=hidden.setup_code(),
                )
            )
        return problems

    @cached_property
    def _heldout_keys(self) -> frozenset[tuple[str, str]]:
        return frozenset((p.question, p.setup_code) for p in self.heldout_problems())

    def train_problems(self, seed: int = 0, n: int | None = None) -> list[Problem]:
        """The training pool for a run seed, without any (question, setup) pair of the held-out set."""
        if seed == self.heldout_seed:
            raise ValueError(f"seed {self.heldout_seed} is reserved for the held-out set; use another seed")
        held = self._heldout_keys
        pool = self.make_problems(self.train_size if n is None else n, seed)
        return [p for p in pool if (p.question, p.setup_code) not in held]

    def heldout_problems(self) -> list[Problem]:
        """The shipped held-out set (regenerate with ``write_heldout``)."""
        lines = self.heldout_path.read_text().splitlines()
        return [Problem(**json.loads(line)) for line in lines if line.strip()]

    def write_heldout(self, path: Path | None = None, n: int = 300) -> None:
        path = self.heldout_path if path is None else Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The question/answer fields only: an environment's reset seed means nothing to a math problem.
        fields = ("id", "question", "answer", "source", "setup_code")
        rows = [{k: asdict(p)[k] for k in fields} for p in self.make_problems(n, self.heldout_seed, prefix="heldout")]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
