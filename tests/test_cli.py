"""The gtpo command as a new user meets it.

Bad input: one line naming the field and the fix, exit code 2, no traceback, and no run folder left behind.
Ctrl-C / SIGTERM: the step finishes, a checkpoint is written, the resume command is printed, exit 130 / 143;
a second Ctrl-C exits at once. Help lists every option with its true default; a closed pipe ends quietly.
Most cases call ``gtpo.cli.main`` (the console script's entry point) in-process; signals and pipes need a
real process, ``python -m gtpo``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICK_TRAIN_FLAGS as QUICK
from conftest import run_gtpo as _gtpo

from gtpo.run.metrics import read_metrics


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


GOOD_ROW = '{"question": "What is 2 + 2?", "answer": 4}\n'
TRAIN_CASES = {
    "missing data file": (
        lambda d: ["--data.train", str(d / "data" / "nope.jsonl")],
        r"^gtpo train: data\.train: \S*nope\.jsonl: no such file; check the path",
    ),
    "malformed JSONL line": (
        lambda d: ["--data.train", _write(d / "bad.jsonl", GOOD_ROW + '{"question": "x", "answer": }\n')],
        r"^gtpo train: data\.train: \S*bad\.jsonl:2: not valid JSON \(.*column 29\); each line must be one JSON",
    ),
    "row without an answer": (
        lambda d: ["--data.train", _write(d / "rows.jsonl", GOOD_ROW + '{"question": "What is 3?"}\n')],
        r"^gtpo train: data\.train: \S*rows\.jsonl:2: no column 'answer'; this row has: question\. Fix: set "
        r"answer_field \(--data\.answer-field\)",
    ),
    "empty data file": (
        lambda d: ["--data.train", _write(d / "empty.jsonl", "")],
        r"^gtpo train: data\.train: \S*empty\.jsonl: the file has no rows; it needs one problem per row",
    ),
    "malformed held-out file": (
        lambda d: ["--data.eval", _write(d / "held.jsonl", "{oops\n")],
        r"^gtpo train: data\.eval: \S*held\.jsonl:1: not valid JSON",
    ),
    "missing model path": (
        lambda d: ["--model.name-or-path", str(d / "models" / "qwen")],
        r"^gtpo train: model\.name_or_path '\S*qwen': no such folder; give a local model folder",
    ),
    "model folder without a model": (
        lambda d: ["--model.name-or-path", str(_mkdir(d / "not-a-model"))],
        r"^gtpo train: model\.name_or_path '\S*not-a-model' has no config\.json; give a local model folder",
    ),
    "output under a file": (
        lambda d: ["--output-dir", str(Path(_write(d / "a-file", "x")) / "run")],
        r"^gtpo train: output_dir \S*a-file/run: \S*a-file is a file, not a folder; choose another --output-dir",
    ),
    "invalid value": (
        lambda d: ["--rollout.group-size", "1"],
        r"^gtpo train: invalid config field 'rollout\.group_size': must be >= 2",
    ),
    "unknown preset": (
        lambda d: ["--preset", "qwen-9000"],
        r"^gtpo train: --preset 'qwen-9000': no such file or shipped preset "
        r"\(shipped: code, guess, guess-long, multistep, qwen2\.5-math-1\.5b",
    ),
    "resume without a checkpoint": (
        lambda d: ["--resume"],
        r"^gtpo train: --resume: no checkpoint in \S*run/checkpoints; run without --resume to start",
    ),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_training_input_is_one_line_exit_2_and_leaves_no_run_folder(tmp_path, capsys, case):
    flags, message = TRAIN_CASES[case]
    out_dir = tmp_path / "runs" / "run"
    argv = ["train", *QUICK, "--output-dir", str(out_dir), *flags(tmp_path)]
    code, _, err = _gtpo(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "runs").exists()  # nothing half-created, not even the parent


def test_an_earlier_run_is_left_untouched_by_a_refused_start(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 3}\n')
    code, _, err = _gtpo(["train", *QUICK, "--output-dir", str(tmp_path)], capsys)
    assert code == 2 and "already holds a run (metrics.jsonl): pass --resume" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_flag_tyro_cannot_parse_exits_2_without_a_traceback(capsys):
    code, _, err = _gtpo(["train", "--steps", "many"], capsys)
    assert code == 2 and "Traceback" not in err and "--steps" in err


def test_a_read_only_output_folder_is_refused_before_anything_starts(tmp_path, capsys):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    argv = ["train", *QUICK, "--output-dir", str(read_only / "runs" / "run")]
    if os.geteuid() != 0:
        read_only.chmod(0o555)
        try:
            code, _, err = _gtpo(argv, capsys)
        finally:
            read_only.chmod(0o755)
    else:  # root writes through permission bits: mount a read-only file system there, in a private namespace
        if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
            pytest.skip("root without mount namespaces: no read-only folder to test with")
        script = f'mount -t tmpfs -o ro tmpfs "$1" && shift && exec "{sys.executable}" -m gtpo "$@"'
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(read_only), *argv],
            capture_output=True,
            text=True,
            timeout=300,
        )
        code, err = done.returncode, done.stderr
        assert not list(read_only.iterdir())  # the mount was private: nothing here either
    assert code == 2 and "Traceback" not in err
    assert f"output_dir {read_only}/runs/run: cannot write in {read_only} (" in err
    assert "choose another --output-dir" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--data", "/nonexistent/problems.jsonl"], r"^gtpo eval: /nonexistent/problems\.jsonl: no such file"),
        (
            ["eval", "--compare", "/nonexistent/a", "/nonexistent/b"],
            r"^gtpo eval: --compare /nonexistent/a: no results",
        ),
        (["eval", "--checkpoint", "/nonexistent/run"], r"^gtpo eval: --checkpoint /nonexistent/run: no such folder"),
        (["export", "/nonexistent/run"], r"^gtpo export: /nonexistent/run: no such folder; give a run directory"),
        (["compare", "--variants", "gtpo,ppo"], r"^gtpo compare: --variants: unknown variant 'ppo'; known: gtpo"),
    ],
)
def test_other_commands_report_bad_input_in_one_line(capsys, argv, message):
    code, _, err = _gtpo(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err


# --- help --------------------------------------------------------------------------------------------------


def _help(argv: list[str], capsys) -> tuple[int, str]:
    """Help text with tyro's box drawing and line wrapping flattened to single spaces."""
    code, out, _ = _gtpo(argv, capsys)
    return code, re.sub(r"[\s│╭╮╰╯─]+", " ", out)


def test_help_lists_presets_variants_and_true_defaults(capsys):
    code, out = _help(["train", "--help"], capsys)
    assert code == 0 and "--preset NAME_OR_PATH" in out and "qwen2.5-math-1.5b, qwen2.5-math-7b" in out
    code, out = _help(["train", "--preset", "qwen2.5-math-1.5b", "--help"], capsys)
    assert code == 0 and "(default: Qwen/Qwen2.5-Math-1.5B)" in out  # the preset's values are the defaults
    code, out = _help(["compare", "--help"], capsys)
    assert code == 0 and "--variants STR" in out and "gtpo-noshaping" in out
    assert "(default: runs/compare)" in out and "runs/default" not in out
    code, out = _help(["export", "--help"], capsys)
    assert code == 0 and "--lora {merged,adapter}" in out
    code, out = _help(["--help"], capsys)
    assert code == 0 and "export" in out


def test_help_into_a_closed_pipe_ends_quietly():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as `| head` is after its lines
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gtpo", "train", "--help"], stdout=write_end, stderr=subprocess.PIPE, timeout=300
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == b""


# --- eval defaults --------------------------------------------------------------------------------------


def test_eval_of_the_tiny_model_samples_as_training_did(tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, err = _gtpo(["eval", "--model", "tiny", "--k", "2", "--limit", "2", "--output-dir", str(out)], capsys)
    assert code == 0, err
    assert "temperature 1, max_turns 5, max_new_tokens_per_turn 96, max_total_tokens 512 (the embedded" in stdout
    assert json.loads((out / "results.json").read_text())[0]["k"] == 2
    code, stdout, _ = _gtpo(["eval", "--compare", str(out), str(out), "--output-dir", str(tmp_path / "cmp")], capsys)
    assert code == 0 and f"written to {tmp_path / 'cmp' / 'compare.md'}" in stdout


# --- signals ---------------------------------------------------------------------------------------------


def _start(out_dir: Path, *flags: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "gtpo", "train", *QUICK, "--output-dir", str(out_dir), *flags]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"gtpo exited early ({process.returncode}): {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.2)


def _logged_steps(out_dir: Path) -> list[int]:
    path = out_dir / "metrics.jsonl"
    return [r["step"] for r in read_metrics(path)] if path.exists() else []


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_finishes_the_step_checkpoints_and_says_how_to_resume(tmp_path, capsys, signum, code, name):
    out_dir = tmp_path / "run"
    process = _start(out_dir, "--steps", "100", "--save-every", "100")
    _wait_for(lambda: len(_logged_steps(out_dir)) >= 1, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=600)
    assert process.returncode == code and "Traceback" not in err, err
    assert f"{name}: finishing this step, then writing a checkpoint and stopping" in err
    step = _logged_steps(out_dir)[-1]
    assert 1 <= step < 100 and (out_dir / "checkpoints" / f"step_{step:07d}" / "model.pt").exists()
    assert f"stopped by {name} (checkpoint at step {step}: " in err
    assert (
        f"to continue: gtpo train {' '.join(QUICK)} --output-dir {out_dir} --steps 100 --save-every 100 --resume" in err
    )
    assert "(stopped early)" in (out_dir / "summary.md").read_text()
    if signum != signal.SIGINT:
        return
    # The hint's command, one step further: it says where it resumes and continues the same log.
    argv = ["train", *QUICK, "--output-dir", str(out_dir), "--steps", str(step + 1), "--resume"]
    resumed, stdout, err = _gtpo(argv, capsys)
    assert resumed == 0, err
    assert f"resuming {out_dir} at step {step} of {step + 1} from {out_dir}/checkpoints/step_{step:07d}" in stdout
    assert _logged_steps(out_dir) == list(range(1, step + 2))
    again, stdout, _ = _gtpo(argv, capsys)  # finished now: says so, changes nothing
    assert again == 0 and "is already finished" in stdout and _logged_steps(out_dir) == list(range(1, step + 2))


# A run that presses Ctrl-C itself: once at the end of its first step, again at a chosen moment: in that step
# (before the checkpoint), while the stopped run writes its report, or while the command cleans up.
_SECOND_CTRL_C = """
import os, signal, sys
from gtpo import cli, trainer
from gtpo.run import report

def press_ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)

def then_press(function):
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        press_ctrl_c()
        return result
    return wrapped

trainer.Trainer.train_step = then_press(trainer.Trainer.train_step)
if sys.argv[1] == "step":
    trainer.Trainer.train_step = then_press(trainer.Trainer.train_step)
elif sys.argv[1] == "report":
    report.plot_curves = then_press(report.plot_curves)
else:
    trainer.Trainer.close = then_press(trainer.Trainer.close)
cli.main(sys.argv[2:])
"""


@pytest.mark.parametrize("moment", ["step", "report", "cleanup"])
def test_a_second_ctrl_c_exits_at_once(tmp_path, moment):
    """Whenever it comes. The window after the loop (report plots, closing the sandbox) once gave a
    KeyboardInterrupt traceback and exit status 1."""
    script = tmp_path / "presses_ctrl_c.py"
    script.write_text(_SECOND_CTRL_C)
    argv = [sys.executable, str(script), moment, "train", *QUICK, "--output-dir", str(tmp_path / "run")]
    process = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert process.returncode == 130 and "Traceback" not in process.stderr, process.stderr
    assert "Ctrl-C again: exiting now; the last complete checkpoint is kept" in process.stderr
    saved = (tmp_path / "run" / "checkpoints" / "step_0000001" / "model.pt").exists()
    assert saved == (moment != "step")  # during the step it leaves at once, without the checkpoint


def test_ctrl_c_during_the_first_evaluation_leaves_no_run_folder(tmp_path):
    out_dir = tmp_path / "runs" / "run"
    process = _start(out_dir, "--eval-every", "10", "--data.eval-limit", "300")
    _wait_for(lambda: (out_dir / "config.json").exists(), process)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert "no step finished, nothing saved" in err
    assert not (tmp_path / "runs").exists()


def test_a_shipped_model_alias_without_its_files_names_the_rebuild(tmp_path, monkeypatch):
    from gtpo.config import ConfigError
    from gtpo.model.source import check_model_source
    from gtpo.tiny import SHIPPED_MODELS

    monkeypatch.setitem(SHIPPED_MODELS, "tiny-gone", tmp_path)  # the folder exists, the model does not
    with pytest.raises(
        ConfigError, match=r"^model\.name_or_path 'tiny-gone': the shipped model is missing .*build-tiny"
    ):
        check_model_source("tiny-gone")
    check_model_source("tiny")  # the shipped default is there


def test_demo_help_describes_the_demo_instead_of_running_it(capsys):
    code, out, _ = _gtpo(["demo", "--help"], capsys)
    assert code == 0 and out.startswith("usage: gtpo demo") and "A_gtpo" not in out
    code, out, err = _gtpo(["demo", "--steps", "3"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "no arguments" in err
    code, out, _ = _gtpo(["demo"], capsys)
    assert code == 0 and "A_gtpo" in out  # the worked table
