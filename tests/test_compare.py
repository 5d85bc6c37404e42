"""The comparison report: variants differ only where named; the table and plot come from metrics files."""

import json

import pytest

from gtpo.compare import VARIANTS, summarize, variant_config, write_report
from gtpo.config import TrainConfig


def test_variants_change_only_their_fields(tmp_path):
    base = TrainConfig()
    grpo = variant_config(base, "grpo", tmp_path)
    assert grpo.algo.algo == "grpo" and grpo.algo.gamma == base.algo.gamma
    assert variant_config(base, "gtpo-gamma1", tmp_path).algo.gamma == 1.0
    assert variant_config(base, "gtpo-noshaping", tmp_path).algo.shaping is False
    assert grpo.seed == base.seed and grpo.data == base.data
    assert grpo.output_dir == str(tmp_path / "grpo")
    with pytest.raises(ValueError, match="known"):
        variant_config(base, "ppo", tmp_path)


def _records(acc):
    rows = [{"step": 0, "eval/avg@1": 0.25}]
    for step, a in enumerate(acc, start=1):
        rows.append(
            {
                "step": step,
                "reward/accuracy": a,
                "reward/mean": a - 0.1,
                "rollout/turns_mean": 2.0,
                "rollout/invalid_call_rate": 0.1,
                "perf/step_s": 2.0,
            }
        )
    rows[-1]["eval/avg@1"] = 0.75
    return rows


def test_summary_averages_the_last_steps():
    summary = summarize(_records([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), window=5)
    assert summary["train_accuracy_last"] == pytest.approx((0.2 + 0.3 + 0.4 + 0.5 + 0.6) / 5)
    assert (summary["eval_first"], summary["eval_last"]) == (0.25, 0.75)
    assert summary["steps"] == 7


def test_report_files(tmp_path):
    for name in ("gtpo", "grpo"):
        (tmp_path / name).mkdir()
        lines = "".join(json.dumps(r) + "\n" for r in _records([0.1, 0.2, 0.3]))
        (tmp_path / name / "metrics.jsonl").write_text(lines)
    write_report(tmp_path, ["gtpo", "grpo"])
    table = (tmp_path / "compare.md").read_text()
    assert "| gtpo |" in table and "| grpo |" in table
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert set(json.loads((tmp_path / "compare.json").read_text())) == {"gtpo", "grpo"}
    assert set(VARIANTS) >= {"gtpo", "grpo", "gtpo-gamma1", "gtpo-noshaping"}
