"""``gtpo compare``: GTPO against GRPO and the paper's ablations on the same seeds and data.

Each variant is the same base config with a few fields changed; all runs share seed, problems and model.
The result is a markdown/JSON table and a PNG of reward, held-out accuracy, turns and tool-error rate
against step. Reading ``metrics.jsonl`` files only, the report can also be rebuilt from finished runs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gtpo.config import TrainConfig, from_dict
from gtpo.metrics import METRICS_FILE, read_metrics

VARIANTS: dict[str, dict[str, Any]] = {
    "gtpo": {},
    "grpo": {"algo": {"algo": "grpo"}},
    "gtpo-gamma1": {"algo": {"gamma": 1.0}},
    "gtpo-noshaping": {"algo": {"shaping": False}},
    "gtpo-noformat": {"algo": {"format_penalty": 0.0, "no_call_penalty": 0.0}},
    "gtpo-filter": {"rollout": {"filter_groups": True}},
}
"""Name -> overrides of the base config; gamma=1, no shaping, no format penalty: the paper's ablations;
gtpo-filter: DAPO's dynamic sampling (rollout.filter_groups), not part of the paper."""

PLOTTED = {
    "reward/accuracy": "train accuracy",
    "eval/avg@1": "held-out accuracy (avg@1)",
    "rollout/turns_mean": "turns per trajectory",
    "rollout/invalid_call_rate": "tool-error rate (invalid calls / turns)",
}


def variant_config(base: TrainConfig, name: str, root: Path) -> TrainConfig:
    if name not in VARIANTS:
        raise ValueError(f"--variants: unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    config = from_dict(VARIANTS[name], base)
    return dataclasses.replace(config, output_dir=str(root / name), resume=False)


def run_comparison(
    base: TrainConfig,
    variants: Sequence[str],
    root: Path,
    train_fn: Callable[[TrainConfig], None],
) -> dict[str, Any]:
    """Train each variant with ``train_fn`` and write the report into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name in variants:
        train_fn(variant_config(base, name, root))
    return write_report(root, variants)


def summarize(records: list[dict[str, Any]], window: int = 5) -> dict[str, float | None]:
    """Final numbers of one run: train metrics averaged over the last ``window`` steps, last eval."""
    train = [r for r in records if "reward/accuracy" in r]
    evals = [r for r in records if any(k.startswith("eval/avg@") for k in r)]
    tail = train[-window:]

    def mean(key: str) -> float | None:
        values = [r[key] for r in tail if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    def eval_value(record: dict[str, Any]) -> float:
        return next(v for k, v in record.items() if k.startswith("eval/avg@"))

    return {
        "steps": train[-1]["step"] if train else 0,
        "train_accuracy_last": mean("reward/accuracy"),
        "train_reward_last": mean("reward/mean"),
        "eval_first": eval_value(evals[0]) if evals else None,
        "eval_last": eval_value(evals[-1]) if evals else None,
        "turns_last": mean("rollout/turns_mean"),
        "tool_error_rate_last": mean("rollout/invalid_call_rate"),
        "step_s_mean": (sum(r["perf/step_s"] for r in train) / len(train)) if train else None,
    }


def write_report(root: Path, variants: Sequence[str]) -> dict[str, Any]:
    runs = {name: read_metrics(root / name / METRICS_FILE) for name in variants}
    summary = {name: summarize(records) for name, records in runs.items()}
    (root / "compare.json").write_text(json.dumps(summary, indent=2))
    (root / "compare.md").write_text(markdown_table(summary))
    plot(runs, root / "compare.png")
    return summary


def markdown_table(summary: dict[str, dict[str, float | None]]) -> str:
    columns = [
        ("steps", "steps"),
        ("eval_first", "held-out acc @0"),
        ("eval_last", "held-out acc @end"),
        ("train_accuracy_last", "train acc (last 5)"),
        ("train_reward_last", "train reward (last 5)"),
        ("turns_last", "turns"),
        ("tool_error_rate_last", "tool-error rate"),
        ("step_s_mean", "s/step"),
    ]
    lines = [
        "| variant | " + " | ".join(title for _, title in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, row in summary.items():
        cells = [_fmt(row.get(key)) for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, title) in zip(axes.flat, PLOTTED.items(), strict=True):
        for name, records in runs.items():
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if key.startswith("eval/") else None, label=name, linewidth=1.4)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
