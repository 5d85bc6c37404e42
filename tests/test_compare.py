"""gtpo compare: statistics by hand, the report from hand-made run directories, and a killed comparison that
continues (finished runs skipped, the killed one resumed from its checkpoint)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest

from gtpo.cli import compare_args
from gtpo.compare import VARIANTS, run_comparison, variant_config, write_report
from gtpo.compare.report import summarize_run
from gtpo.compare.runs import DONE_FILE, RUN_CONFIG_FILE, plan_runs, prepared, run_dir, run_grid
from gtpo.compare.stats import (
    crossed_mean_interval,
    curve_area,
    mean_interval,
    paired_interval,
    t_cdf_two_sided,
    t_quantile,
)
from gtpo.config import ConfigError, TrainConfig, from_dict, load_preset, to_dict
from gtpo.eval.evaluate import read_eval_records
from gtpo.run.metrics import EVAL_FILE, METRICS_FILE, read_metrics

# Student t, two-sided 95%, from printed tables
T95 = {1: 12.7062, 2: 4.3027, 4: 2.7764, 9: 2.2622, 30: 2.0423}


# ---- variants ---------------------------------------------------------------------------------------


def test_variants_change_only_their_fields(tmp_path):
    base = TrainConfig()
    grpo = variant_config(base, "grpo", tmp_path, seed=3)
    assert grpo.algo.algo == "grpo" and grpo.algo.gamma == base.algo.gamma
    assert variant_config(base, "gtpo-gamma1", tmp_path).algo.gamma == 1.0
    assert variant_config(base, "gtpo-noshaping", tmp_path).algo.shaping is False
    assert variant_config(base, "gtpo-batchnorm", tmp_path).algo.adv_norm == "batch"
    noformat = variant_config(base, "gtpo-noformat", tmp_path).algo
    assert (noformat.format_penalty, noformat.no_call_penalty) == (0.0, 0.0)
    assert grpo.seed == 3 and grpo.data == base.data and grpo.rollout == base.rollout
    assert grpo.output_dir == str(tmp_path / "grpo" / "seed3")
    with pytest.raises(ConfigError, match="known"):
        variant_config(base, "ppo", tmp_path)


def test_plan_is_seed_major_and_flags_parse():
    root = Path("/r")
    specs = plan_runs(TrainConfig(seed=5), ["gtpo", "grpo"], [5, 6], root)
    assert [(s.variant, s.seed) for s in specs] == [("gtpo", 5), ("grpo", 5), ("gtpo", 6), ("grpo", 6)]
    assert specs[1].run_dir == root / "grpo" / "seed5"
    args = compare_args(["--seeds", "5", "--steps", "3", "--variants", "gtpo,grpo", "--parallel", "2"])
    assert (args.seeds, args.parallel, args.variants, args.config.steps) == (5, 2, "gtpo,grpo", 3)
    defaults = compare_args([])
    assert (defaults.seeds, defaults.config.output_dir, defaults.config.export) == (3, "runs/compare", "none")
    with pytest.raises(SystemExit):  # tyro names the flag and exits 2
        compare_args(["--seeds", "three"])
    with pytest.raises(ConfigError, match="twice"):
        plan_runs(TrainConfig(), ["gtpo", "gtpo"], [0], root)


# ---- statistics by hand -------------------------------------------------------------------------------


@pytest.mark.parametrize("df", sorted(T95))
def test_t_quantile_matches_printed_tables(df):
    assert t_quantile(0.95, df) == pytest.approx(T95[df], abs=1e-4)


def test_t_cdf_closed_forms():
    assert t_cdf_two_sided(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| <= 1) = 2 atan(1) / pi
    assert t_cdf_two_sided(math.sqrt(2), 2) == pytest.approx(1 / math.sqrt(2))  # df 2: t / sqrt(2 + t^2)
    assert t_cdf_two_sided(0.0, 7) == 0.0


def test_mean_interval_by_hand():
    values = [0.5, 0.7, 0.6]
    sd = math.sqrt(((0.5 - 0.6) ** 2 + (0.7 - 0.6) ** 2 + 0.0) / 2)  # 0.1
    interval = mean_interval(values)
    assert interval.mean == pytest.approx(0.6)
    assert interval.hi - interval.mean == pytest.approx(T95[2] * sd / math.sqrt(3), abs=1e-4)
    assert interval.n == 3
    one = mean_interval([0.4])
    assert (one.mean, one.lo, one.hi) == (0.4, None, None)
    paired = paired_interval([0.5, 0.9], [0.4, 0.6])  # differences 0.1, 0.3: mean 0.2, sd sqrt(0.02)
    assert paired.mean == pytest.approx(0.2)
    assert paired.lo == pytest.approx(0.2 - T95[1] * math.sqrt(0.02) / math.sqrt(2), abs=1e-3)


def test_crossed_interval_adds_seed_and_problem_variance():
    # additive 2 x 2 table: seed effect +-0.2, problem effect +-0.1, no residual
    table = [[0.1, 0.3], [0.5, 0.7]]
    # grand 0.4; row means 0.2, 0.6; column means 0.3, 0.5
    ms_seed = 2 * ((0.2 - 0.4) ** 2 + (0.6 - 0.4) ** 2) / 1  # 0.16
    ms_problem = 2 * ((0.3 - 0.4) ** 2 + (0.5 - 0.4) ** 2) / 1  # 0.04
    variance = (ms_seed / 2) / 2 + (ms_problem / 2) / 2 + 0.0  # var_seed / S + var_problem / N + 0
    interval = crossed_mean_interval(table)
    assert interval.mean == pytest.approx(0.4)
    assert interval.hi - 0.4 == pytest.approx(T95[1] * math.sqrt(variance), abs=1e-3)
    assert interval.n == 2


def test_crossed_interval_truncates_negative_components_and_falls_back():
    # 3 seeds x 3 problems (the differences of the report test below): MS_seed = MS_problem = 1/36 are
    # below MS_residual = 1/9, so both variance components are 0 and the variance is (1/9) / 9
    table = [[-0.5, -0.5, 0.0], [0.0, 0.0, -0.5], [-0.5, 0.0, 0.0]]
    interval = crossed_mean_interval(table)
    assert interval.mean == pytest.approx(-2 / 9)
    assert interval.hi - interval.mean == pytest.approx(T95[2] * math.sqrt((1 / 9) / 9), abs=1e-4)
    # one seed: an interval over the problems only; one problem: over the seeds only
    assert crossed_mean_interval([[0.1, 0.3, 0.2]]) == mean_interval([0.1, 0.3, 0.2])
    assert crossed_mean_interval([[0.1], [0.3]]) == mean_interval([0.1, 0.3])
    with pytest.raises(ValueError, match="rectangular"):
        crossed_mean_interval([[0.1, 0.2], [0.3]])


def test_curve_area_is_the_mean_level_by_trapezoids():
    assert curve_area([0, 10, 30], [0.2, 0.4, 0.4]) == pytest.approx((10 * 0.3 + 20 * 0.4) / 30)
    assert curve_area([5], [0.7]) == 0.7
    with pytest.raises(ValueError, match="increase"):
        curve_area([0, 0], [0.1, 0.2])


# ---- report from hand-made run directories ------------------------------------------------------------

STEP0 = [[0, 0], [1, 0], [1, 1]]  # 3 problems x k = 2, shared starting point: per problem 0, 0.5, 1
FINAL = {  # per-problem accuracies at step 10, written as correctness rows
    ("gtpo", 0): [[1, 0], [1, 1], [1, 1]],  # 0.5, 1, 1
    ("gtpo", 1): [[0, 0], [1, 1], [1, 1]],  # 0, 1, 1
    ("gtpo", 2): [[1, 1], [1, 1], [1, 1]],  # 1, 1, 1
    ("grpo", 0): [[0, 0], [1, 0], [1, 1]],  # 0, 0.5, 1
    ("grpo", 1): [[0, 0], [1, 1], [1, 0]],  # 0, 1, 0.5
    ("grpo", 2): [[1, 0], [1, 1], [1, 1]],  # 0.5, 1, 1
}


def _write_run(root, variant, seed):
    path = run_dir(root, variant, seed)
    path.mkdir(parents=True)
    if variant == "gtpo":
        turns, invalid, tokens = [[2, 2]] * 3, [[1, 0], [0, 0], [0, 0]], [[10, 20], [30, 40], [50, 60]]
    else:
        turns, invalid, tokens = [[3, 3]] * 3, [[1, 1], [1, 0], [0, 0]], [[40 + 10 * seed] * 2] * 3
    evals = [
        {"step": 0, "name": "toy", "k": 2, "correct": STEP0, "problems": ["a", "b", "c"]},
        {"step": 10, "name": "toy", "k": 2, "correct": FINAL[variant, seed], "problems": ["a", "b", "c"]},
    ]
    evals[1].update(turns=turns, invalid_calls=invalid, tokens=tokens)
    (path / EVAL_FILE).write_text("".join(json.dumps(r) + "\n" for r in evals))
    train = [{"step": s, "reward/accuracy": 0.1 * s, "perf/step_s": 2.0} for s in range(1, 11)]
    (path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in train))
    (path / DONE_FILE).write_text(json.dumps({"wall_s": 20.0 + seed}))


def test_run_summary_by_hand(tmp_path):
    _write_run(tmp_path, "gtpo", 0)
    path = run_dir(tmp_path, "gtpo", 0)
    evals = [json.loads(line) for line in (path / EVAL_FILE).read_text().splitlines()]
    run = summarize_run(read_metrics(path / METRICS_FILE), evals)
    assert run.values["final"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert run.per_problem["area"] == pytest.approx([(0 + 0.5) / 2, (0.5 + 1) / 2, (1 + 1) / 2])
    assert run.values["area"] == pytest.approx(((0 + 0.5 + 1) / 3 + (0.5 + 1 + 1) / 3) / 2)
    assert run.values["invalid_rate"] == pytest.approx(1 / 12)  # 1 invalid call in 6 trajectories x 2 turns
    assert run.values["turns"] == 2.0 and run.values["tokens"] == pytest.approx(35.0)
    assert run.values["recovery"] == 1.0  # its one trajectory with an invalid call (problem a) was correct
    assert run.values["train_accuracy"] == pytest.approx((0.6 + 0.7 + 0.8 + 0.9 + 1.0) / 5)


def test_repair_counts_a_failed_call_fixed_by_a_later_call_that_ran_in_a_correct_episode():
    from gtpo.compare.report import _repair
    from gtpo.eval.evaluate import repaired_call
    from gtpo.types import Problem, Trajectory, Turn

    def trajectory(*turns: str) -> Trajectory:  # "bad": an invalid call, "ok": a valid call, "end": no call
        made = {
            "bad": Turn(text="", has_tool_call=True, exec_status="error", invalid_call=True),
            "ok": Turn(text="", has_tool_call=True, exec_status="ok"),
            "end": Turn(text=""),
        }
        return Trajectory(problem=Problem(id="p", question="", answer=""), group_id=0, turns=[made[t] for t in turns])

    assert repaired_call(trajectory("bad", "ok", "end"))
    assert repaired_call(trajectory("ok", "bad", "bad", "ok"))
    assert not repaired_call(trajectory("ok", "bad", "end"))  # nothing ran after the failure
    assert not repaired_call(trajectory("bad", "bad"))
    assert not repaired_call(trajectory("ok", "ok", "end"))  # no failure to repair
    # 4 trajectories with an invalid call: repaired and correct, repaired and wrong, correct without a repair
    # (recovery counts it, repair does not), neither; the one without an invalid call is not counted
    record = {
        "correct": [[1, 0], [1, 0], [1]],
        "invalid_calls": [[1, 2], [1, 1], [0]],
        "repaired": [[1, 1], [0, 0], [0]],
    }
    assert _repair(record) == pytest.approx(1 / 4)
    assert _repair({"correct": [[1]], "invalid_calls": [[0]], "repaired": [[0]]}) is None
    assert _repair({"correct": [[1]], "invalid_calls": [[1]]}) is None  # a record written before the field


def test_repair_is_left_out_where_no_call_runs_code():
    """A game's moves are calls that never run code: "fixed after a failed call" is undefined there (the report
    shows "-"), not 0."""
    from gtpo.compare.report import _repair
    from gtpo.eval.evaluate import EvalReport, eval_record
    from gtpo.types import Problem, Trajectory, Turn

    def report(status: str | None) -> EvalReport:
        turns = [Turn(text="", has_tool_call=True, exec_status=status, invalid_call=True), Turn(text="")]
        trajectory = Trajectory(problem=Problem(id="p", question="", answer=""), group_id=0, turns=turns)
        return EvalReport(name="x", k=1, per_problem=[[False]], trajectories=[trajectory])

    game, code = eval_record(report(None), step=0), eval_record(report("error"), step=0)
    assert "repaired" not in game and _repair(game) is None
    assert code["repaired"] == [[0]] and _repair(code) == 0.0


def test_report_statistics_by_hand(tmp_path):
    for variant, seed in FINAL:
        _write_run(tmp_path, variant, seed)
    data = write_report(tmp_path, ["gtpo", "grpo"], [0, 1, 2])

    gtpo = data["per_variant"]["gtpo"]["final"]
    # per seed 5/6, 2/3, 1: mean 5/6, sd 1/6
    assert gtpo["mean"] == pytest.approx(5 / 6)
    assert gtpo["mean"] - gtpo["lo"] == pytest.approx(T95[2] * (1 / 6) / math.sqrt(3), abs=1e-4)
    assert gtpo["hi"] == 1.0  # 5/6 + 0.414 is cut at the most a proportion can be
    assert data["per_variant"]["grpo"]["turns"]["mean"] == 3.0

    diff = data["difference_from_baseline"]["grpo"]
    # per-problem differences grpo - gtpo: seed 0 [-.5, -.5, 0], seed 1 [0, 0, -.5], seed 2 [-.5, 0, 0]
    assert diff["final"]["mean"] == pytest.approx(-2 / 9)
    assert diff["final"]["hi"] - diff["final"]["mean"] == pytest.approx(T95[2] * math.sqrt((1 / 9) / 9), abs=1e-4)
    assert diff["invalid_rate"]["mean"] == pytest.approx(3 / 18 - 1 / 12)
    assert diff["invalid_rate"]["lo"] == pytest.approx(diff["invalid_rate"]["hi"])  # the same on every seed
    # tokens: grpo 40, 50, 60 against gtpo's 35: differences 5, 15, 25 (mean 15, sd 10)
    assert diff["tokens"]["mean"] == pytest.approx(15.0)
    assert diff["tokens"]["hi"] - 15.0 == pytest.approx(T95[2] * 10 / math.sqrt(3), abs=1e-3)
    assert diff["final"]["n"] == 3
    # recovery: gtpo's one invalid-call trajectory ends correct on seeds 0 and 2, wrong on seed 1 (1, 0, 1);
    # grpo's three (a0, a1, b0) end correct 1/3, 1/3, 2/3 of the time: differences -2/3, +1/3, -1/3
    assert data["per_variant"]["gtpo"]["recovery"]["mean"] == pytest.approx(2 / 3)
    assert data["per_variant"]["grpo"]["recovery"]["mean"] == pytest.approx(4 / 9)
    assert diff["recovery"]["mean"] == pytest.approx(-2 / 9)

    table = (tmp_path / "compare.md").read_text()
    assert "| gtpo | 3 | 0.833 [" in table and "| grpo | 3 | -0.222 [" in table
    assert "avg@2" in table and "toy (3 problems" in table
    assert "| 1 | 0.500 0.667 | 0.500 0.500 |" in table  # seed 1's curves: gtpo (0, 1, 1), grpo (0, 1, 0.5)
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "compare.json").read_text())["seeds"] == [0, 1, 2]


def test_report_leaves_out_unfinished_runs(tmp_path):
    _write_run(tmp_path, "gtpo", 0)
    _write_run(tmp_path, "grpo", 0)
    (run_dir(tmp_path, "grpo", 0) / DONE_FILE).unlink()
    data = write_report(tmp_path, ["gtpo", "grpo"], [0, 1])
    assert list(data["runs"]["gtpo"]) == ["0"] and data["runs"]["grpo"] == {}
    assert data["difference_from_baseline"]["grpo"] == {}


def test_per_seed_curves_keep_their_steps_aligned(tmp_path):
    """A run evaluated at a step the others were not (or missing one) shows "-" there, not a shifted row."""
    _write_run(tmp_path, "gtpo", 0)
    _write_run(tmp_path, "grpo", 0)
    path = run_dir(tmp_path, "gtpo", 0) / EVAL_FILE
    records = [json.loads(line) for line in path.read_text().splitlines()]
    middle = {**records[0], "step": 5}
    path.write_text("".join(json.dumps(r) + "\n" for r in (records[0], middle, records[1])))
    write_report(tmp_path, ["gtpo", "grpo"], [0])
    assert "| 0 | 0.500 0.500 0.833 | 0.500 - 0.500 |" in (tmp_path / "compare.md").read_text()


def test_one_seed_report_counts_seeds_not_problems(tmp_path):
    """With one seed the accuracy interval rests on the problems; the table must still say 1 seed paired."""
    _write_run(tmp_path, "gtpo", 0)
    _write_run(tmp_path, "grpo", 0)
    data = write_report(tmp_path, ["gtpo", "grpo"], [0])
    assert data["difference_from_baseline"]["grpo"]["final"]["n"] == 3  # the three problems
    differences = (tmp_path / "compare.md").read_text().split("## Difference")[1].split("## Held-out")[0]
    assert "| grpo | 1 | " in differences


# ---- running: skip, resume, refuse, parallel ----------------------------------------------------------


def _tiny_config(tmp_path, model_dir, **overrides):
    data = {
        "model": {"name_or_path": model_dir},
        "data": {"eval_limit": 3},
        "rollout": {
            "group_size": 2,
            "problems_per_step": 2,
            "max_turns": 2,
            "max_new_tokens_per_turn": 12,
            "max_total_tokens": 160,
            "sandbox_workers": 2,
        },
        "steps": 2,
        "eval_every": 2,
        "save_every": 1,
        "output_dir": str(tmp_path / "cmp"),
        "progress": False,
        "device": "cpu",
        **overrides,
    }
    return from_dict(data)


def test_killed_comparison_continues_where_it_stopped(tmp_path, model_dir):
    from gtpo.trainer import Trainer

    class KilledAfterFirstCheckpoint(Trainer):
        def save(self):
            path = super().save()
            if self.step == 1:
                raise KeyboardInterrupt  # Ctrl-C right after step 1's checkpoint
            return path

    def train(config, trainer_class=Trainer):
        trainer = trainer_class(config)
        try:
            trainer.train()
        finally:
            trainer.close()

    calls = []

    def killed_in_second_run(config):
        calls.append((config.output_dir, config.resume))
        train(config, KilledAfterFirstCheckpoint if len(calls) == 2 else Trainer)

    base = _tiny_config(tmp_path, model_dir)
    root = tmp_path / "cmp"
    with pytest.raises(KeyboardInterrupt):
        run_comparison(base, ["gtpo", "grpo"], root, killed_in_second_run, seeds=2)
    assert (run_dir(root, "gtpo", 0) / DONE_FILE).exists()
    assert not (run_dir(root, "grpo", 0) / DONE_FILE).exists()

    calls.clear()

    def recorded(config):
        calls.append((config.output_dir, config.resume))
        train(config)

    data = run_comparison(base, ["gtpo", "grpo"], root, recorded, seeds=2)
    assert calls == [  # gtpo seed 0 skipped, grpo seed 0 resumed, seed 1 fresh
        (str(run_dir(root, "grpo", 0)), True),
        (str(run_dir(root, "gtpo", 1)), False),
        (str(run_dir(root, "grpo", 1)), False),
    ]
    resumed = read_metrics(run_dir(root, "grpo", 0) / METRICS_FILE)
    assert [r["step"] for r in resumed] == [0, 1, 2]
    evals = read_eval_records(run_dir(root, "grpo", 0) / EVAL_FILE)  # per-problem results of each evaluation
    assert [r["step"] for r in evals] == [0, 2] and len(evals[-1]["correct"]) == 3
    assert evals[-1]["problems"] == read_eval_records(run_dir(root, "gtpo", 1) / EVAL_FILE)[-1]["problems"]
    assert (
        data["per_variant"]["grpo"]["final"]["n"] == 2 and data["difference_from_baseline"]["grpo"]["final"]["n"] == 2
    )

    calls.clear()  # everything done: a rerun trains nothing and rewrites the report
    run_comparison(base, ["gtpo", "grpo"], root, lambda c: calls.append(c), seeds=2)
    assert calls == []
    with pytest.raises(ConfigError, match=r"other settings.*steps"):
        run_comparison(_tiny_config(tmp_path, model_dir, steps=3), ["gtpo"], root, lambda c: None, seeds=1)


def test_eval_records_belong_to_the_run_directory_they_were_written_in(tmp_path):
    from gtpo.run.checkpoint import claim_run_dir

    (tmp_path / EVAL_FILE).write_text('{"step": 0, "correct": [[true]]}\n')
    with pytest.raises(ConfigError, match="already holds a run"):
        claim_run_dir(tmp_path, resume=False, overwrite=False)
    claim_run_dir(tmp_path, resume=False, overwrite=True)
    assert not (tmp_path / EVAL_FILE).exists()
    # a resumed run evaluates a step again: the last record of a step wins
    lines = [
        '{"step": 0, "correct": [[false]]}',
        '{"step": 2, "correct": [[false]]}',
        '{"step": 2, "correct": [[true]]}',
    ]
    (tmp_path / EVAL_FILE).write_text("\n".join(lines) + "\n")
    assert [r["correct"] for r in read_eval_records(tmp_path / EVAL_FILE)] == [[[False]], [[True]]]


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    spec = plan_runs(TrainConfig(), ["gtpo"], [0], tmp_path)[0]
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / METRICS_FILE).write_text('{"step": 0}\n')
    config = prepared(spec)
    assert (config.resume, config.overwrite) == (False, True)


def test_parallel_runs_overlap_and_a_failure_stops_new_runs(tmp_path):
    specs = plan_runs(TrainConfig(), ["gtpo", "grpo"], [0, 1], tmp_path)
    both_running = threading.Barrier(2, timeout=60)
    started = []

    def train(config):
        started.append(config.output_dir)
        both_running.wait()  # returns only if two runs are in flight at once
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)

    run_grid(specs, train, parallel=2, log=lambda _: None)
    assert len(started) == 4 and all((s.run_dir / DONE_FILE).exists() for s in specs)

    def fails(config):
        raise RuntimeError("boom")

    fresh = plan_runs(TrainConfig(), ["gtpo", "grpo"], [5, 6], tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        run_grid(fresh, fails, parallel=1, log=lambda _: None)
    assert not any((s.run_dir / DONE_FILE).exists() for s in fresh)


def test_subprocess_config_survives_yaml(tmp_path):
    # the child reads its config as a preset: floats like 1e-06 must stay floats (JSON's text would not)
    import yaml

    config = from_dict({"optim": {"lr": 1e-6}, "algo": {"dual_clip": 3.0}, "output_dir": str(tmp_path)})
    (tmp_path / RUN_CONFIG_FILE).write_text(yaml.safe_dump(to_dict(config)))
    assert load_preset(str(tmp_path / RUN_CONFIG_FILE)) == config
    assert set(VARIANTS) >= {"gtpo", "grpo", "gtpo-gamma1", "gtpo-noshaping", "gtpo-noformat", "gtpo-batchnorm"}


def test_intervals_of_proportions_stay_within_their_bounds_and_few_seeds_are_flagged(tmp_path):
    from gtpo.compare.report import FEW_SEEDS
    from gtpo.compare.stats import Interval, clipped

    # 2 seeds at accuracy 0.1 and 0.55: mean 0.325, sd 0.318, t(0.975, 1) = 12.706 -> [-2.53, 3.18] unclipped
    assert clipped(Interval(0.325, -2.53, 3.18, 2), 0.0, 1.0) == Interval(0.325, 0.0, 1.0, 2)
    assert clipped(Interval(0.5, 0.2, 0.8, 3), 0.0, 1.0) == Interval(0.5, 0.2, 0.8, 3)
    assert clipped(Interval(0.5, None, None, 1), 0.0, 1.0).lo is None
    for variant, seed in [key for key in FINAL if key[1] < 2]:  # seeds 0 and 1 of each variant
        _write_run(tmp_path, variant, seed)
    data = write_report(tmp_path, ["gtpo", "grpo"], [0, 1])
    for stats in data["per_variant"].values():
        for key in ("final", "area", "invalid_rate", "recovery", "train_accuracy"):
            if stats.get(key) and stats[key]["lo"] is not None:
                assert 0.0 <= stats[key]["lo"] <= stats[key]["mean"] <= stats[key]["hi"] <= 1.0, (key, stats[key])
    for key, stat in data["difference_from_baseline"]["grpo"].items():
        if key in ("final", "area", "invalid_rate", "recovery") and stat["lo"] is not None:
            assert -1.0 <= stat["lo"] <= stat["hi"] <= 1.0, (key, stat)
    table = (tmp_path / "compare.md").read_text()
    assert "**Only 2 seeds: too few to tell most differences apart.** Each half-width is 12.7 standard errors" in table
    assert FEW_SEEDS == 5


def test_plotted_bands_hold_their_mean_whatever_the_quantity():
    """Each plotted curve's band is its interval cut at the quantity's bounds: a count such as turns per
    trajectory (about 3) must not be cut at a proportion's 1.0, which drew the band from 1.0 to below the mean."""
    from gtpo.compare.report import PLOTTED, bounds
    from gtpo.compare.stats import clipped, mean_interval

    typical = {"reward/accuracy": [0.5, 0.6, 0.7], "rollout/turns_mean": [3.0, 3.2, 3.4],
               "rollout/invalid_call_rate": [0.1, 0.15, 0.2], "eval": [0.55, 0.6, 0.62]}  # fmt: skip
    assert set(PLOTTED) | {"eval"} == set(typical)
    for key, values in typical.items():
        band = clipped(mean_interval(values, 0.95), *bounds(key))
        assert band.lo <= min(values) and max(values) <= band.hi, (key, band)
