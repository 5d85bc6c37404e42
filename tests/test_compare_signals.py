"""Ctrl-C and SIGTERM during `gtpo compare`: each run stops at a step boundary with its checkpoint (never the
"exit at once" of a second signal), no new run starts, and the command says how to continue."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gtpo.compare.children import ChildRuns
from gtpo.compare.runs import DONE_FILE, plan_runs, run_grid
from gtpo.config import TrainConfig
from gtpo.run.stop import TrainingStopped

# A child that records each SIGINT it gets and whether it leads its own session, then exits as gtpo train does.
_CHILD = """
import os, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
got = []
def on_signal(signum, frame):
    got.append(signum)
    time.sleep(0.3)  # a second forwarded signal would land here
    out.write_text(f"{len(got)} {os.getsid(0) == os.getpid()}")
    sys.exit(128 + signum)
signal.signal(signal.SIGINT, on_signal)
out.write_text("ready")
time.sleep(60)
"""


def _wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_signal_reaches_each_child_once_in_its_own_session(tmp_path):
    script, report = tmp_path / "child.py", tmp_path / "child.txt"
    script.write_text(_CHILD)
    children = ChildRuns()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            children.call([sys.executable, str(script), str(report)], tmp_path)
        except TrainingStopped as stop:
            raised.append(stop)

    before = signal.getsignal(signal.SIGINT)
    with children.forwarding_signals():
        worker = threading.Thread(target=run)
        worker.start()
        _wait_for(lambda: report.exists() and report.read_text() == "ready")
        os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C to this process
        worker.join(timeout=60)
    assert signal.getsignal(signal.SIGINT) is before  # pytest's own handler is back
    assert report.read_text() == "1 True"  # one signal, and the child leads its own session
    assert len(raised) == 1 and raised[0].signum == signal.SIGINT and raised[0].checkpoint is None
    with pytest.raises(TrainingStopped):  # after a stop nothing new starts
        children.call([sys.executable, "-c", f"open({str(tmp_path / 'started')!r}, 'w')"], tmp_path)
    assert not (tmp_path / "started").exists()


def test_a_stopped_run_ends_the_grid(tmp_path):
    specs = plan_runs(TrainConfig(), ["gtpo", "grpo"], [0, 1], tmp_path)
    started: list[str] = []

    def stops_first(config):
        started.append(config.output_dir)
        if len(started) == 1:
            raise TrainingStopped(signal.SIGTERM, 3, None)

    with pytest.raises(TrainingStopped) as stop:
        run_grid(specs, stops_first, parallel=1, log=lambda _: None)
    assert stop.value.exit_code == 143 and len(started) == 1
    assert not any((s.run_dir / DONE_FILE).exists() for s in specs)

    requested = threading.Event()

    def asks_to_stop(config):  # the parent's own stop request, as the forwarded Ctrl-C sets it
        started.append(config.output_dir)
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        requested.set()

    started.clear()
    run_grid(specs, asks_to_stop, parallel=2, log=lambda _: None, stop_requested=requested.is_set)
    assert 1 <= len(started) <= 2  # the runs already under way finish; none starts after the request


# ---- the command, end to end ----------------------------------------------------------------------

QUICK = [
    # a comparison needs held-out evaluations: two problems, at step 0 and at the end
    *("--device", "cpu", "--export", "none", "--eval-every", "1000", "--data.eval-limit", "2"),
    *("--steps", "200", "--seeds", "1"),
    *("--rollout.group-size", "2", "--rollout.problems-per-step", "1", "--rollout.max-turns", "2"),
    *("--rollout.max-new-tokens-per-turn", "32", "--sandbox.workers", "1", "--variants", "gtpo,grpo"),
]


# one run at a time by default; two at a time (about 30 s) under -m slow
@pytest.mark.parametrize("parallel", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_ctrl_c_stops_a_comparison_with_every_run_checkpointed(tmp_path, parallel):
    """Ctrl-C from a terminal goes to the whole process group. With --parallel 2 it used to kill the children
    without their checkpoint; with --parallel 1 it ended in a TrainingStopped traceback."""
    root = tmp_path / "cmp"
    argv = [sys.executable, "-m", "gtpo", "compare", *QUICK, "--parallel", parallel, "--output-dir", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    running = 2 if parallel == "2" else 1

    def steps_logged() -> bool:
        assert process.poll() is None, process.communicate()
        logs = glob.glob(str(root / "*" / "seed0" / "metrics.jsonl"))
        complete = [Path(log).read_text().split("\n")[:-1] for log in logs]  # a line being written is not read
        trained = [any(json.loads(line)["step"] >= 1 for line in lines) for lines in complete]
        return sum(trained) >= running  # a training step logged (the step-0 evaluation comes first)

    _wait_for(steps_logged, timeout=600)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert f"to continue: gtpo compare {' '.join(argv[4:])}" in err
    runs = [root / v / "seed0" for v in ("gtpo", "grpo")[:running]]
    assert all(glob.glob(str(run / "checkpoints" / "step_*" / "model.pt")) for run in runs)
    if parallel == "2":
        logs = [(run / "train.log").read_text() for run in runs]
        assert all("Ctrl-C: finishing this step" in log and "exiting now" not in log for log in logs), logs
