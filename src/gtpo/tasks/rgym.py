"""reasoning-gym's procedural datasets as a data source: ``--data.train reasoning-gym:NAME[?key=value&...]``.

reasoning-gym (``pip install 'gtpo[real]'``) generates problems with verifiable answers offline, any number of
them, deterministically in (size, seed): ``basic_arithmetic``, GSM8K-style ``gsm_symbolic`` and about a hundred
more. Options after ``?`` go to the dataset's config (``size``, ``seed``, ``max_digits``, ...); values are read
as YAML scalars (``3`` is an int, ``0.5`` a float). Without ``size``/``seed`` the training set is 2,000 problems
from the run's seed and the held-out set 200 problems from ``HELDOUT_SEED``; training problems whose question is
in a reasoning-gym held-out set of the same run are dropped.

Answers are graded by gtpo's grader (``gtpo.data.grading``), not reasoning-gym's verifier: the two are compared on
generated problems in tests/test_rgym.py.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import yaml

from gtpo.config import ConfigError
from gtpo.types import Problem

PREFIX = "reasoning-gym:"
TRAIN_SIZE = 2000
HELDOUT_SIZE = 200
HELDOUT_SEED = 1_000_003
"""Held-out sets default to a seed no run uses by default (runs count from 0), as the embedded tasks do."""


def is_source(name: str) -> bool:
    return name.startswith(PREFIX)


def parse(source: str, field: str) -> tuple[str, dict[str, Any]]:
    """``reasoning-gym:NAME?size=100&seed=3`` -> (NAME, {"size": 100, "seed": 3})."""
    body = source.removeprefix(PREFIX)
    name, _, query = body.partition("?")
    if not name:
        raise ConfigError(f"{field} {source!r}: name a dataset, e.g. reasoning-gym:basic_arithmetic")
    options = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        try:
            options[key] = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            options[key] = value
    return name, options


def load(source: str, field: str, seed: int, size: int) -> list[Problem]:
    """Problems from a reasoning-gym dataset; ``seed`` and ``size`` apply unless the source sets them."""
    try:
        import reasoning_gym
    except ImportError:
        raise ImportError(f"{field} {source!r} needs reasoning-gym; pip install 'gtpo[real]'") from None
    name, options = parse(source, field)
    options = {"size": size, "seed": seed, **options}
    try:
        dataset = reasoning_gym.create_dataset(name, **options)
    except Exception as err:  # an unknown name or option: reasoning-gym's own message names it
        raise ConfigError(f"{field} {source!r}: reasoning-gym refused it ({err})") from None
    tag = f"{name}-{options['seed']}"
    return [
        Problem(id=f"rg-{tag}-{i}", question=entry["question"], answer=str(entry["answer"]), source=f"rg:{name}")
        for i, entry in enumerate(dataset)
    ]


def verifier(source: str, field: str = "data") -> Any:
    """reasoning-gym's own dataset object for ``source`` (``score_answer(answer, entry)``), for cross-checks."""
    import reasoning_gym

    name, options = parse(source, field)
    return reasoning_gym.create_dataset(name, **{"size": HELDOUT_SIZE, "seed": HELDOUT_SEED, **options})
