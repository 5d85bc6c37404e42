"""Question/answer problems from a run's ``data`` settings: a built-in task, a reasoning-gym source, a local file,
or a Hugging Face data set (offline: one line at once, see ``gtpo.data.hub``). Environment sources (GEM, a user's
class) are ``gtpo.envs.sources``', which hands everything else to this module."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

from gtpo.config import ConfigError, DataConfig
from gtpo.tasks import EMBEDDED_TASKS, rgym
from gtpo.types import Problem


def load_train_problems(cfg: DataConfig, seed: int) -> list[Problem]:
    if cfg.train in EMBEDDED_TASKS:
        return importlib.import_module(EMBEDDED_TASKS[cfg.train]).train_problems(seed=seed)
    if rgym.is_source(cfg.train):
        problems = rgym.load(cfg.train, "data.train", seed, rgym.TRAIN_SIZE)
        if rgym.is_source(cfg.eval):  # no held-out question in the training stream
            held = {p.question for p in load_eval_problems(cfg)}
            problems = [p for p in problems if p.question not in held]
        return problems
    return _load(cfg.train, cfg, cfg.split, "data.train")


def load_eval_problems(cfg: DataConfig) -> list[Problem]:
    if not cfg.eval:
        return []
    task = cfg.eval.removesuffix("-heldout")
    if cfg.eval.endswith("-heldout") and task in EMBEDDED_TASKS:
        problems = importlib.import_module(EMBEDDED_TASKS[task]).heldout_problems()
    elif rgym.is_source(cfg.eval):
        problems = rgym.load(cfg.eval, "data.eval", rgym.HELDOUT_SEED, rgym.HELDOUT_SIZE)
    else:
        from gtpo.data.load import BENCHMARKS, load_benchmark

        if cfg.eval in BENCHMARKS:
            with _from_hub("data.eval", cfg.eval, BENCHMARKS[cfg.eval].hf_name):
                problems = load_benchmark(cfg.eval)
        else:
            problems = _load(cfg.eval, cfg, "test", "data.eval")
    return problems[: cfg.eval_limit] if cfg.eval_limit else problems


def _load(source: str, cfg: DataConfig, split: str, field: str) -> list[Problem]:
    from gtpo.data.load import DataError, load_problems

    if not Path(source).exists() and "/" not in source:
        raise ConfigError(
            f"{field} {source!r} is neither an existing file nor an HF dataset name (owner/name); "
            f"use a built-in task ({', '.join(map(repr, EMBEDDED_TASKS))}), a .jsonl/.json/.parquet path, "
            "a dataset name, or reasoning-gym:NAME"
        )
    try:
        with _from_hub(field, source, source):
            return load_problems(source, question_field=cfg.question_field, answer_field=cfg.answer_field, split=split)
    except DataError as err:
        raise DataError(f"{field}: {err}") from err


@contextlib.contextmanager
def _from_hub(field: str, name: str, dataset: str) -> Iterator[None]:
    """Reading ``dataset`` (a local file, or a Hub data set): offline (found out in about a second, see
    ``gtpo.data.hub``) an uncached Hub data set fails at once, as one line naming ``field`` and the fix."""
    if Path(dataset).exists():
        yield
        return
    from gtpo.data.hub import hub_reachable

    online = hub_reachable()
    try:
        yield
    except ConnectionError as err:
        state = "the Hub cannot be reached (offline)" if not online else f"the Hub did not answer ({err})"
        none = f" or --{field} '' for none" if field == "data.eval" else ""
        raise ConfigError(
            f"{field} {name!r}: the data set {dataset} is not in the local cache and {state}; give a local copy "
            f"(--{field} PATH to a .jsonl/.json/.parquet file){none}"
        ) from None
