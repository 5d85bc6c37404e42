"""The comparison report: per-run numbers from run directories, their statistics over seeds, and the files.

Reads only what runs write (``metrics.jsonl`` and the per-problem held-out results ``eval_problems.jsonl``),
so a report can be rebuilt from finished runs at any time; a run without its done marker is left out.
Per run, at the last held-out evaluation: avg@k, the area under the held-out curve (its mean level over
training), invalid calls per turn, how often a trajectory that made an invalid call still ends correct
(recovery) and how often it ends correct after a later call ran (repair), turns and model tokens per trajectory.
Per variant: mean and interval over seeds. Against the first variant: the difference paired by seed, and for
accuracy and area by problem too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gtpo.compare.runs import DONE_FILE, run_dir
from gtpo.compare.stats import (
    Interval,
    clipped,
    crossed_mean_interval,
    curve_area,
    mean_interval,
    paired_interval,
    t_quantile,
)
from gtpo.eval.evaluate import read_eval_records
from gtpo.run.metrics import EVAL_FILE, METRICS_FILE, read_metrics

QUANTITIES = {
    "final": "final held-out avg@k",
    "area": "area under held-out curve",
    "invalid_rate": "invalid calls / turn",
    "recovery": "correct after an invalid call",
    "repair": "fixed after a failed call",
    "turns": "turns / trajectory",
    "tokens": "model tokens / trajectory",
}
"""The compared quantities, all from the held-out evaluations (the same problems for every run)."""
BY_PROBLEM = ("final", "area")
"""Quantities whose differences are paired by problem as well as by seed."""
EXTRA = {"train_accuracy": "train acc (last 5 steps)", "step_s": "s / step", "wall_s": "wall s / run"}
TIMINGS = ("step_s", "wall_s")
"""Shown as means only: wall times depend on the machine's load, not on seeds."""
PLOTTED = {
    "reward/accuracy": "train accuracy (5-step mean)",
    "rollout/turns_mean": "train turns per trajectory (5-step mean)",
    "rollout/invalid_call_rate": "train invalid calls / turn (5-step mean)",
}
SMOOTH = 5
PROPORTIONS = ("final", "area", "invalid_rate", "recovery", "repair", "train_accuracy", "eval", "reward/accuracy",
               "rollout/invalid_call_rate")  # fmt: skip
"""Quantities in [0, 1] (their differences in [-1, 1]): intervals are clipped there (``stats.clipped``)."""
NON_NEGATIVE = ("turns", "tokens", "step_s", "wall_s", "rollout/turns_mean")
FEW_SEEDS = 5
"""Below this many seeds the report says that its intervals are too wide to tell most differences apart."""


def bounds(key: str, difference: bool = False) -> tuple[float | None, float | None]:
    """What a quantity (or a difference of two) can take: its interval is clipped to it."""
    if key in PROPORTIONS:
        return (-1.0, 1.0) if difference else (0.0, 1.0)
    if key in NON_NEGATIVE and not difference:
        return (0.0, None)
    return (None, None)


@dataclass
class RunResult:
    """One finished run, reduced to what the comparison needs."""

    values: dict[str, float | None]
    """QUANTITIES and EXTRA by key."""
    eval_steps: list[int]
    eval_curve: list[float]
    per_problem: dict[str, list[float]] = field(default_factory=dict)
    """For BY_PROBLEM quantities: the value of each held-out problem, in ``problems`` order."""
    problems: list[str] = field(default_factory=list)
    train: list[dict[str, Any]] = field(default_factory=list)


def problem_accuracy(record: dict[str, Any]) -> list[float]:
    """Each problem's fraction of correct samples in one evaluation record."""
    return [sum(map(bool, row)) / len(row) for row in record["correct"]]


def summarize_run(records: list[dict[str, Any]], evals: list[dict[str, Any]], window: int = SMOOTH) -> RunResult:
    """A run's numbers from its metric records and its evaluation records (step order)."""
    if not evals:
        raise ValueError("a run without held-out evaluations cannot be compared; set --data.eval and --eval-every")
    steps = [int(r["step"]) for r in evals]
    accuracies = [problem_accuracy(r) for r in evals]
    per_problem_area = [curve_area(steps, list(curve)) for curve in zip(*accuracies, strict=True)]
    last = evals[-1]
    trajectories = [x for row in last.get("turns", []) for x in row]
    turns = sum(trajectories)
    invalid = sum(x for row in last.get("invalid_calls", []) for x in row)
    tokens = [x for row in last.get("tokens", []) for x in row]
    recovered = _recovery(last)
    train = [r for r in records if "reward/accuracy" in r]
    tail = train[-window:]
    values: dict[str, float | None] = {
        "final": _mean(accuracies[-1]),
        "area": _mean(per_problem_area),
        "invalid_rate": invalid / turns if turns else None,
        "recovery": recovered,
        "repair": _repair(last),
        "turns": turns / len(trajectories) if trajectories else None,
        "tokens": _mean(tokens) if tokens else None,
        "train_accuracy": _mean([r["reward/accuracy"] for r in tail]) if tail else None,
        "step_s": _mean([r["perf/step_s"] for r in train if "perf/step_s" in r]) if train else None,
    }
    return RunResult(
        values=values,
        eval_steps=steps,
        eval_curve=[_mean(a) for a in accuracies],
        per_problem={"final": accuracies[-1], "area": per_problem_area},
        problems=list(last.get("problems", [])),
        train=train,
    )


def _recovery(record: dict[str, Any]) -> float | None:
    """Of the trajectories that made at least one invalid call, the fraction that still ended correct: what
    turn-level credit should teach on a task where a failed call can be repaired in a later turn. None when
    no trajectory made an invalid call (or the record does not say)."""
    if "invalid_calls" not in record:
        return None
    outcomes = [
        bool(ok)
        for oks, calls in zip(record["correct"], record["invalid_calls"], strict=True)
        for ok, n in zip(oks, calls, strict=True)
        if n > 0
    ]
    return sum(outcomes) / len(outcomes) if outcomes else None


def _repair(record: dict[str, Any]) -> float | None:
    """Of the trajectories that made at least one invalid call, the fraction in which a later call ran validly
    and the episode ended correct: a failure read and fixed, not only a right answer after an error (recovery
    also counts a correct function defined before a failed check, or a boxed answer guessed after an error).
    None when no trajectory made an invalid call, or the record predates ``repaired``."""
    if "invalid_calls" not in record or "repaired" not in record:
        return None
    outcomes = [
        bool(ok and fixed)
        for oks, calls, fixes in zip(record["correct"], record["invalid_calls"], record["repaired"], strict=True)
        for ok, n, fixed in zip(oks, calls, fixes, strict=True)
        if n > 0
    ]
    return sum(outcomes) / len(outcomes) if outcomes else None


def read_run(path: Path) -> RunResult | None:
    """A finished run's result, or None if it has not finished."""
    path = Path(path)
    if not (path / DONE_FILE).exists():
        return None
    result = summarize_run(read_metrics(path / METRICS_FILE), read_eval_records(path / EVAL_FILE))
    result.values["wall_s"] = json.loads((path / DONE_FILE).read_text()).get("wall_s")
    return result


def variant_statistics(runs: dict[int, RunResult], confidence: float = 0.95) -> dict[str, Interval]:
    """Mean and interval over seeds of every quantity."""
    out = {}
    for key in (*QUANTITIES, *EXTRA):
        values = [r.values[key] for r in runs.values() if r.values.get(key) is not None]
        if values:
            out[key] = clipped(mean_interval(values, confidence), *bounds(key))
    return out


def difference_statistics(
    runs: dict[int, RunResult], baseline: dict[int, RunResult], confidence: float = 0.95
) -> dict[str, Interval]:
    """Variant minus baseline on the seeds both finished: paired by seed, and for BY_PROBLEM quantities also
    by problem (a seeds x problems table of differences, ``crossed_mean_interval``), when both were evaluated
    on the same problems in the same order."""
    seeds = sorted(set(runs) & set(baseline))
    out: dict[str, Interval] = {}
    if not seeds:
        return out
    same_problems = all(runs[s].problems == baseline[s].problems for s in seeds)
    for key in QUANTITIES:
        if key in BY_PROBLEM and same_problems:
            table = [
                [a - b for a, b in zip(runs[s].per_problem[key], baseline[s].per_problem[key], strict=True)]
                for s in seeds
            ]
            out[key] = clipped(crossed_mean_interval(table, confidence), *bounds(key, difference=True))
            continue
        pairs = [(runs[s].values[key], baseline[s].values[key]) for s in seeds]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if pairs:
            interval = paired_interval([a for a, _ in pairs], [b for _, b in pairs], confidence)
            out[key] = clipped(interval, *bounds(key, difference=True))
    return out


def collect(root: Path, variants: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[int, RunResult]]:
    """Finished runs by variant and seed."""
    results: dict[str, dict[int, RunResult]] = {}
    for variant in variants:
        results[variant] = {}
        for seed in seeds:
            result = read_run(run_dir(root, variant, seed))
            if result is not None:
                results[variant][seed] = result
    return results


def write_report(root: Path, variants: Sequence[str], seeds: Sequence[int], confidence: float = 0.95) -> dict:
    """compare.json, compare.md and compare.png in ``root`` from the finished runs; returns the JSON data."""
    root = Path(root)
    results = collect(root, variants, seeds)
    baseline = variants[0]
    data: dict[str, Any] = {
        "variants": list(variants),
        "seeds": list(seeds),
        "confidence": confidence,
        "baseline": baseline,
        "eval": _eval_description(root, results),
        "per_variant": {},
        "difference_from_baseline": {},
        "runs": {},
        "curves": {},
    }
    for variant, runs in results.items():
        data["per_variant"][variant] = {k: v.as_dict() for k, v in variant_statistics(runs, confidence).items()}
        data["runs"][variant] = {str(seed): run.values for seed, run in runs.items()}
        data["curves"][variant] = {
            str(seed): {"steps": run.eval_steps, "heldout": run.eval_curve} for seed, run in runs.items()
        }
        if variant != baseline:
            diffs = difference_statistics(runs, results[baseline], confidence)
            data["difference_from_baseline"][variant] = {k: v.as_dict() for k, v in diffs.items()}
    (root / "compare.json").write_text(json.dumps(data, indent=2))
    (root / "compare.md").write_text(markdown(data))
    plot(results, root / "compare.png", confidence)
    return data


def _eval_description(root: Path, results: dict[str, dict[int, RunResult]]) -> dict[str, Any]:
    for variant, runs in results.items():
        for seed in runs:
            evals = read_eval_records(run_dir(root, variant, seed) / EVAL_FILE)
            last = evals[-1]
            return {"name": last.get("name"), "problems": len(last["correct"]), "k": last.get("k")}
    return {}


def markdown(data: dict[str, Any]) -> str:
    """The tables: per variant (mean [interval] over seeds), then each variant minus the baseline."""
    pct = round(100 * data["confidence"])
    evaluation = data["eval"]
    k = evaluation.get("k", "k")
    lines = [
        f"# gtpo compare: {len(data['variants'])} variants x {len(data['seeds'])} seeds ({_seed_range(data['seeds'])})",
        "",
        f"Held-out set: {evaluation.get('name', '-')} ({evaluation.get('problems', '-')} problems, avg@{k}); "
        f"[lo, hi] are {pct}% intervals over seeds (Student t), cut at what a quantity can take (proportions "
        "at 0 and 1, their differences at -1 and 1).",
        "",
        *_few_seeds_note(len(data["seeds"]), data["confidence"]),
    ]
    columns = {**QUANTITIES, **EXTRA}
    lines.append(
        "| variant | seeds done | " + " | ".join(title.replace("@k", f"@{k}") for title in columns.values()) + " |"
    )
    lines.append("|---" * (len(columns) + 2) + "|")
    for variant in data["variants"]:
        stats = data["per_variant"].get(variant, {})
        done = len(data["runs"].get(variant, {}))
        cells = [_cell(stats.get(key), key) for key in columns]
        lines.append(f"| {variant} | {done} | " + " | ".join(cells) + " |")
    baseline = data["baseline"]
    lines += [
        "",
        f"## Difference from {baseline} (variant - {baseline})",
        "",
        f"Paired by seed; accuracy and area also by problem (seeds x problems, variance components, t with "
        f"seeds - 1 df). A {pct}% interval that contains 0 is no evidence of a difference at this many seeds.",
        "",
        "| variant | seeds paired | "
        + " | ".join(title.replace("@k", f"@{k}") for title in QUANTITIES.values())
        + " |",
        "|---" * (len(QUANTITIES) + 2) + "|",
    ]
    for variant, diffs in data["difference_from_baseline"].items():
        # the seeds both finished (not Interval.n: with one seed, accuracy's interval is over problems)
        paired = len(set(data["runs"].get(variant, {})) & set(data["runs"].get(baseline, {})))
        cells = [_cell(diffs.get(key), key, signed=True) for key in QUANTITIES]
        lines.append(f"| {variant} | {paired} | " + " | ".join(cells) + " |")
    lines += _per_seed_curves(data, k)
    return "\n".join(lines) + "\n"


def _per_seed_curves(data: dict[str, Any], k: Any) -> list[str]:
    """Held-out avg@k at every evaluation, one row per seed: whether a mean difference holds seed by seed."""
    curves = data.get("curves", {})
    variants = [v for v in data["variants"] if curves.get(v)]
    if not variants:
        return []
    steps = sorted({s for v in variants for c in curves[v].values() for s in c["steps"]})
    lines = [
        "",
        f"## Held-out avg@{k} per seed",
        "",
        f"Each cell: the values at steps {', '.join(map(str, steps))} (-: no evaluation at that step).",
        "",
        "| seed | " + " | ".join(variants) + " |",
        "|---" * (len(variants) + 1) + "|",
    ]
    for seed in data["seeds"]:
        cells = []
        for variant in variants:
            curve = curves[variant].get(str(seed))
            if not curve:
                cells.append("-")
                continue
            at = dict(zip(curve["steps"], curve["heldout"], strict=True))
            cells.append(" ".join(f"{at[s]:.3f}" if s in at else "-" for s in steps))  # "-": not evaluated
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return lines


def _few_seeds_note(seeds: int, confidence: float) -> list[str]:
    """A warning above the tables when the seeds are too few for the intervals to tell much apart."""
    if seeds >= FEW_SEEDS:
        return []
    if seeds == 1:
        return [
            "**One seed: there is no interval over seeds.** Seed-to-seed spread is unknown, so no difference below "
            "can be told from a lucky seed; run more (--seeds, at least 5).",
            "",
        ]
    t = t_quantile(confidence, seeds - 1)
    return [
        f"**Only {seeds} seeds: too few to tell most differences apart.** Each half-width is {t:.1f} standard "
        f"errors (about 2 at many seeds), so an interval spans most of what the quantity can take and only a very "
        "large difference shows; run more seeds (--seeds, at least 5).",
        "",
    ]


def _seed_range(seeds: Sequence[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"


def _cell(stat: dict[str, Any] | None, key: str, signed: bool = False) -> str:
    if stat is None:
        return "-"
    digits = 1 if key in ("tokens", "step_s", "wall_s") else 3
    sign = "+" if signed else ""
    text = f"{stat['mean']:{sign}.{digits}f}"
    if stat["lo"] is not None and key not in TIMINGS:
        text += f" [{stat['lo']:{sign}.{digits}f}, {stat['hi']:{sign}.{digits}f}]"
    return text


def plot(results: dict[str, dict[int, RunResult]], path: Path, confidence: float = 0.95) -> None:
    """Held-out accuracy and three training curves against step: mean over seeds, with the interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = [("eval", "held-out accuracy (mean over seeds, band: interval)"), *PLOTTED.items()]
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for variant, runs in results.items():
            curves = [_curve(run, key) for run in runs.values()]
            curves = [c for c in curves if c[0]]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c[0]) for c in curves)))
            by_step = [[dict(zip(*c, strict=True))[s] for c in curves] for s in steps]
            stats = [clipped(mean_interval(values, confidence), *bounds(key)) for values in by_step]
            (line,) = ax.plot(steps, [s.mean for s in stats], label=f"{variant} (n={len(curves)})", linewidth=1.4)
            if len(curves) > 1:
                lo = [s.lo if s.lo is not None else math.nan for s in stats]
                hi = [s.hi if s.hi is not None else math.nan for s in stats]
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curve(run: RunResult, key: str) -> tuple[list[int], list[float]]:
    if key == "eval":
        return run.eval_steps, run.eval_curve
    points = [(int(r["step"]), r[key]) for r in run.train if r.get(key) is not None]
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    smoothed = [_mean(values[max(0, i - SMOOTH + 1) : i + 1]) for i in range(len(values))]
    return steps, smoothed


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
