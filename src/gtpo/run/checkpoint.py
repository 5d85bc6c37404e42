"""Atomic, resumable checkpoints: model, optimizer, scheduler, RNG states, data position and step.

A checkpoint is written into a temporary directory and renamed into place, and the ``latest`` pointer is
replaced atomically after it, so a run killed at any instant leaves either the previous checkpoint or the new
one, never a torn one. The newest complete ``step_N`` folder is the one resumed from (the pointer is written for
people and tools; a run killed between the rename and the pointer still resumes from its newest step). A file
damaged later (a full disk, a copy cut short) is named when it is read, with the newest intact checkpoint to
continue from. Model and optimizer go through torch's distributed-checkpoint state-dict API with full
(unsharded) state dicts, so one format serves a single process, DDP and FSDP2. Under torchrun every rank must
call save/load (FSDP gathers shards); rank 0 writes, every rank reads (a shared filesystem is assumed).
What is not here: choosing *when* to save (the trainer does that).
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import random
import re
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from gtpo.config import ConfigError
from gtpo.run.metrics import EVAL_FILE, METRICS_FILE

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
STEP_NAME = re.compile(r"^step_(\d+)$")
"""A checkpoint folder's name; temporary (``.tmp-step_*``) and renamed-aside folders do not match."""
FILES = ("model.pt", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json")
READ_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile)
"""What reading a truncated or corrupted checkpoint file raises (torch's zip reader, pickle, json)."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (a full disk, a quota, a file-size limit); the previous one is untouched."""

    def __init__(self, step: int, root: Path, cause: BaseException) -> None:
        reason = (cause.strerror if isinstance(cause, OSError) else None) or str(cause).splitlines()[0]
        previous = latest_checkpoint(root.parent)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        try:
            free = f", {shutil.disk_usage(root).free / 2**20:.0f} MiB free there"
        except OSError:
            free = ""
        super().__init__(f"could not write the checkpoint of step {step} in {root} ({reason}{free}); {kept}")


class DamagedCheckpoint(ConfigError):
    """A checkpoint file cannot be read. The message names it and the newest intact checkpoint to use instead."""

    def __init__(self, file: Path, reason: str, flag: str = "--resume") -> None:
        self.file, self.reason = Path(file), reason
        self.intact = newest_intact(self.file.parent.parent.parent, before=self.file.parent)
        bad = self.file.parent
        if self.intact is None:
            fix = f"no intact checkpoint is left in {bad.parent}; start over with --overwrite"
        elif flag == "--resume":
            fix = (
                f"the newest intact checkpoint is {self.intact.name}: delete the damaged one (rm -r {bad}) and run "
                f"the same command again to continue from step {_step_of(self.intact)}"
            )
        else:
            fix = f"the newest intact checkpoint is {self.intact}: use it ({flag} {self.intact})"
        head = "" if flag.startswith("gtpo ") else f"{flag}: "  # a command (gtpo export) has no flag to name
        super().__init__(f"{head}{self.file} is damaged ({reason}); {fix}")


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
    """The step of the newest complete checkpoint of a run, or None (read without loading anything).

    Raises ``DamagedCheckpoint`` if its trainer_state.json cannot be read."""
    path = latest_checkpoint(run_dir)
    if path is None:
        return None
    return int(read_file(path / "trainer_state.json", _read_json)["step"])


def read_file(file: Path, loader: Any, flag: str = "--resume") -> Any:
    """``loader(file)``, or ``DamagedCheckpoint`` naming the file if it is truncated or corrupted."""
    try:
        return loader(file)
    except READ_ERRORS as err:
        reason = str(err).splitlines()[0].split(". ")[0] if str(err) else "unreadable"
        raise DamagedCheckpoint(file, f"{type(err).__name__}: {reason}", flag) from None


def _read_json(file: Path) -> dict[str, Any]:
    data = json.loads(file.read_text())
    int(data["step"])
    return data


def damage(path: Path) -> str | None:
    """Why checkpoint folder ``path`` cannot be loaded (a missing, truncated or corrupted file), or None.

    Reads every byte (the zip archives' checksums) without unpickling anything: the check for an older
    checkpoint to offer when the newest is damaged."""
    for name in FILES:
        file = path / name
        try:
            if name.endswith(".json"):
                _read_json(file)
            else:
                with zipfile.ZipFile(file) as archive:
                    if archive.testzip() is not None:
                        return f"{name}: a checksum does not match"
        except READ_ERRORS as err:
            return f"{name}: {type(err).__name__}"
    return None


def step_folders(run_dir: str | Path) -> list[Path]:
    """A run's checkpoint folders, oldest first (by step, not by name: step numbers may outgrow their padding)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=_step_of)


def newest_intact(run_dir: str | Path, before: Path | None = None) -> Path | None:
    """The newest checkpoint of ``run_dir`` that ``damage`` finds nothing wrong with (older than ``before``)."""
    folders = step_folders(run_dir)
    if before is not None:
        folders = [p for p in folders if _step_of(p) < _step_of(before)]
    return next((p for p in reversed(folders) if damage(p) is None), None)


def _step_of(path: Path) -> int:
    match = STEP_NAME.match(path.name)
    return int(match.group(1)) if match else -1


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
    """Write checkpoint ``step`` atomically and prune all but the newest ``keep`` (at least the one just written:
    ``keep`` < 1 keeps it too, since a run whose every checkpoint is pruned could not be resumed).

    Returns its directory on the writing rank (rank 0), None on the others."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    for torn in root.glob(".tmp-step_*"):  # left by a process killed while writing: a whole checkpoint's size
        shutil.rmtree(torn, ignore_errors=True)
    tmp.mkdir()
    try:
        torch.save(model_state, tmp / "model.pt")
        torch.save(optim_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2))
        _fsync_dir_files(tmp)
    except (OSError, RuntimeError) as err:  # a full disk (torch's zip writer raises RuntimeError for it)
        shutil.rmtree(tmp, ignore_errors=True)  # no half folder left taking the space
        raise CheckpointWriteError(step, root, err) from err
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(root / LATEST, final.name)
    _prune(root, keep)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (a ``step_N`` folder with its trainer_state.json, the file written
    last), or None. The ``latest`` pointer is not trusted: it may name a folder deleted since, and a run killed
    after renaming a new checkpoint into place but before moving the pointer has a newer one."""
    complete = [p for p in step_folders(run_dir) if (p / "trainer_state.json").is_file()]
    return complete[-1] if complete else None


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states in place; return the trainer state (with step)."""
    path = Path(path)
    state = read_file(path / "trainer_state.json", _read_json)
    tensors = functools.partial(torch.load, map_location="cpu", weights_only=True)
    objects = functools.partial(torch.load, weights_only=False)
    model_state = read_file(path / "model.pt", tensors)
    optim_state = read_file(path / "optimizer.pt", tensors)
    scheduler_state = read_file(path / "scheduler.pt", objects)
    rng = read_file(path / "rng.pt", objects)  # every file read before anything is changed
    set_state_dict(
        model,
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optim_state,
        options=StateDictOptions(full_state_dict=True),
    )
    scheduler.load_state_dict(scheduler_state)
    set_rng_state(rng)
    return state


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
    steps = step_folders(root.parent)
    for old in steps[: max(0, len(steps) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
