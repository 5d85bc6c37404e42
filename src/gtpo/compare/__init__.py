"""``gtpo compare``: GTPO against GRPO and the ablations, over several seeds, with statistics.

Every variant (``VARIANTS``: the base config with a few fields changed) is trained with the same seeds on the
same data and model; each (variant, seed) is an ordinary run directory under ``--output-dir``. The report
(compare.md, compare.json, compare.png) gives, per variant, the mean and interval over seeds of held-out
accuracy, area under the held-out curve, invalid-call rate, turns and tokens per trajectory, and each
variant's difference from the first one, paired by seed and by problem. A killed comparison continues where
it stopped, and Ctrl-C stops every run under way at a step boundary with a checkpoint. Modules: ``runs``
(the grid, resume, parallel runs), ``children`` (child processes, signals), ``stats`` (pure statistics),
``report``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gtpo.compare.children import ChildRuns
from gtpo.compare.report import write_report
from gtpo.compare.runs import (
    DEFAULT_VARIANTS,
    VARIANTS,
    RunFailed,
    TrainFn,
    claim_root,
    plan_runs,
    run_grid,
    seeds_for,
    train_in_subprocess,
    variant_config,
)
from gtpo.config import ConfigError, TrainConfig

__all__ = [
    "DEFAULT_VARIANTS",
    "VARIANTS",
    "RunFailed",
    "run_comparison",
    "variant_config",
    "write_report",
]


def run_comparison(
    base: TrainConfig,
    variants: Sequence[str],
    root: Path,
    train_fn: TrainFn | None = None,
    seeds: int = 3,
    parallel: int = 1,
) -> dict[str, Any]:
    """Train every variant x seed not yet done (resuming killed runs) and write the report into ``root``.

    ``train_fn(config)`` trains one run; by default in a child process (``parallel`` of them at a time, each
    with its share of the CPU cores), or here when ``parallel`` is 1.
    """
    root = Path(root)
    if not base.data.eval or base.eval_every < 1:
        raise ConfigError(
            "--data.eval / --eval-every: a comparison ranks runs by their held-out evaluations; give a held-out "
            f"set (--data.eval, now {base.data.eval!r}) and --eval-every >= 1 (now {base.eval_every})"
        )
    seed_list = seeds_for(base, seeds)
    specs = plan_runs(base, variants, seed_list, root)
    claim_root(root, base, overwrite=base.overwrite)
    if train_fn is not None or parallel == 1:
        run_grid(specs, train_fn or _train_here, parallel)  # here, Ctrl-C reaches the trainer directly
    else:
        threads = max(1, (os.cpu_count() or 1) // parallel)
        children = ChildRuns()
        with children.forwarding_signals():
            in_child = functools.partial(train_in_subprocess, threads=threads, children=children)
            run_grid(specs, in_child, parallel, stop_requested=lambda: children.stop_requested)
    return write_report(root, variants, seed_list)


def _train_here(config: TrainConfig) -> None:
    from gtpo.trainer import Trainer

    trainer = Trainer(config)
    try:
        trainer.train()
    finally:
        trainer.close()
