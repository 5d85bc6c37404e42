"""gtpo eval: report numbers by hand, trajectory files, run comparison, and an end-to-end CLI run."""

import json
import math

import pytest

from gtpo.eval.cli import EvalConfig, main, run
from gtpo.eval.evaluate import EvalReport
from gtpo.eval.report import compare_runs, markdown_table, summarize, write_results
from gtpo.types import Problem, Trajectory, Turn


def _report(name, per_problem):
    """Math-task records as the rollout leaves them: the one turn rewarded 1 if right."""
    trajectories = [
        Trajectory(
            problem=Problem(id=f"p{i}", question="q", answer="1"),
            group_id=i,
            turns=[Turn(text="t", reward=float(c))],
            correct=c,
        )
        for i, row in enumerate(per_problem)
        for c in row
    ]
    return EvalReport(name=name, k=len(per_problem[0]), per_problem=per_problem, trajectories=trajectories)


def test_summary_numbers_by_hand():
    row = summarize(_report("toy", [[True, False], [False, False], [True, True]]))
    assert row["avg@2"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    # pass@2 with n = k = 2: a problem passes if any sample is right.
    assert row["pass@2"] == pytest.approx(2 / 3)
    assert row["ci95_low"] < row["avg@2"] < row["ci95_high"]
    assert row["problem_ids"] == ["p0", "p1", "p2"]


def test_results_files_and_comparison(tmp_path):
    write_results([_report("toy", [[True], [True], [False], [True]])], tmp_path / "a")
    write_results([_report("toy", [[False], [True], [False], [False]])], tmp_path / "b")
    rows = json.loads((tmp_path / "a" / "results.json").read_text())
    assert rows[0]["avg@1"] == 0.75
    assert len((tmp_path / "a" / "trajectories_toy.jsonl").read_text().splitlines()) == 4
    table = compare_runs(tmp_path / "a", tmp_path / "b")
    assert "| toy | 0.750 | 0.250 | -0.500 |" in table


def test_cli_end_to_end_on_fixtures(tmp_path, tiny_tokenizer, tiny_model):
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    base = dict(model=str(model_dir), max_turns=2, max_new_tokens_per_turn=8, max_total_tokens=256, device="cpu")
    rows = run(
        EvalConfig(
            **base,
            benchmarks=("gsm8k", "svamp"),
            data_dir="tests/fixtures/benchmarks",
            output_dir=str(tmp_path / "a"),
        )
    )
    assert [r["benchmark"] for r in rows] == ["gsm8k", "svamp"] and all(r["problems"] == 3 for r in rows)
    run(
        EvalConfig(
            **base,
            benchmarks=("gsm8k",),
            data_dir="tests/fixtures/benchmarks",
            no_tools=True,
            output_dir=str(tmp_path / "b"),
        )
    )
    main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output-dir", str(tmp_path / "c")])
    assert "gsm8k" in (tmp_path / "c" / "compare.md").read_text()


def test_bad_input_names_the_flag(tmp_path):
    from gtpo.config import ConfigError

    with pytest.raises(ConfigError, match="--benchmarks"):
        run(EvalConfig(benchmarks=("mmlu",), output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="--temperature"):
        run(EvalConfig(k=4, temperature=0.0, output_dir=str(tmp_path)))


def test_any_model_folder_scores_with_default_flags(tmp_path, capsys):
    """A plain copy of the shipped model's folder: no flag but the data. The sampler must be built with the caps in
    use (a default rollout config's 512-token engine could not hold a 512-token turn after the prompt)."""
    import shutil

    from gtpo.tiny import DEFAULT_MODEL_DIR

    folder = tmp_path / "my-model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    main(["--model", str(folder), "--limit", "3", "--device", "cpu", "--output-dir", str(tmp_path / "out")])
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rows[0]["benchmark"] == "arith-heldout" and rows[0]["problems"] == 3
    # The generic caps, held to the model's 1,024 positions, reach the trajectories.
    records = [json.loads(line) for line in (tmp_path / "out" / "trajectories_arith-heldout.jsonl").open()]
    assert len(records) == 3
    out = capsys.readouterr().out
    assert "max_total_tokens 1024" in out
    assert "1 sample each in float32;" in out  # the shipped model samples in float32 on any CPU


def test_checkpoint_samples_with_its_runs_caps_on_gtpo_engine(tmp_path):
    """A preset run's settings (vLLM backend, 8,192-token trajectories) reach the evaluation's sampler; vLLM gives
    way to the engine, which samples the checkpoint's trained weights."""
    from gtpo.eval.cli import resolve_settings

    step = tmp_path / "run" / "checkpoints" / "step_0000002"
    step.mkdir(parents=True)
    (step / "model.pt").write_bytes(b"")
    rollout = {"backend": "vllm", "max_total_tokens": 8192, "max_new_tokens_per_turn": 1024, "max_turns": 5}
    (tmp_path / "run" / "config.json").write_text(json.dumps({"rollout": rollout}))
    cfg, sampling, note = resolve_settings(EvalConfig(checkpoint=str(step)))
    assert (cfg.max_total_tokens, cfg.max_new_tokens_per_turn, cfg.max_turns) == (8192, 1024, 5)
    caps = (sampling.rollout.max_total_tokens, sampling.rollout.max_new_tokens_per_turn)
    assert (sampling.generation.backend, *caps) == ("engine", 8192, 1024)  # from a run saved before the rename
    assert "the settings of run" in note


def test_the_sampling_dtype_is_the_runs_unless_a_flag_says_otherwise(tmp_path):
    from gtpo.eval.cli import resolve_settings

    step = tmp_path / "run" / "checkpoints" / "step_0000002"
    step.mkdir(parents=True)
    (step / "model.pt").write_bytes(b"")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"generation": {"engine_dtype": "bfloat16"}}))
    assert resolve_settings(EvalConfig(checkpoint=str(step)))[1].generation.engine_dtype == "bfloat16"
    flagged = resolve_settings(EvalConfig(checkpoint=str(step), engine_dtype="float32"))[1]
    assert flagged.generation.engine_dtype == "float32"
    assert resolve_settings(EvalConfig(model="tiny"))[1].generation.engine_dtype == "auto"


def test_an_environments_mean_return_is_reported_with_its_interval():
    """Per-problem mean returns by hand: problem 0's two episodes returned 1.25 and 0.5 (mean 0.875), problem 1's
    0 and 0.25 (0.125), problem 2's 1 and 1; the table shows them because they differ from the success rate."""

    def episode(problem, correct, rewards):
        turns = [Turn(text="t", reward=r) for r in rewards]
        return Trajectory(
            problem=Problem(id=f"p{problem}", question="q", answer=""), group_id=problem, turns=turns, correct=correct
        )

    episodes = [
        episode(0, True, [0.25, 1.0]), episode(0, False, [0.5]),
        episode(1, False, [0.0]), episode(1, False, [0.25, 0.0]),
        episode(2, True, [1.0]), episode(2, True, [0.0, 1.0]),
    ]  # fmt: skip
    report = EvalReport(
        name="game", k=2, per_problem=[[True, False], [False, False], [True, True]], trajectories=episodes
    )
    assert report.returns == pytest.approx([0.875, 0.125, 1.0])
    row = summarize(report)
    mean = (0.875 + 0.125 + 1.0) / 3
    sd = math.sqrt(((0.875 - mean) ** 2 + (0.125 - mean) ** 2 + (1.0 - mean) ** 2) / 2)
    half = 1.959964 * sd / math.sqrt(3)
    assert row["return_mean"] == pytest.approx(mean)
    assert (row["return_ci95_low"], row["return_ci95_high"]) == pytest.approx((mean - half, mean + half), abs=1e-5)
    assert "mean return" in markdown_table([row])
    assert "mean return" not in markdown_table([summarize(_report("toy", [[True, False], [False, False]]))])


def test_an_evaluation_samples_the_same_trajectories_with_and_without_a_progress_bar(shipped_tiny):
    """The chunking picks each chunk's seed, so it must not follow the progress bar: a tiny model's build (no
    bar) would otherwise score other samples than the run's step-0 evaluation (a bar) on the same seed."""
    from gtpo.components import build_sampler
    from gtpo.config import TrainConfig
    from gtpo.envs.python_tool import python_tool_envs
    from gtpo.envs.sources import eval_problems
    from gtpo.eval.evaluate import STREAMING_CHUNK, evaluate_problems
    from gtpo.rollout.spec import episode_spec
    from gtpo.sandbox import SandboxLimits, SandboxPool
    from gtpo.tasks import system_prompt_for

    model, tokenizer = shipped_tiny
    config = TrainConfig()
    problems = eval_problems(config.data)[: STREAMING_CHUNK + 6]  # a second chunk
    spec = episode_spec(config, system_prompt_for(config.data)).evaluation(config.eval.temperature)
    bars: list[int] = []
    runs = []
    with SandboxPool(SandboxLimits(wall_time_s=5.0), max_workers=2) as pool:
        for progress in (None, bars.append):
            report = evaluate_problems(
                problems, name="arith-heldout", sampler=build_sampler(config, model, tokenizer), tokenizer=tokenizer,
                make_env=python_tool_envs(pool, max_turns=spec.max_turns), spec=spec, seed=0, on_progress=progress,
            )  # fmt: skip
            runs.append([t.input_ids for t in report.trajectories])
    assert bars == [STREAMING_CHUNK, 6]
    assert runs[0] == runs[1]
