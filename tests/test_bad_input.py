"""Every bad input a user can give ends in one line: exit status 2, exactly one stderr line that names the file
or field and the fix, no traceback, and nothing left behind that blocks the corrected rerun.

One table, one row per case: a new case is one row. A row builds its input in a fresh folder (``setup``
returns the command's arguments), names the line it expects (a regular expression), and says what must hold of
the folder afterwards (``after``; by default: nothing was created). Most rows run ``gtpo.cli.main`` in-process;
rows that change the process's environment (offline mode) run ``python -m gtpo``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import QUICK_TRAIN_FLAGS as QUICK

from gtpo import cli

GOOD_ROW = '{"question": "What is 2 + 2?", "answer": 4}\n'
BAD_ROW = '{"question": "x", "answer": }\n'
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


# --- a finished two-step run, with a checkpoint after each step ----------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    argv = ["train", *QUICK, "--steps", "2", "--save-every", "1", "--keep-checkpoints", "3", "--output-dir", str(run)]
    cli.main(argv)
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000001", "step_0000002"]
    return run


def _damaged(run: Path, tmp: Path, name: str) -> Path:
    """A copy of the finished run whose newest checkpoint has ``name`` cut short."""
    copy = tmp / "run"
    shutil.copytree(run, copy)
    file = copy / "checkpoints" / "step_0000002" / name
    file.write_bytes(file.read_bytes()[:50])
    return copy


def _resume_damaged(name: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, run: Path) -> list[str]:
        copy = _damaged(run, tmp, name)
        return ["train", *QUICK, "--steps", "3", "--save-every", "1", "--output-dir", str(copy), "--resume"]

    return setup


def _unchanged(tmp: Path, before: list[tuple[str, int]]) -> None:
    assert _listing(tmp / "run") == before  # a refused resume changes nothing


# --- the table ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    setup: Callable[[Path, Path], list[str]]
    """(fresh folder, a finished run to copy) -> the gtpo command's arguments."""
    message: str
    """The one stderr line, as a regular expression."""
    env: dict[str, str] | None = None
    """Run as a child process with these variables added (offline mode must not leak into other tests)."""
    after: Callable[[Path], None] | None = None
    """What must hold of the folder afterwards; default: the run folder was not created."""
    needs_run: bool = False
    """The row copies the finished two-step run."""
    needs: str | None = None
    """An optional package the row's input needs to reach its line (without it the row is skipped, saying why)."""


def _no_run_folder(tmp: Path) -> None:
    assert not (tmp / "runs").exists()  # nothing half-made, not even the parent


def _train(tmp: Path, *flags: str) -> list[str]:
    return ["train", *QUICK, "--output-dir", str(tmp / "runs" / "run"), *flags]


def _compare(tmp: Path, data: str, parallel: int) -> list[str]:
    flags = [*QUICK, "--eval-every", "1", "--steps", "1", "--seeds", "1", "--variants", "gtpo,grpo"]
    return ["compare", *flags, "--parallel", str(parallel), "--data.train", data, "--output-dir", str(tmp / "cmp")]


def _fixed_comparison_is_accepted(tmp: Path) -> None:
    """The rerun with the data fixed must not be refused as a comparison with other settings."""
    from gtpo.compare import claim_root
    from gtpo.config import from_dict

    fixed = from_dict({"data": {"train": _write(tmp / "ok.jsonl", GOOD_ROW)}, "eval_every": 1, "steps": 1})
    claim_root(tmp / "cmp", fixed, overwrite=False)


def _long_question(words: int) -> str:
    return "What is " + "1 + " * words + "1?"


CASES: dict[str, Case] = {
    "preset with a YAML syntax error": Case(
        lambda t, _: _train(t, "--preset", _write(t / "bad.yaml", "rollout:\n  group_size: [4\n")),
        r"^gtpo train: --preset \S*bad\.yaml:3:1: not valid YAML \(expected ',' or ']'.*\); fix the file$",
    ),
    "preset with a wrong type": Case(
        lambda t, _: _train(t, "--preset", _write(t / "type.yaml", "optim: {lr: abc}\n")),
        r"^gtpo train: --preset \S*type\.yaml: invalid config field 'optim\.lr': expected a number, got 'abc'",
    ),
    "preset with a wrong choice": Case(
        lambda t, _: _train(t, "--preset", _write(t / "algo.yaml", "algo: {algo: ppo}\n")),
        r"^gtpo train: --preset \S*algo\.yaml: invalid config field 'algo\.algo': expected one of 'gtpo', 'grpo'",
    ),
    "Hub model offline": Case(
        lambda t, _: _train(t, "--model.name-or-path", "nobody/no-such-model"),
        r"^gtpo train: model\.name_or_path 'nobody/no-such-model': not a local folder, not in the Hugging Face "
        r"cache, and the Hub cannot be reached \(offline\); download it",
        env=OFFLINE,
    ),
    "preset's default held-out set offline": Case(
        lambda t, _: _train(
            t,
            "--preset",
            "qwen2.5-math-1.5b",
            "--model.name-or-path",
            "tiny",
            "--data.train",
            _write(t / "ok.jsonl", GOOD_ROW),
        ),
        r"^gtpo train: data\.eval 'math500': the data set HuggingFaceH4/MATH-500 is not in the local cache and the "
        r"Hub cannot be reached \(offline\); give a local copy \(--data\.eval PATH .*\) or --data\.eval '' for none$",
        env=OFFLINE,
        needs="datasets",
    ),
    "Hub data set offline": Case(
        lambda t, _: _train(t, "--data.train", "somebody/no-such-data"),
        r"^gtpo train: data\.train 'somebody/no-such-data': the data set somebody/no-such-data is not in the local "
        r"cache and the Hub cannot be reached \(offline\)",
        env=OFFLINE,
        needs="datasets",
    ),
    "resume from a truncated model.pt": Case(
        _resume_damaged("model.pt"),
        r"^gtpo train: --resume: \S*step_0000002/model\.pt is damaged \(RuntimeError: PytorchStreamReader failed "
        r"[^;]*\); the newest intact checkpoint is step_0000001: delete the damaged one \(rm -r \S*step_0000002\) "
        r"and run the same command again to continue from step 1$",
        needs_run=True,
    ),
    "resume from a truncated optimizer.pt": Case(
        _resume_damaged("optimizer.pt"),
        r"^gtpo train: --resume: \S*step_0000002/optimizer\.pt is damaged .*continue from step 1$",
        needs_run=True,
    ),
    "resume from a truncated trainer_state.json": Case(
        _resume_damaged("trainer_state.json"),
        r"^gtpo train: --resume: \S*step_0000002/trainer_state\.json is damaged \(JSONDecodeError: .*continue from "
        r"step 1$",
        needs_run=True,
    ),
    "eval of a checkpoint with a truncated model.pt": Case(
        lambda t, run: ["eval", "--checkpoint", str(_damaged(run, t, "model.pt")), "--limit", "1"],
        r"^gtpo eval: --checkpoint: \S*step_0000002/model\.pt is damaged \(RuntimeError: .*\); the newest intact "
        r"checkpoint is \S*step_0000001: use it \(--checkpoint \S*step_0000001\)$",
        needs_run=True,
    ),
    "compare --parallel 2 whose runs fail": Case(
        lambda t, _: _compare(t, _write(t / "bad.jsonl", BAD_ROW), parallel=2),
        r"^gtpo compare: data\.train: \S*bad\.jsonl:1: not valid JSON \(.*column 29\); each line must be one JSON",
        after=_fixed_comparison_is_accepted,
    ),
    "compare --parallel 1 whose runs fail": Case(
        lambda t, _: _compare(t, _write(t / "bad.jsonl", BAD_ROW), parallel=1),
        r"^gtpo compare: data\.train: \S*bad\.jsonl:1: not valid JSON \(.*column 29\); each line must be one JSON",
        after=_fixed_comparison_is_accepted,
    ),
    "compare without held-out evaluations": Case(
        lambda t, _: ["compare", *QUICK, "--steps", "1", "--seeds", "1", "--output-dir", str(t / "runs" / "cmp")],
        r"^gtpo compare: --data\.eval / --eval-every: a comparison ranks runs by their held-out evaluations; .*"
        r"--eval-every >= 1 \(now 0\)$",
    ),
    "every prompt longer than max_total_tokens": Case(
        lambda t, _: _train(
            t, "--data.train", _write(t / "long.jsonl", json.dumps({"question": _long_question(800), "answer": 801}))
        ),
        r"^gtpo train: rollout\.max_total_tokens: all 1 training prompts are at least 512 tokens long; raise "
        r"--rollout\.max-total-tokens$",
    ),
}


def _run(argv: list[str], env: dict[str, str] | None, capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``gtpo ARGV``: in-process, or as a child process when ``env`` is given."""
    if env is not None:
        done = subprocess.run(
            [sys.executable, "-m", "gtpo", *argv],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **env},
        )
        return done.returncode, done.stderr
    code = 0
    try:
        cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_blocks_no_rerun(name, tmp_path, capsys, request):
    case = CASES[name]
    if case.needs is not None:  # without it the line is another one: the one asking for the optional extra
        pytest.importorskip(case.needs, reason=f"the optional package {case.needs} is not installed")
    run = request.getfixturevalue("finished_run") if case.needs_run else tmp_path
    argv = case.setup(tmp_path, run)
    before = _listing(tmp_path / "run") if (tmp_path / "run").exists() else None
    code, err = _run(argv, case.env, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(case.message, err.rstrip("\n")), err
    if case.after is not None:
        case.after(tmp_path)
    elif before is not None:
        _unchanged(tmp_path, before)
    else:
        _no_run_folder(tmp_path)


# --- the fixes the lines give work --------------------------------------------------------------------------


def test_a_damaged_newest_checkpoint_resumes_from_the_intact_one_as_the_line_says(finished_run, tmp_path, capsys):
    copy = _damaged(finished_run, tmp_path, "model.pt")
    argv = ["train", *QUICK, "--steps", "3", "--save-every", "1", "--output-dir", str(copy), "--resume"]
    code, err = _run(argv, None, capsys)
    assert code == 2
    bad = re.search(r"rm -r (\S+)\)", err).group(1)
    shutil.rmtree(bad)
    code, err = _run(argv, None, capsys)
    assert code == 0, err
    from gtpo.run.metrics import read_metrics

    steps = [r["step"] for r in read_metrics(copy / "metrics.jsonl") if "loss/policy" in r or "reward/mean" in r]
    assert steps == [1, 2, 3]  # step 2 trained again from step 1's checkpoint, logged once


def test_an_unreachable_hub_is_known_in_seconds_without_an_offline_setting(tmp_path):
    """No HF_HUB_OFFLINE: the Hub's address does not answer (a black-holed IP); the line comes after the
    one-and-a-half-second probe, not after minutes of HTTP retries."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="https://10.255.255.1", HF_HUB_ETAG_TIMEOUT="10", HF_HUB_DOWNLOAD_TIMEOUT="10")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    argv = _train(tmp_path, "--model.name-or-path", "nobody/no-such-model")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gtpo", *argv], capture_output=True, text=True, timeout=300, env=env)
    elapsed = time.perf_counter() - start
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "the Hub cannot be reached (offline)" in done.stderr
    import_time = _import_seconds()
    assert elapsed < import_time + 10, (elapsed, import_time)


def _import_seconds() -> float:
    """How long starting ``gtpo train`` takes on this machine before it touches the network (a busy machine is
    slow at everything; the bound above is on top of this)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gtpo.trainer"], check=True, timeout=300)
    return time.perf_counter() - start


def test_version():
    done = subprocess.run([sys.executable, "-m", "gtpo", "--version"], capture_output=True, text=True, timeout=120)
    from gtpo import __version__

    assert done.returncode == 0 and done.stdout == f"gtpo {__version__}\n" and done.stderr == ""


# --- prompts longer than the budget ----------------------------------------------------------------------------


def test_fitting_prompts_keeps_exactly_the_prompts_shorter_than_the_budget():
    from gtpo.components import build_policy
    from gtpo.config import DataConfig, ModelConfig
    from gtpo.model.policy import prompt_ids
    from gtpo.rollout.prompts import fitting_prompts
    from gtpo.tasks import system_prompt_for
    from gtpo.types import Problem

    _, tokenizer = build_policy(ModelConfig(), torch.device("cpu"))
    system = system_prompt_for(DataConfig())
    problems = [Problem(id=f"p{n}", question=_long_question(n), answer=str(n + 1)) for n in range(0, 400, 7)]
    lengths = [len(prompt_ids(tokenizer, system, p.question)) for p in problems]
    budget = sorted(lengths)[len(lengths) // 2]  # half the prompts reach it
    fitting, dropped = fitting_prompts(problems, tokenizer, system, budget)
    assert [p.id for p in fitting] == [p.id for p, n in zip(problems, lengths, strict=True) if n < budget]
    assert dropped == sum(n >= budget for n in lengths) > 0


def test_overlong_prompts_are_counted_and_warned_about_once(tmp_path, capsys):
    rows = [GOOD_ROW, json.dumps({"question": _long_question(800), "answer": 801}) + "\n"]
    data = _write(tmp_path / "mixed.jsonl", "".join(rows))
    run = tmp_path / "run"
    held_out = _write(tmp_path / "ok.jsonl", GOOD_ROW)
    flags = ["--steps", "2", "--data.train", data, "--data.eval", held_out, "--eval-every", "1"]
    cli.main(["train", *QUICK, *flags, "--output-dir", str(run)])
    out, err = capsys.readouterr()
    assert f"gtpo: writing to {run}/ (metrics.jsonl, curves.png, summary.md, samples.jsonl)\n" in out  # no model/
    warning = "warning: 1 of 2 training problems are left out: their prompt"
    assert err.count(warning) == 1, err
    assert "rollout.max_total_tokens (512)" in err
    assert warning.removeprefix("warning: ") in (run / "summary.md").read_text()
    trained = [r for r in map(json.loads, (run / "samples.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert trained and not any("1 + 1 + 1" in json.dumps(r) for r in trained)  # never sampled


def test_export_of_a_damaged_checkpoint_names_it_and_the_intact_one(finished_run, tmp_path, capsys):
    copy = _damaged(finished_run, tmp_path, "model.pt")
    code, err = _run(["export", str(copy)], None, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(
        r"^gtpo export: \S*step_0000002/model\.pt is damaged \(RuntimeError: .*\); the newest intact checkpoint is "
        r"(\S*step_0000001): use it \(gtpo export \1\)$",
        err.rstrip("\n"),
    ), err
    assert not (copy / "model").exists()
