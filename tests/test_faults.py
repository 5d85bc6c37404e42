"""Faults injected into real runs of the shipped tiny model: the run survives what breaks around it.

Each test breaks one thing for real (a NaN in the logits of one micro-batch of the update, a sandbox worker
SIGKILLed mid-rollout, a cell that hangs, the trainer SIGKILLed while it writes a checkpoint, a full disk) and
checks what a user would: the step finishes or is skipped with a warning and a metric, the weights and the
previous checkpoint are intact, a resumed run loses and repeats no step. docs/runs.md tabulates them.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gtpo.config import from_dict
from gtpo.run.checkpoint import damage, latest_checkpoint
from gtpo.run.metrics import read_metrics
from gtpo.trainer import Trainer, TrainingDiverged


def _config(out: Path, **top):
    settings = {
        "device": "cpu",
        "progress": False,
        "export": "none",
        "eval_every": 0,
        "save_every": 1,
        "keep_checkpoints": 5,
        "output_dir": str(out),
        "rollout": {
            "group_size": 2,
            "problems_per_step": 2,
            "max_turns": 2,
            "max_new_tokens_per_turn": 32,
            "sandbox_workers": 1,
        },
        "optim": {"micro_batch_tokens": 1},  # one trajectory per micro-batch: a NaN can hit exactly one
    }
    for key, value in top.items():
        settings[key] = {**settings[key], **value} if isinstance(value, dict) else value
    return from_dict(settings)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


class NaNLogits:
    """A forward hook on the final norm of the policy: the hidden states (and so the logits) of the chosen
    update passes become NaN. Generation runs without gradient and is left alone."""

    def __init__(self, trainer: Trainer, poison) -> None:
        self.trainer, self.poison, self.passes = trainer, poison, 0
        norm = trainer.policy.get_decoder().norm
        self.handle = norm.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        if not torch.is_grad_enabled():
            return None
        self.passes += 1
        if self.poison(self.trainer.step, self.passes):
            return output * float("nan")
        return None


def test_a_nan_in_one_micro_batch_skips_the_step_keeps_the_weights_and_training_goes_on(tmp_path, capsys):
    trainer = Trainer(_config(tmp_path / "run", steps=3))
    first_pass_of_step_1 = {}

    def poison(step: int, passes: int) -> bool:  # the first update pass of the first step only
        first_pass_of_step_1.setdefault(step, passes)
        return step == 0 and passes == first_pass_of_step_1[0]

    NaNLogits(trainer, poison)
    before = _weights(trainer.policy)
    try:
        trainer.train()
    finally:
        trainer.close()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["optim/nonfinite_skipped"] for r in records] == [1.0, 0.0, 0.0]
    assert records[0]["optim/grad_norm"] is None  # NaN, which metrics.jsonl writes as null
    assert all(math.isfinite(r["optim/grad_norm"]) for r in records[1:])
    assert records[0]["perf/micro_batches"] >= 2  # the NaN hit one micro-batch of several
    at_step_1 = torch.load(tmp_path / "run" / "checkpoints" / "step_0000001" / "model.pt", weights_only=True)
    assert all(torch.equal(at_step_1[name], value) for name, value in before.items())  # not poisoned, not moved
    after = _weights(trainer.policy)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(after[name], value) for name, value in before.items())  # steps 2-3 trained
    err = capsys.readouterr().err
    assert err.count("the loss or gradient was not finite") == 1
    assert "step 1: the loss or gradient was not finite (NaN/inf); the update was skipped" in err
    assert "not finite" in (tmp_path / "run" / "summary.md").read_text()


def test_non_finite_steps_in_a_row_stop_the_run_with_its_checkpoint_intact(tmp_path, capsys):
    trainer = Trainer(_config(tmp_path / "run", steps=6, optim={"nonfinite_stop": 2}))
    NaNLogits(trainer, lambda step, passes: step >= 1)  # step 1 is clean, every update after it is NaN
    with pytest.raises(TrainingDiverged, match=r"^stopped at step 3: 2 steps in a row had a non-finite loss") as e:
        try:
            trainer.train()
        finally:
            trainer.close()
    assert "step_0000002) is intact" in str(e.value)  # the last one written, after the clean step 1
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["optim/nonfinite_skipped"] for r in records] == [0.0, 1.0, 1.0]
    checkpoint = tmp_path / "run" / "checkpoints" / "step_0000002" / "model.pt"
    weights = torch.load(checkpoint, weights_only=True)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# --- the sandbox ---------------------------------------------------------------------------------------------


def _scripted(tokenizer, first_cells: list[str]):
    """Turn 0 of the n-th trajectory asked runs ``first_cells[n]`` (then ``print(1)``); turn 1 answers."""
    from conftest import ScriptedSampler

    asked = {"n": 0}

    def respond(context: str, turn: int) -> str:
        if turn == 0:
            n = asked["n"]
            asked["n"] += 1
            code = first_cells[n] if n < len(first_cells) else "print(1)"
            return f"Let me compute.\n```python\n{code}\n```"
        return "\\boxed{2}"

    return ScriptedSampler(tokenizer, respond)


def _statuses(trainer: Trainer) -> list[str]:
    trajectories, _ = trainer._last_batch
    return [t.turns[0].exec_status for t in trajectories]


def _pool_refilled(trainer: Trainer, timeout_s: float = 60.0) -> bool:
    supply = trainer.sandbox._state.supply
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(supply._ready) >= supply._target:
            return True
        time.sleep(0.05)
    return False


def _busy_processes(trainer: Trainer) -> list[int]:
    """Pids of session processes running a cell now (their session's lock is held by the cell)."""
    sessions = list(trainer.sandbox._state.sessions.values())
    return [s.process.pid for s in sessions if s.lock.locked() and s.process is not None]


def test_a_sandbox_process_sigkilled_mid_rollout_marks_one_trajectory_and_the_pool_recovers(tmp_path):
    config = _config(
        tmp_path / "run",
        steps=2,
        rollout={"sandbox_workers": 2, "sandbox_timeout_s": 30.0, "max_new_tokens_per_turn": 96},
    )
    from gtpo.components import build_policy

    _, tokenizer = build_policy(config.model, torch.device("cpu"))
    sleeper = "import time\ntime.sleep(20)\nprint('slept')"
    trainer = Trainer(config, sampler=_scripted(tokenizer, [sleeper]))
    killed: list[int] = []

    def kill_the_sleeper() -> None:  # the one cell that stays busy: SIGKILL its process from outside
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            busy = _busy_processes(trainer)
            time.sleep(0.5)
            still = [pid for pid in _busy_processes(trainer) if pid in busy]
            if still:
                os.kill(still[0], signal.SIGKILL)
                killed.append(still[0])

    import threading

    killer = threading.Thread(target=kill_the_sleeper, daemon=True)
    killer.start()
    try:
        start = time.monotonic()
        metrics = trainer.train_step()
        elapsed = time.monotonic() - start
        killer.join(timeout=5)
        assert killed, "no busy sandbox process was found to kill"
        assert elapsed < 20  # the step did not wait for the sleeper's 20 s
        assert _statuses(trainer) == ["killed", "ok", "ok", "ok"]  # that trajectory marked, the batch kept
        trajectories, _ = trainer._last_batch
        assert trajectories[0].turns[0].invalid_call and "sandbox process died" in trajectories[0].turns[0].tool_output
        assert math.isfinite(metrics["loss/total"]) and metrics["rollout/invalid_call_rate"] > 0
        assert _pool_refilled(trainer)
        trainer.step += 1
        trainer.train_step()  # the next step runs on the recovered pool
        assert _statuses(trainer) == ["ok"] * 4
    finally:
        trainer.close()


def test_a_cell_that_hangs_or_exhausts_memory_ends_its_turn_not_the_step(tmp_path):
    config = _config(
        tmp_path / "run",
        steps=2,
        rollout={
            "sandbox_workers": 2,
            "sandbox_timeout_s": 1.0,
            "sandbox_memory_mb": 1024,
            "max_new_tokens_per_turn": 96,
        },
    )
    from gtpo.components import build_policy

    _, tokenizer = build_policy(config.model, torch.device("cpu"))
    cells = ["while True:\n    pass", "blocks = [bytearray(10**10)]"]
    trainer = Trainer(config, sampler=_scripted(tokenizer, cells))
    try:
        metrics = trainer.train_step()
        assert _statuses(trainer) == ["timeout", "memory", "ok", "ok"]
        assert metrics["rollout/timeout_rate"] > 0 and math.isfinite(metrics["loss/total"])
        assert _pool_refilled(trainer)
        trainer.step += 1
        trainer.train_step()
        assert _statuses(trainer) == ["ok"] * 4
    finally:
        trainer.close()


# --- the trainer killed while it writes a checkpoint -----------------------------------------------------------

KILL_AT = """
import os, signal, sys
import torch
import gtpo.run.checkpoint as checkpoint

POINT, STEP = sys.argv[1], int(sys.argv[2])
real_save, real_replace = torch.save, os.replace
real_write_atomic, real_prune = checkpoint._write_atomic, checkpoint._prune


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def save(obj, path, *args, **kwargs):
    if POINT == "mid-file" and str(path).endswith("optimizer.pt") and f"step_{STEP:07d}" in str(path):
        with open(path, "wb") as handle:  # half of the file on disk, then the process dies
            handle.write(b"PK" + b"\\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
        die()
    return real_save(obj, path, *args, **kwargs)


def replace(src, dst):
    if POINT == "before-rename" and str(dst).endswith(f"step_{STEP:07d}"):
        die()
    real_replace(src, dst)


def write_atomic(path, text):
    if POINT == "before-pointer" and text == f"step_{STEP:07d}":
        die()
    real_write_atomic(path, text)


def prune(root, keep):
    if POINT == "while-pruning" and (root / f"step_{STEP:07d}").exists():
        die()
    real_prune(root, keep)


torch.save, checkpoint.os.replace = save, replace
checkpoint._write_atomic, checkpoint._prune = write_atomic, prune
from gtpo.cli import main

main(sys.argv[3:])
"""
TRAIN = ["train", "--device", "cpu", "--no-progress", "--export", "none", "--eval-every", "0", "--save-every", "1"]
TRAIN += ["--keep-checkpoints", "1", "--rollout.group-size", "2", "--rollout.problems-per-step", "2"]
TRAIN += ["--rollout.max-turns", "2", "--rollout.max-new-tokens-per-turn", "32", "--sandbox.workers", "1"]


def _gtpo(*argv: str, kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    if kill is None:
        command = [sys.executable, "-m", "gtpo", *argv]
    else:
        command = [sys.executable, "-c", KILL_AT, kill[0], str(kill[1]), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = _gtpo(*TRAIN, "--steps", "3", "--output-dir", str(run))
    assert done.returncode == 0, done.stderr
    return run


@pytest.mark.parametrize(
    ("point", "resumes_from"),
    [
        ("mid-file", 1),  # step 2's optimizer.pt half written in the temporary folder
        pytest.param("before-rename", 1, marks=pytest.mark.slow),  # step 2 complete, not yet in place
        pytest.param("before-pointer", 2, marks=pytest.mark.slow),  # step 2 in place, `latest` still at step 1
        pytest.param(
            "while-pruning", 2, marks=pytest.mark.slow
        ),  # step 2 and the pointer in place, step 1 not yet pruned
    ],
)
def test_a_trainer_killed_while_checkpointing_resumes_without_a_lost_or_repeated_step(
    tmp_path, uninterrupted, point, resumes_from
):
    run = tmp_path / "run"
    killed = _gtpo(*TRAIN, "--steps", "3", "--output-dir", str(run), kill=(point, 2))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    previous = latest_checkpoint(run)
    assert previous is not None and previous.name == f"step_{resumes_from:07d}" and damage(previous) is None
    resumed = _gtpo(*TRAIN, "--steps", "3", "--output-dir", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} at step {resumes_from} of 3" in resumed.stdout
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == [1, 2, 3]  # none lost, none logged twice
    final = torch.load(run / "checkpoints" / "step_0000003" / "model.pt", weights_only=True)
    reference = torch.load(uninterrupted / "checkpoints" / "step_0000003" / "model.pt", weights_only=True)
    assert all(torch.equal(final[name], value) for name, value in reference.items())  # as if never killed
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the torn temporary folder was cleared


# --- a full disk ------------------------------------------------------------------------------------------------


FULL_DISK = """
import resource, signal, sys
import gtpo.trainer

limit = int(sys.argv[1])
real_train = gtpo.trainer.Trainer.train


def train(self):
    # Everything has loaded (the sandbox's processes too, which a full disk would not touch): from here on no
    # file may grow past the limit. Writes then fail with EFBIG as they fail with ENOSPC on a full disk; SIGXFSZ,
    # which would kill the process instead, is ignored, as a full disk sends none.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return real_train(self)


gtpo.trainer.Trainer.train = train
from gtpo.cli import main

main(sys.argv[2:])
"""


@pytest.mark.slow  # three runs of the CLI: about 20 s on an idle machine
def test_a_full_disk_while_checkpointing_is_one_clear_error_and_the_previous_checkpoint_stays(tmp_path):
    run = tmp_path / "run"
    first = _gtpo(*TRAIN, "--keep-checkpoints", "2", "--steps", "1", "--output-dir", str(run))
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (run / "checkpoints" / "step_0000001").iterdir()}
    optimizer_size = len(before["optimizer.pt"])
    argv = [*TRAIN, "--keep-checkpoints", "2", "--steps", "2", "--output-dir", str(run), "--resume"]
    limit = str(optimizer_size // 2)  # model.pt fits, optimizer.pt does not
    full = subprocess.run([sys.executable, "-c", FULL_DISK, limit, *argv], capture_output=True, text=True, timeout=600)
    assert full.returncode == 1, full.stderr
    lines = [line for line in full.stderr.splitlines() if line.startswith("gtpo train:")]
    assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
    assert re.search(
        r"could not write the checkpoint of step 2 in \S+/checkpoints \(.*\); the previous checkpoint \S+step_0000001 "
        r"is intact; free space, then continue: gtpo train .*--resume$",
        lines[0],
    ), lines[0]
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name != "latest") == ["step_0000001"]  # no half folder
    assert {p.name: p.read_bytes() for p in (checkpoints / "step_0000001").iterdir()} == before
    again = subprocess.run([sys.executable, "-m", "gtpo", *argv], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr  # with room again, the run continues from step 1
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]


# --- a rank killed under torchrun ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "gtpo"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
LOST_PEER = (
    r"^gtpo train: rank 0 of 2: another rank died or stopped answering during step \d+ \((?P<reason>.*)\); the "
    r"newest checkpoint is \S+step_\d{7}; to continue from it, relaunch the same torchrun command with --resume$"
)


def _launch_until_step_2(run: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    """Two ranks training 5 steps; returns once step 2 is checkpointed, with rank 1's process id."""
    argv = [*TRAIN, "--keep-checkpoints", "2", "--steps", "5", "--output-dir", str(run), *flags]
    launcher = subprocess.Popen(
        [*TORCHRUN, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD
    )
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "step_0000002").exists():
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.1)
    victim = _rank_pid(launcher.pid, 1)
    assert victim is not None
    return launcher, victim


@pytest.mark.slow  # two torchrun launches of two ranks: about 40 s on an idle machine
def test_a_rank_killed_under_torchrun_stops_the_others_at_once_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    launcher, victim = _launch_until_step_2(run)
    try:
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = launcher.communicate(timeout=120)
        stopped_in = time.monotonic() - killed_at
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    assert stopped_in < 60, stopped_in  # rank 0 does not wait out a collective timeout (30 minutes by default)
    # torchrun's SIGTERM only asks rank 0 to finish its step; the step's next collective finds the peer gone
    ours = [line for line in stderr.splitlines() if line.startswith("gtpo train:")]
    assert len(ours) == 1 and "[rank0]: Traceback" not in stderr, stderr
    assert re.match(LOST_PEER, ours[0]), ours
    kept = latest_checkpoint(run)
    assert kept is not None and damage(kept) is None and int(kept.name[5:]) >= 2
    argv = [*TRAIN, "--keep-checkpoints", "2", "--steps", "5", "--output-dir", str(run), "--resume"]
    resumed = subprocess.run([*TORCHRUN, *argv], capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} at step {int(kept.name[5:])} of 5" in resumed.stdout
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5]  # none lost, none twice


@pytest.mark.slow  # one torchrun launch of two ranks: about 20 s on an idle machine
def test_a_rank_that_hangs_under_torchrun_is_given_up_on_after_dist_timeout_s(tmp_path):
    launcher, victim = _launch_until_step_2(tmp_path / "run", "--dist-timeout-s", "5")
    try:
        os.kill(victim, signal.SIGSTOP)  # alive, holding its connections, answering nothing
        stopped_at = time.monotonic()
        assert launcher.stderr is not None
        for line in launcher.stderr:
            if line.startswith("gtpo train:"):
                break
        waited = time.monotonic() - stopped_at
    finally:
        os.kill(victim, signal.SIGKILL)
        launcher.kill()
        launcher.communicate()
    assert re.match(LOST_PEER, line.rstrip("\n")), line
    assert "Timed out" in re.match(LOST_PEER, line.rstrip("\n"))["reason"]
    assert waited < 60, waited  # the 5 s timeout, not torch's 30-minute default
