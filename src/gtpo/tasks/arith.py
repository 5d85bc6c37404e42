"""The embedded task: arithmetic that a tiny model cannot do in its head but can do with Python.

Kinds: multiplication of large numbers, a chain (product, then remainder, then a sum), and modular powers.
Answers are plain integers. Problems are deterministic in (seed, index); the held-out set is drawn from a
disjoint seed space, ships as a file, and contains no question of the training stream.
"""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

from gtpo.types import Problem

SYSTEM_PROMPT = "Use python to compute. Answer in \\boxed{}."
KINDS = ("mul", "chain", "powmod")
HELDOUT_PATH = Path(__file__).resolve().parents[1] / "assets" / "tiny" / "heldout.jsonl"
HELDOUT_SEED = 1_000_003
TRAIN_SIZE = 20_000


def make_problem(rng: random.Random, kind: str) -> tuple[str, int, str]:
    """(question, answer, the Python expression that computes it)."""
    if kind == "mul":
        a, b = rng.randint(100, 9_999), rng.randint(10, 999)
        return f"What is {a} * {b}?", a * b, f"{a} * {b}"
    if kind == "chain":
        a, b, m, c = rng.randint(10, 999), rng.randint(10, 99), rng.randint(7, 97), rng.randint(1, 99)
        return f"Let x = {a} * {b}. What is x % {m} + {c}?", (a * b) % m + c, f"{a} * {b} % {m} + {c}"
    if kind == "powmod":
        a, e, m = rng.randint(2, 99), rng.randint(5, 20), rng.randint(11, 999)
        return f"What is {a} ** {e} % {m}?", pow(a, e, m), f"{a} ** {e} % {m}"
    raise ValueError(f"unknown arith kind {kind!r}; choose from {KINDS}")


def make_problems(n: int, seed: int, kinds: tuple[str, ...] = KINDS, prefix: str = "arith") -> list[Problem]:
    rng = random.Random(seed)
    problems = []
    for i in range(n):
        question, answer, _ = make_problem(rng, kinds[i % len(kinds)])
        problems.append(Problem(id=f"{prefix}-{seed}-{i}", question=question, answer=str(answer), source="arith"))
    return problems


@cache
def _heldout_questions() -> frozenset[str]:
    return frozenset(p.question for p in heldout_problems())


def train_problems(seed: int = 0, n: int = TRAIN_SIZE) -> list[Problem]:
    """The training pool for a run seed, with every held-out question removed."""
    if seed == HELDOUT_SEED:
        raise ValueError(f"seed {HELDOUT_SEED} is reserved for the held-out set; use another seed")
    held = _heldout_questions()
    return [p for p in make_problems(n, seed) if p.question not in held]


def heldout_problems() -> list[Problem]:
    """The shipped held-out set (regenerate with ``write_heldout``)."""
    lines = HELDOUT_PATH.read_text().splitlines()
    return [Problem(**json.loads(line)) for line in lines if line.strip()]


def write_heldout(path: Path = HELDOUT_PATH, n: int = 300) -> None:
    rows = [p.__dict__ for p in make_problems(n, HELDOUT_SEED, prefix="heldout")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
