"""What a run prints and writes about itself: learning-signal warnings, the start-vs-end summary, the
evaluation line, sample picking, and the stop-request handler (its CLI behaviour is in test_cli.py)."""

from __future__ import annotations

import os
import signal

import pytest

from gtpo.run import report
from gtpo.run.console import Console
from gtpo.run.learning_signal import SignalWatch, diagnose
from gtpo.run.stop import StopRequests
from gtpo.types import Problem, Trajectory

HEALTHY = {
    "rollout/finish_answer": 0.9,
    "reward/accuracy": 0.4,
    "rollout/zero_variance_group_frac": 0.25,
    "rollout/void_rate": 0.05,
    "rollout/finish_length": 0.02,
}


def _window(steps: int = 3, **changes: float) -> list[tuple[int, dict[str, float]]]:
    return [(step, {**HEALTHY, **changes}) for step in range(1, steps + 1)]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, set()),
        (
            {"rollout/finish_answer": 0.0, "reward/accuracy": 0.0, "rollout/zero_variance_group_frac": 1.0},
            {"no_answer"},
        ),
        ({"reward/accuracy": 0.0, "rollout/zero_variance_group_frac": 1.0}, {"zero_accuracy"}),
        ({"reward/accuracy": 1.0, "rollout/zero_variance_group_frac": 1.0}, {"all_correct"}),
        ({"rollout/zero_variance_group_frac": 1.0}, {"no_variance"}),
        ({"rollout/void_rate": 0.8, "rollout/finish_length": 0.6}, {"void"}),
    ],
)
def test_diagnose_names_the_problem_that_holds_on_every_step(changes, expected):
    assert set(diagnose(_window(**changes))) == expected


def test_one_healthy_step_clears_a_condition_and_the_message_says_what_to_check():
    window = _window(**{"reward/accuracy": 0.0, "rollout/zero_variance_group_frac": 1.0})
    found = diagnose(window)
    assert "accuracy was 0 on every step of steps 1-3" in found["zero_accuracy"]
    assert "data.answer_field" in found["zero_accuracy"]
    window[1] = (2, HEALTHY)
    assert diagnose(window) == {}
    void = diagnose(_window(**{"rollout/void_rate": 0.75, "rollout/finish_length": 0.5}))["void"]
    assert void.startswith("75% of trajectories in steps 1-3 had a void turn") and "50% ended at the token" in void


def test_signal_watch_waits_for_a_full_window_and_reports_each_problem_once():
    watch = SignalWatch(window=3)
    silent = {**HEALTHY, "rollout/finish_answer": 0.0, "reward/accuracy": 0.0}
    assert watch.observe(1, silent) == [] and watch.observe(2, silent) == []
    first = watch.observe(3, silent)
    assert len(first) == 1 and "steps 1-3" in first[0]
    assert watch.observe(4, silent) == []  # said once


def _records() -> list[dict]:
    evals = {0: (0.30, 0.25, 0.35), 8: (0.45, 0.40, 0.50)}
    records = [{"step": 0, "eval/avg@1": 0.30, "eval/ci95_low": 0.25, "eval/ci95_high": 0.35, "perf/eval_s": 20.0}]
    for step in range(1, 9):
        record = {
            "step": step,
            "reward/accuracy": 0.1 * step,
            "reward/mean": 0.1 * step - 0.05,
            "rollout/turns_mean": 1.0 + 0.1 * step,
            "rollout/invalid_call_rate": 0.2 - 0.02 * step,
            "perf/step_s": 3.0,
        }
        if step in evals:
            acc, low, high = evals[step]
            record.update({"eval/avg@1": acc, "eval/ci95_low": low, "eval/ci95_high": high, "perf/eval_s": 20.0})
        records.append(record)
    return records


def test_summary_table_compares_the_first_and_last_steps_by_hand():
    table = report.summary_table(report.summarize(_records()))
    # 8 training steps: windows of max(1, min(10, 8 // 4)) = 2 steps, 1-2 and 7-8.
    assert (
        "| held-out accuracy (avg@1) | 0.300 [0.250, 0.350] (step 0) | 0.450 [0.400, 0.500] (step 8) | +0.150 |"
        in table
    )
    assert (
        f"| training accuracy | {(0.1 + 0.2) / 2:.3f} (steps 1-2) | {(0.7 + 0.8) / 2:.3f} (steps 7-8) | +0.600 |"
        in table
    )
    assert f"| turns per trajectory | {1.15:.3f} (steps 1-2) | {1.75:.3f} (steps 7-8) | +0.600 |" in table
    # 8 steps x 3 s + 2 evaluations x 20 s = 64 s
    assert "| time | | 1 min 04 s (8 steps, 3.0 s/step; evaluations 40 s) | |" in table


def test_summary_file_lists_only_what_exists(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    report.write_summary(tmp_path, _records(), "GTPO run x", notes=["warning: something"])
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("# GTPO run x\n") and "- warning: something" in text
    assert "`metrics.jsonl`" in text and "`model/`" not in text


def test_evaluation_line_shows_interval_change_and_training_since_the_last_one(capsys):
    console = Console(enabled=True, progress=False)
    records = _records()
    for record in records[:9]:
        step = record["step"]
        console.step_done(step, {k: v for k, v in record.items() if k != "step"})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "step    0  held-out avg@1 0.300 [0.250, 0.350]  | evaluated in 20 s"
    assert out[1] == (
        "step    8  held-out avg@1 0.450 [0.400, 0.500]  +0.150 since step 0  | training accuracy "
        f"{sum(0.1 * s for s in range(1, 9)) / 8:.3f} (steps 1-8), 3.0 s/step  | evaluated in 20 s"
    )
    Console(enabled=False).step_done(0, records[0])
    assert capsys.readouterr().out == ""


def _trajectory(correct: bool, index: int) -> Trajectory:
    return Trajectory(problem=Problem(id=f"p{index}", question="q", answer="1"), group_id=index // 4, correct=correct)


def test_samples_show_both_outcomes_and_a_mixed_group():
    flags = [False, False, False, False, True, False, True, False]
    trajectories = [_trajectory(c, i) for i, c in enumerate(flags)]
    picked = report.pick_samples(trajectories, n=4)
    assert [t.problem.id for t in picked] == ["p0", "p1", "p4", "p6"]
    assert report.pick_group(trajectories) == [4, 5, 6, 7]  # group 1 is the first with right and wrong
    only_wrong = [_trajectory(False, i) for i in range(3)]
    assert report.pick_samples(only_wrong, n=4) == only_wrong


def test_a_stop_request_sets_a_flag_instead_of_interrupting_and_handlers_are_restored():
    notices = []
    before = signal.getsignal(signal.SIGTERM)
    with StopRequests(notice=notices.append) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert notices == [
        "SIGTERM: finishing this step, then writing a checkpoint and stopping (SIGTERM again to exit at once)"
    ]
    assert signal.getsignal(signal.SIGTERM) == before


def test_prompts_that_fill_the_budget_are_named_before_anything_else():
    found = diagnose(_window(**{"rollout/turns_mean": 0.0, "rollout/finish_answer": 0.0, "reward/accuracy": 0.0}))
    assert set(found) == {"no_turns"} and "--rollout.max-total-tokens" in found["no_turns"]


def test_an_environment_without_answers_is_not_told_to_ask_for_boxed_answers():
    """A game ends by the environment: no \\boxed{} answer and no code block is normal there."""
    game = _window(**{"rollout/finish_answer": 0.0, "reward/accuracy": 0.0, "rollout/void_rate": 1.0})
    assert set(diagnose(game)) == {"no_answer", "void"}
    found = diagnose(game, protocol="env")
    assert set(found) == {"zero_accuracy"} and "no episode succeeded" in found["zero_accuracy"]
    assert "boxed" not in found["zero_accuracy"]


def test_a_code_run_is_not_told_to_ask_for_boxed_answers_but_still_hears_of_void_turns():
    """The code environment submits by a message without a block: no ``\\boxed{}`` answer on a healthy step."""
    from gtpo.envs.sources import source_kind

    watch = SignalWatch(window=3, protocol=source_kind("code:functions"))
    healthy = {**HEALTHY, "rollout/finish_answer": 0.0, "rollout/finish_terminated": 0.97}
    assert [warning for step in range(1, 4) for warning in watch.observe(step, healthy)] == []
    failing = _window(**{"rollout/finish_answer": 0.0, "reward/accuracy": 0.0, "rollout/void_rate": 0.9})
    found = diagnose(failing, protocol="code")
    assert set(found) == {"zero_accuracy", "void"} and "hidden tests" in found["zero_accuracy"]
    assert "boxed" not in found["zero_accuracy"] + found["void"]
    assert source_kind("gem:game:GuessTheNumber-v0-easy") == "env" and source_kind("arith") == "math"
