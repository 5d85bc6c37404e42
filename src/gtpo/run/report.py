"""The run directory's report: ``summary.md`` (start vs end), ``curves.png`` and ``samples.jsonl``.

Built from ``metrics.jsonl`` records, so a resumed run reports its whole history, and a report can be rebuilt
from any finished run. ``samples.jsonl`` holds a few full trajectories per evaluation (question, every turn's
text, code, tool output, reward and advantage) so a person can read what the policy actually does.
What is not here: the terminal output (``gtpo.run.console``) and the metrics themselves (``gtpo.run.metrics``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gtpo.run.metrics import EVAL_FILE, METRICS_FILE
from gtpo.types import Trajectory

CURVES = "curves.png"
SUMMARY = "summary.md"
SAMPLES = "samples.jsonl"
SAMPLES_PER_EVAL = 4
"""Held-out trajectories kept per evaluation (half right, half wrong when both exist), beside one training group."""


def eval_key(record: dict[str, Any]) -> str | None:
    """The held-out accuracy key of a record (``eval/avg@k``), or None if the record has no evaluation."""
    return next((k for k in record if k.startswith("eval/avg@") and record[k] is not None), None)


def _window(records: list[dict[str, Any]]) -> int:
    return max(1, min(10, len(records) // 4))


def _mean(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Start and end of a run: first and last evaluation, and training metrics over its first and last steps."""
    train = [r for r in records if "reward/accuracy" in r]
    evals = [r for r in records if eval_key(r)]
    w = _window(train)
    first, last = train[:w], train[-w:]

    def evaluation(record: dict[str, Any] | None) -> dict[str, Any] | None:
        if record is None:
            return None
        key = eval_key(record)
        return {
            "step": record["step"],
            "metric": key.removeprefix("eval/") if key else None,
            "accuracy": record[key] if key else None,
            "low": record.get("eval/ci95_low"),
            "high": record.get("eval/ci95_high"),
        }

    rows = {}
    for key, name in (
        ("reward/accuracy", "training accuracy"),
        ("reward/mean", "training reward"),
        ("rollout/turns_mean", "turns per trajectory"),
        ("rollout/invalid_call_rate", "tool errors (invalid calls per turn)"),
    ):
        rows[name] = (_mean(first, key), _mean(last, key))
    return {
        "steps": train[-1]["step"] if train else 0,
        "first_steps": (first[0]["step"], first[-1]["step"]) if first else None,
        "last_steps": (last[0]["step"], last[-1]["step"]) if last else None,
        "eval_start": evaluation(evals[0] if evals else None),
        "eval_end": evaluation(evals[-1] if len(evals) > 1 else None),
        "train": rows,
        "train_s": sum(r.get("perf/step_s") or 0.0 for r in train),
        "eval_s": sum(r.get("perf/eval_s") or 0.0 for r in records),
    }


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _change(start: float | None, end: float | None) -> str:
    return "-" if start is None or end is None else f"{end - start:+.3f}"


def _steps(span: tuple[int, int] | None) -> str:
    if span is None:
        return ""
    return f" (step {span[0]})" if span[0] == span[1] else f" (steps {span[0]}-{span[1]})"


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def summary_table(summary: dict[str, Any]) -> str:
    """The start-vs-end table as markdown (readable as plain text too)."""
    lines = ["| | start | end | change |", "|---|---|---|---|"]
    start, end = summary["eval_start"], summary["eval_end"]
    if start is not None:

        def cell(e: dict[str, Any] | None) -> str:
            if e is None:
                return "-"
            interval = f" [{e['low']:.3f}, {e['high']:.3f}]" if e["low"] is not None else ""
            return f"{_num(e['accuracy'])}{interval} (step {e['step']})"

        change = _change(start["accuracy"], end["accuracy"]) if end else "-"
        lines.append(f"| held-out accuracy ({start['metric']}) | {cell(start)} | {cell(end)} | {change} |")
    for name, (a, b) in summary["train"].items():
        first, last = _steps(summary["first_steps"]), _steps(summary["last_steps"])
        lines.append(f"| {name} | {_num(a)}{first} | {_num(b)}{last} | {_change(a, b)} |")
    steps = summary["steps"]
    per_step = f", {summary['train_s'] / steps:.1f} s/step" if steps else ""
    total = summary["train_s"] + summary["eval_s"]
    lines.append(
        f"| time | | {duration(total)} ({steps} steps{per_step}; evaluations {duration(summary['eval_s'])}) | |"
    )
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, records: list[dict[str, Any]], title: str, notes: Sequence[str] = ()) -> str:
    """Write ``summary.md``: what ran, the start-vs-end table, warnings raised, and where everything is."""
    table = summary_table(summarize(records))
    files = [
        (METRICS_FILE, "every step's metrics, one JSON object per line"),
        (EVAL_FILE, "every held-out evaluation per problem: correctness, turns, tokens, invalid calls per sample"),
        (CURVES, "reward, held-out accuracy, turns and tool errors against step"),
        (SAMPLES, "full trajectories at each evaluation: turns, code, tool output, rewards, advantages"),
        (
            "model/",
            "the final policy as a Hugging Face model folder (from_pretrained loads it; docs/runs.md: prompting it)",
        ),
        ("checkpoints/", "resumable checkpoints (gtpo train --resume --output-dir this folder)"),
        ("config.json", "the resolved configuration"),
    ]
    present = [f"- `{name}`: {what}" for name, what in files if (run_dir / name.rstrip("/")).exists()]
    parts = [f"# {title}\n", table]
    if notes:
        parts.append("## Notes\n\n" + "".join(f"- {note}\n" for note in notes))
    parts.append("## Files\n\n" + "\n".join(present) + "\n")
    text = "\n".join(parts)
    (run_dir / SUMMARY).write_text(text, encoding="utf-8")
    return table


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Four panels against step: training reward and accuracy, held-out accuracy with its 95% interval,
    turns per trajectory, tool-error rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        return [s for s, _ in points], [v for _, v in points]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0, 0]
    for key, label in (("reward/mean", "reward (mean)"), ("reward/accuracy", "accuracy")):
        ax.plot(*series(key), label=label, linewidth=1.2)
    ax.set_title("training")
    ax.legend()
    ax = axes[0, 1]
    evals = [r for r in records if eval_key(r)]
    if evals:
        key = eval_key(evals[0]) or ""
        steps = [r["step"] for r in evals]
        values = [r[eval_key(r) or key] for r in evals]
        ax.plot(steps, values, marker="o", label=key.removeprefix("eval/"))
        if all(r.get("eval/ci95_low") is not None for r in evals):
            low = [r["eval/ci95_low"] for r in evals]
            high = [r["eval/ci95_high"] for r in evals]
            ax.fill_between(steps, low, high, alpha=0.2, label="95% interval")
        ax.legend()
    ax.set_title("held-out accuracy")
    axes[1, 0].plot(*series("rollout/turns_mean"), linewidth=1.2)
    axes[1, 0].set_title("turns per trajectory")
    axes[1, 1].plot(*series("rollout/invalid_call_rate"), linewidth=1.2)
    axes[1, 1].set_title("tool errors (invalid calls per turn)")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def trajectory_record(
    step: int,
    kind: str,
    trajectory: Trajectory,
    turn_rewards: torch.Tensor | None = None,
    turn_advantages: torch.Tensor | None = None,
) -> dict[str, Any]:
    """One trajectory as a person reads it; rewards/advantages are its rows of the [B, K] turn tensors."""
    turns = []
    for k, turn in enumerate(trajectory.turns):
        entry: dict[str, Any] = {
            "text": turn.text,
            "code": turn.code,
            "exec_status": turn.exec_status,
            "tool_output": turn.tool_output,
            "invalid_call": turn.invalid_call,
            "env_reward": turn.reward,
            "observation": turn.observation,
        }
        if turn_rewards is not None:
            entry["reward"] = round(float(turn_rewards[k]), 6)
        if turn_advantages is not None:
            entry["advantage"] = round(float(turn_advantages[k]), 6)
        turns.append(entry)
    return {
        "step": step,
        "kind": kind,
        "problem_id": trajectory.problem.id,
        "question": trajectory.opening or trajectory.problem.question,
        "reference": trajectory.problem.answer,
        "final_answer": trajectory.final_answer,
        "correct": trajectory.correct,
        "finish_reason": trajectory.finish_reason,
        **({"error": trajectory.error} if trajectory.error else {}),
        "turns": turns,
    }


def pick_samples(trajectories: Sequence[Trajectory], n: int = SAMPLES_PER_EVAL) -> list[Trajectory]:
    """Up to ``n`` trajectories, half right and half wrong when both exist, in their original order."""
    right = [t for t in trajectories if t.correct]
    wrong = [t for t in trajectories if not t.correct]
    n_right = min(len(right), max(n // 2, n - len(wrong)))
    keep = {id(t) for t in right[:n_right] + wrong[: n - n_right]}
    return [t for t in trajectories if id(t) in keep]


def pick_group(trajectories: Sequence[Trajectory]) -> list[int]:
    """Indices of one training group to show: the first with both right and wrong answers, else the first."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(trajectories):
        groups.setdefault(t.group_id, []).append(i)
    for members in groups.values():
        if len({trajectories[i].correct for i in members}) == 2:
            return members
    return next(iter(groups.values()), [])


def append_samples(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
