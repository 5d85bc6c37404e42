"""Planning and running the variant x seed grid of a comparison, resumably, one or several at a time.

Layout: ``ROOT/<variant>/seed<S>/`` is one ``gtpo train`` run directory. A run that finished holds
``compare_done.json``; a killed one holds its checkpoints and resumes from the newest (``--resume``); one killed
before its first checkpoint starts over. ``ROOT/compare_plan.json`` records the shared base config, so a rerun
into the same directory with different settings is refused instead of mixing two experiments. Seeds and
variants may be added on a rerun: the runs already done are kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from gtpo.compare.children import ChildRuns
from gtpo.config import ConfigError, TrainConfig, from_dict, to_dict
from gtpo.run.checkpoint import latest_checkpoint
from gtpo.run.stop import TrainingStopped

VARIANTS: dict[str, dict[str, Any]] = {
    "gtpo": {},
    "grpo": {"algo": {"algo": "grpo"}},
    "gtpo-gamma1": {"algo": {"gamma": 1.0}},
    "gtpo-noshaping": {"algo": {"shaping": False}},
    "gtpo-noformat": {"algo": {"format_penalty": 0.0, "no_call_penalty": 0.0}},
    "gtpo-batchnorm": {"algo": {"adv_norm": "batch"}},
    "gtpo-turnindex": {"algo": {"adv_norm": "turn_index"}},
    "gtpo-turnindex-carry": {"algo": {"adv_norm": "turn_index_carry"}},
    "gtpo-a2tgpo": {"algo": {"adv_norm": "a2tgpo"}},
    "gtpo-hybrid": {"algo": {"traj_adv_weight": 0.5}},
    "gtpo-filter": {"filter": {"groups": True}},
}
"""Name -> overrides of the base config. gamma=1, no shaping, no format penalty: the paper's ablations;
batch and per-turn-index normalization: the readings of its normalization set (docs/algorithms.md);
turn-index with stopped trajectories held, A2TGPO's accumulation, and the turn/trajectory hybrid at w = 0.5:
turn-credit variants from the literature (docs/algorithms.md, section 4);
gtpo-filter: DAPO's dynamic sampling (filter.groups), not part of the paper."""
DEFAULT_VARIANTS = ("gtpo", "grpo", "gtpo-gamma1", "gtpo-noshaping", "gtpo-noformat")

PLAN_FILE = "compare_plan.json"
DONE_FILE = "compare_done.json"
RUN_CONFIG_FILE = "compare_run.yaml"
LOG_FILE = "train.log"
PER_RUN_FIELDS = ("seed", "output_dir", "resume", "overwrite", "progress")
"""Config fields that differ between the runs of one comparison (or do not change results)."""

RunState = Literal["done", "resume", "fresh"]
TrainFn = Callable[[TrainConfig], None]


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: a variant trained with one seed."""

    variant: str
    seed: int
    config: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def label(self) -> str:
        return f"{self.variant} seed {self.seed}"


def run_dir(root: Path, variant: str, seed: int) -> Path:
    return Path(root) / variant / f"seed{seed}"


def variant_config(base: TrainConfig, name: str, root: Path, seed: int | None = None) -> TrainConfig:
    """``base`` with the variant's overrides, its seed and its own run directory."""
    if name not in VARIANTS:
        raise ConfigError(f"--variants: unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    seed = base.seed if seed is None else seed
    config = from_dict(VARIANTS[name], base)
    return dataclasses.replace(
        config, seed=seed, output_dir=str(run_dir(root, name, seed)), resume=False, overwrite=False
    )


def seeds_for(base: TrainConfig, n_seeds: int) -> list[int]:
    """The comparison's seeds: ``base.seed``, ``base.seed + 1``, ..."""
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n_seeds}")
    return [base.seed + i for i in range(n_seeds)]


def plan_runs(base: TrainConfig, variants: Sequence[str], seeds: Sequence[int], root: Path) -> list[RunSpec]:
    """Seed-major order: every variant of the first seed, then of the next, so that a comparison stopped
    part-way already holds complete pairs."""
    if not variants:
        raise ConfigError("--variants: name at least one variant")
    if len(set(variants)) != len(variants):
        raise ConfigError(f"--variants: a variant is named twice in {','.join(variants)}")
    return [RunSpec(v, s, variant_config(base, v, root, s)) for s in seeds for v in variants]


def run_state(path: Path) -> RunState:
    if (Path(path) / DONE_FILE).exists():
        return "done"
    return "resume" if latest_checkpoint(path) is not None else "fresh"


def prepared(spec: RunSpec) -> TrainConfig:
    """The spec's config set to resume from its checkpoint, or to start over (clearing a torn start)."""
    state = run_state(spec.run_dir)
    return dataclasses.replace(spec.config, resume=state == "resume", overwrite=state == "fresh")


def shared_settings(config: TrainConfig) -> dict[str, Any]:
    """What every run of a comparison shares: the config without its per-run fields."""
    data = to_dict(config)
    for name in PER_RUN_FIELDS:
        data.pop(name)
    return data


def claim_root(root: Path, base: TrainConfig, overwrite: bool) -> None:
    """Record the base config in ``root``; refuse a root made with other settings unless ``overwrite``."""
    root = Path(root)
    plan = root / PLAN_FILE
    settings = shared_settings(base)
    if plan.exists():
        before = _read_plan(plan)
        if overwrite or (before != settings and not _has_progress(root)):
            shutil.rmtree(root)  # nothing trained under the old settings (a failed start): nothing to protect
        elif before != settings:
            changed = sorted(_differences(before, settings))
            raise ConfigError(
                f"--output-dir {root} holds a comparison with other settings ({', '.join(changed[:6])}): use the "
                "same settings to continue it, --overwrite to delete it and start over, or another --output-dir"
            )
    elif root.exists() and any(root.iterdir()):
        raise ConfigError(f"--output-dir {root} exists and is not a gtpo comparison; choose another --output-dir")
    root.mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps(settings, indent=2))


def _read_plan(plan: Path) -> Any:
    try:
        return json.loads(plan.read_text())
    except (OSError, ValueError):
        return None  # torn by a kill while it was written: as if other settings


def _has_progress(root: Path) -> bool:
    """Some run of the comparison in ``root`` finished or wrote a checkpoint (work a settings change would mix
    with other work, or lose)."""
    runs = [p for p in Path(root).glob("*/seed*") if p.is_dir()]
    return any((p / DONE_FILE).exists() or latest_checkpoint(p) is not None for p in runs)


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def run_grid(
    specs: Sequence[RunSpec],
    train_fn: TrainFn,
    parallel: int = 1,
    log: Callable[[str], None] = print,
    stop_requested: Callable[[], bool] = lambda: False,
) -> None:
    """Train every spec not yet done, ``parallel`` at a time; a finished run gets its done marker.

    After a failure no new run starts; the ones under way finish, then the first error is raised (rerun to
    continue: finished runs are skipped, killed ones resume). A run that stops on Ctrl-C or SIGTERM
    (``TrainingStopped``, its checkpoint written) or ``stop_requested()`` also ends the grid: no new run
    starts, the ones under way stop too (they get the same signal), and the first stop is raised.
    """
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    pending = [s for s in specs if run_state(s.run_dir) != "done"]
    done = len(specs) - len(pending)
    if done:
        log(f"compare: {done} of {len(specs)} runs already done; {len(pending)} to go")
    lock = threading.Lock()
    errors: list[BaseException] = []
    stops: list[TrainingStopped] = []

    def worker() -> None:
        while True:
            with lock:
                if errors or stops or stop_requested() or not pending:
                    return
                spec = pending.pop(0)
            try:
                _train_and_mark(spec, train_fn, log)
            except TrainingStopped as stop:
                log(f"== {spec.label}: {stop}")
                with lock:
                    stops.append(stop)
            except Exception as err:  # record it, let the other runs finish, raise it afterwards
                with lock:
                    errors.append(err)

    if parallel == 1:
        worker()  # in the main thread, so that Ctrl-C stops it at once
    else:
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    if stops:
        raise stops[0]


def _train_and_mark(spec: RunSpec, train_fn: TrainFn, log: Callable[[str], None]) -> None:
    config = prepared(spec)
    log(f"== {spec.label}: {'resuming' if config.resume else 'starting'} ({spec.run_dir})")
    start = time.perf_counter()
    train_fn(config)
    wall = time.perf_counter() - start
    marker = {"variant": spec.variant, "seed": spec.seed, "wall_s": wall, "resumed": config.resume}
    (spec.run_dir / DONE_FILE).write_text(json.dumps(marker, indent=2))
    log(f"== {spec.label}: done in {wall:.0f} s")


def train_in_subprocess(config: TrainConfig, threads: int, children: ChildRuns | None = None) -> None:
    """``gtpo train`` in a child process with ``threads`` compute threads; its output goes to ``train.log``.

    The config travels as a YAML preset (YAML, not JSON: PyYAML reads JSON's ``1e-06`` as a string). On Linux
    the child is killed with its parent, so a killed comparison leaves no run training behind. ``children``
    starts it, so that the parent's Ctrl-C reaches it once (see ``children.py``); a child that stopped on a
    signal raises ``TrainingStopped``.
    """
    path = Path(config.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    preset = path / RUN_CONFIG_FILE
    preset.write_text(yaml.safe_dump(to_dict(dataclasses.replace(config, progress=False)), sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "gtpo", "train", "--preset", str(preset)]
    with (path / LOG_FILE).open("a", encoding="utf-8") as log:
        code = (children or ChildRuns()).call(
            command, path, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
    if code == 2:  # bad input: the child's one line says what and how to fix it, as with --parallel 1
        raise ConfigError(_child_error(path / LOG_FILE) or f"{path}: bad input; see {path / LOG_FILE}")
    if code != 0:
        raise RunFailed(f"{path}: gtpo train exited with status {code}; see {path / LOG_FILE}")


class RunFailed(RuntimeError):
    """A run of the comparison failed for a reason other than bad input (its log says which)."""


def _child_error(log: Path) -> str | None:
    """The one-line error a child ``gtpo train`` printed last (its bad-input line), without its prefix."""
    prefix = "gtpo train: "
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return next((line.removeprefix(prefix) for line in reversed(lines) if line.startswith(prefix)), None)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
