"""What environment sources share: ``NAME?key=value&...`` options, and the reset seeds that are their problems.

A problem of an environment source is one reset seed. Training instances start at the run's seed times their
number (or at ``seed=S``); held-out instances start at ``HELDOUT_SEED``, above every training seed, so no training
run plays a held-out seed. (Distinct seeds need not give distinct games: a small game has few starts.)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import yaml

from gtpo.config import ConfigError
from gtpo.types import Problem

TRAIN_PROBLEMS = 2000
HELDOUT_PROBLEMS = 200
HELDOUT_SEED = 2**31
"""Held-out reset seeds start here (under 2**32, as NumPy's seeding needs)."""
OWN_OPTIONS = ("problems", "seed")
"""Options that belong to the source (how many instances, the first seed), not to the environment."""


def parse_source(body: str, source: str, field: str, hint: str) -> tuple[str, dict[str, Any]]:
    """``NAME?a=1&b=x`` -> (NAME, {"a": 1, "b": "x"}); values are YAML scalars (``3`` an int, ``0.5`` a float)."""
    name, _, query = body.partition("?")
    if not name:
        raise ConfigError(f"{field} {source!r}: {hint}")
    options: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigError(f"{field} {source!r}: options after '?' must be key=value pairs joined by '&'") from None
    for key, value in pairs:
        try:
            options[key] = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            options[key] = value
    return name, options


def without_own(source: str) -> str:
    """``source`` without the source's own options (for a held-out set derived from a training source: its
    ``problems``/``seed`` chose training instances)."""
    name, _, query = source.partition("?")
    kept = [pair for pair in query.split("&") if pair and pair.partition("=")[0] not in OWN_OPTIONS]
    return f"{name}?{'&'.join(kept)}" if kept else name


def split_own(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the source's own options, the environment's)."""
    own = {key: options[key] for key in OWN_OPTIONS if key in options}
    return own, {key: value for key, value in options.items() if key not in OWN_OPTIONS}


def seeded_problems(
    name: str, source: str, field: str, own: dict[str, Any], *, heldout: bool, run_seed: int
) -> list[Problem]:
    """One problem per reset seed (see the module docstring)."""
    try:
        count = int(own.get("problems", HELDOUT_PROBLEMS if heldout else TRAIN_PROBLEMS))
        first = int(own.get("seed", HELDOUT_SEED if heldout else run_seed * count))
    except (TypeError, ValueError):
        raise ConfigError(f"{field} {source!r}: problems and seed must be integers") from None
    if count < 1 or first < 0 or first + count > 2**32:
        raise ConfigError(f"{field} {source!r}: need problems >= 1, seed >= 0 and seed + problems <= 2**32")
    if not heldout and first + count > HELDOUT_SEED:
        raise ConfigError(
            f"{field} {source!r}: training seeds must stay below {HELDOUT_SEED}, where held-out seeds begin"
        )
    return [
        Problem(id=f"{name}#{seed}", question=f"{name} (seed {seed})", answer="", source=source, seed=seed)
        for seed in range(first, first + count)
    ]
