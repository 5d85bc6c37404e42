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
