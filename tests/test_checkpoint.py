"""Checkpoints restore model, optimizer, scheduler and RNG; a torn write never becomes 'latest'."""

import random

import pytest
import torch

from gtpo.config import ConfigError
from gtpo.run.checkpoint import claim_run_dir, latest_checkpoint, load_checkpoint, save_checkpoint


def _setup(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    return model, optimizer, scheduler


def _train_step(model, optimizer, scheduler):
    loss = model(torch.randn(5, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_resume_matches_uninterrupted(tmp_path):
    model, opt, sched = _setup(0)
    for _ in range(2):
        _train_step(model, opt, sched)
    save_checkpoint(tmp_path, 2, model, opt, sched, {"stream": {"epoch": 0, "position": 9}})
    for _ in range(2):
        _train_step(model, opt, sched)
    expected = [p.detach().clone() for p in model.parameters()]
    random_after = random.random()

    model2, opt2, sched2 = _setup(1)  # different init: everything must come from the checkpoint
    state = load_checkpoint(latest_checkpoint(tmp_path), model2, opt2, sched2)
    assert state["step"] == 2 and state["stream"]["position"] == 9
    for _ in range(2):
        _train_step(model2, opt2, sched2)
    for a, b in zip(expected, model2.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert random.random() == random_after


def test_pruning_and_latest(tmp_path):
    model, opt, sched = _setup(0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, sched, {}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_0000002", "step_0000003"]
    assert latest_checkpoint(tmp_path).name == "step_0000003"


def test_leftover_temporary_directory_is_ignored(tmp_path):
    model, opt, sched = _setup(0)
    save_checkpoint(tmp_path, 1, model, opt, sched, {})
    torn = tmp_path / "checkpoints" / ".tmp-step_0000002-999"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step_0000001"


def test_no_checkpoint_returns_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None


def test_claim_run_dir_refuses_to_mix_runs_and_overwrite_clears_them(tmp_path):
    claim_run_dir(tmp_path / "new", resume=False, overwrite=False)  # empty or missing: nothing to do
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "checkpoints" / "step_0000001").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"metrics.jsonl, checkpoints\): pass --resume"):
        claim_run_dir(tmp_path, resume=False, overwrite=False)
    claim_run_dir(tmp_path, resume=True, overwrite=False)  # resuming keeps everything
    assert (tmp_path / "checkpoints" / "step_0000001").exists()
    claim_run_dir(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # only the run's own files go


def test_latest_is_the_newest_complete_checkpoint_whatever_the_pointer_says(tmp_path):
    model, opt, sched = _setup(0)
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model, opt, sched, {}, keep=3)
    root = tmp_path / "checkpoints"
    (root / "latest").write_text("step_0000009")  # a folder deleted since
    assert latest_checkpoint(tmp_path).name == "step_0000002"
    half = root / "step_0000003"  # half-written: no trainer_state.json (written last)
    half.mkdir()
    (half / "model.pt").write_bytes(b"partial")
    (root / "latest").write_text(half.name)
    assert latest_checkpoint(tmp_path).name == "step_0000002"
    (root / "latest").write_text("step_0000001")  # killed after renaming step 2 into place, before the pointer
    assert latest_checkpoint(tmp_path).name == "step_0000002"
    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step_0000002"
    (root / "step_0000002.damaged").mkdir()  # a folder moved aside is not a checkpoint
    assert latest_checkpoint(tmp_path).name == "step_0000002"


def test_a_damaged_file_is_named_with_the_newest_intact_checkpoint(tmp_path):
    from gtpo.run.checkpoint import DamagedCheckpoint, checkpoint_step, damage

    model, opt, sched = _setup(0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, sched, {}, keep=3)
    root = tmp_path / "checkpoints"
    (root / "step_0000002" / "rng.pt").write_bytes(b"PK\x03\x04 not a zip")  # the middle one is damaged too
    (root / "step_0000003" / "trainer_state.json").write_text('{"step": 3,')
    assert damage(root / "step_0000001") is None and damage(root / "step_0000002").startswith("rng.pt")
    with pytest.raises(DamagedCheckpoint, match=r"step_0000003/trainer_state\.json is damaged") as caught:
        checkpoint_step(tmp_path)
    assert caught.value.intact == root / "step_0000001"  # step 2 skipped: its rng.pt is unreadable
    assert "continue from step 1" in str(caught.value)
    with pytest.raises(DamagedCheckpoint, match=r"step_0000003/trainer_state\.json"):
        load_checkpoint(root / "step_0000003", *_setup(1))


# --- faults while writing: fast, in the default suite (tests/test_faults.py kills real runs under -m slow) ---------


class Killed(BaseException):
    """Raised where the process is killed: nothing after it in save_checkpoint runs, as under SIGKILL."""


def _file_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0"),
    ],
    ids=["ENOSPC", "torch-zip-writer"],
)
def test_a_write_error_is_raised_with_the_previous_checkpoint_intact_and_no_half_folder(tmp_path, monkeypatch, error):
    """A full disk mid-checkpoint must stop the run with a CheckpointWriteError, never let it go on with no new
    checkpoint and no word (the full-disk test in test_faults.py does this for real, under -m slow)."""
    from gtpo.run.checkpoint import CheckpointWriteError, step_folders

    model, opt, sched = _setup(0)
    save_checkpoint(tmp_path, 1, model, opt, sched, {})
    before = _file_bytes(tmp_path / "checkpoints" / "step_0000001")
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt"):
            raise error
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(
        CheckpointWriteError,
        match=r"^could not write the checkpoint of step 2 in \S+/checkpoints \(.+\); the previous checkpoint "
        r"\S+/step_0000001 is intact$",
    ):
        save_checkpoint(tmp_path, 2, model, opt, sched, {}, keep=1)  # keep=1: a pruning step would delete step 1
    root = tmp_path / "checkpoints"
    assert [p.name for p in step_folders(tmp_path)] == ["step_0000001"]
    assert not list(root.glob(".tmp-*"))  # the half-written folder does not keep the space
    assert (root / "latest").read_text() == "step_0000001"
    assert _file_bytes(root / "step_0000001") == before


def _kill_at(monkeypatch, point: str) -> None:
    """Make save_checkpoint of step 2 die at ``point``."""
    import os
    from pathlib import Path

    import gtpo.run.checkpoint as checkpoint

    real_save, real_write_text, real_replace = torch.save, Path.write_text, os.replace
    real_write_atomic = checkpoint._write_atomic

    def save(obj, path, *args, **kwargs):
        if Path(path).name == point:
            with open(path, "wb") as handle:
                handle.write(b"PK\x03\x04 half a file")
            raise Killed
        return real_save(obj, path, *args, **kwargs)

    def write_text(self, text, *args, **kwargs):
        if point == self.name == "trainer_state.json":
            raise Killed
        return real_write_text(self, text, *args, **kwargs)

    def replace(src, dst):
        if point == "rename" and Path(dst).name == "step_0000002":
            raise Killed
        return real_replace(src, dst)

    def write_atomic(path, text):
        if point == "pointer":
            raise Killed
        return real_write_atomic(path, text)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(checkpoint, "_write_atomic", write_atomic)


@pytest.mark.parametrize(
    ("point", "newest"),
    [
        ("model.pt", 1),  # the first file half written
        ("optimizer.pt", 1),
        ("trainer_state.json", 1),  # every tensor file written, not the state
        ("rename", 1),  # the folder complete, not yet in place
        ("pointer", 2),  # in place, the `latest` pointer still at step 1: the newest complete folder wins
    ],
)
def test_a_checkpoint_appears_whole_or_not_at_all_wherever_the_writer_is_killed(tmp_path, monkeypatch, point, newest):
    """Written into a temporary folder and renamed into place: until the rename no step_N folder exists, so no
    tool, no resume and no pruning ever sees a torn one. (A checkpoint written in place fails here.)"""
    from gtpo.run.checkpoint import damage, step_folders

    model, opt, sched = _setup(0)
    save_checkpoint(tmp_path, 1, model, opt, sched, {})
    with monkeypatch.context() as patch:
        _kill_at(patch, point)
        with pytest.raises(Killed):
            save_checkpoint(tmp_path, 2, model, opt, sched, {}, keep=1)
    folders = step_folders(tmp_path)
    assert [p.name for p in folders] == [f"step_{s:07d}" for s in range(1, newest + 1)]
    assert latest_checkpoint(tmp_path).name == f"step_{newest:07d}"
    assert all(damage(p) is None for p in folders)
    save_checkpoint(tmp_path, 3, model, opt, sched, {}, keep=1)  # the next save clears what the killed one left
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_0000003"]


def test_keep_below_one_still_keeps_the_checkpoint_just_written(tmp_path):
    """Pruning to ``keep`` = 0 would delete the new checkpoint with the old ones (validation refuses
    keep_checkpoints=0; the function keeps the newest whatever it is given)."""
    from gtpo.run.checkpoint import step_folders

    model, opt, sched = _setup(0)
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model, opt, sched, {}, keep=0)
    assert [p.name for p in step_folders(tmp_path)] == ["step_0000002"]
    assert latest_checkpoint(tmp_path).name == "step_0000002"


def test_keep_checkpoints_zero_is_refused_with_the_reason():
    from gtpo.config import TrainConfig, from_dict, validate

    with pytest.raises(ConfigError, match=r"^invalid config field 'keep_checkpoints': must be >= 1 \(.*--resume"):
        validate(from_dict({"keep_checkpoints": 0}))
    assert validate(TrainConfig()).keep_checkpoints == 2  # docs/runs.md: the newest --keep-checkpoints are kept
