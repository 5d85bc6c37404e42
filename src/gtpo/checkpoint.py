"""Atomic, resumable checkpoints: model, optimizer, scheduler, RNG states, data position and step.

A checkpoint is written into a temporary directory and renamed into place, and the ``latest`` pointer is
replaced atomically after it, so a run killed at any instant leaves either the previous checkpoint or the new
one, never a torn one. Model and optimizer go through torch's distributed-checkpoint state-dict API with full
(unsharded) state dicts, so one format serves a single process, DDP and FSDP2. Under torchrun every rank must
call save/load (FSDP gathers shards); rank 0 writes, every rank reads (a shared filesystem is assumed).
What is not here: choosing *when* to save (the trainer does that).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from gtpo.config import ConfigError
from gtpo.metrics import EVAL_FILE, METRICS_FILE

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything slow and without changing anything, a ``run_dir`` that holds an earlier run
    (unless ``resume`` or ``overwrite``) or that cannot be written in. Raises ``ConfigError``."""
    run_dir = Path(run_dir)
    _check_writable(run_dir)
    if resume or overwrite:
        return
    earlier = _earlier_run(run_dir)
    if earlier:
        found = ", ".join(p.name for p in earlier)
        raise ConfigError(
            f"output_dir {run_dir} already holds a run ({found}): pass --resume to continue it, --overwrite to "
            "delete it and start over, or choose another --output-dir"
        )


def claim_run_dir(run_dir: str | Path, resume: bool, overwrite: bool, extra: Sequence[str] = ()) -> None:
    """Make ``run_dir`` ready for a run: a fresh run must not append to an earlier run's metrics or leave its
    checkpoints beside its own (a later --resume would pick them up). Raises unless ``resume`` or ``overwrite``;
    with ``overwrite`` deletes the earlier run's metrics, checkpoints and the ``extra`` names (its reports)."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume, overwrite)
    if resume:
        return
    for path in [*_earlier_run(run_dir), *(run_dir / name for name in extra if (run_dir / name).exists())]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _earlier_run(run_dir: Path) -> list[Path]:
    """What marks an earlier run: metrics it logged (an empty file is none), its held-out records and its
    checkpoints."""
    logs = [run_dir / METRICS_FILE, run_dir / EVAL_FILE]
    found = [p for p in logs if p.is_file() and p.stat().st_size > 0]
    checkpoints = checkpoint_root(run_dir)
    return found + ([checkpoints] if checkpoints.exists() else [])


def _check_writable(run_dir: Path) -> None:
    """The run directory, or the nearest folder above it that exists, must be a folder this process can write."""
    existing = run_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output_dir {run_dir}: {existing} is a file, not a folder; choose another --output-dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_mount(existing) else "permission denied"
        raise ConfigError(f"output_dir {run_dir}: cannot write in {existing} ({reason}); choose another --output-dir")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def checkpoint_step(run_dir: str | Path) -> int | None:
    """The step of the newest complete checkpoint of a run, or None (read without loading anything)."""
    path = latest_checkpoint(run_dir)
    if path is None:
        return None
    return int(json.loads((path / "trainer_state.json").read_text())["step"])


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, so a resumed run samples what the uninterrupted one would."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path | None:
    """Write checkpoint ``step`` atomically and prune all but the newest ``keep``.

    Returns its directory on the writing rank (rank 0), None on the others."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(model_state, tmp / "model.pt")
    torch.save(optim_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2))
    _fsync_dir_files(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(root / LATEST, final.name)
    _prune(root, keep)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = checkpoint_root(run_dir) / LATEST
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "trainer_state.json").exists() else None


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states in place; return the trainer state (with step)."""
    path = Path(path)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=torch.load(path / "model.pt", map_location="cpu", weights_only=True),
        optim_state_dict=torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        options=StateDictOptions(full_state_dict=True),
    )
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir_files(directory: Path) -> None:
    for file in directory.iterdir():
        with file.open("rb") as handle:
            os.fsync(handle.fileno())


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
