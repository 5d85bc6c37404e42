"""Evaluation output: a results row per benchmark (markdown + JSON), trajectories as JSONL, and a
side-by-side comparison of two evaluation directories with the paired difference and its interval.

Reads and writes files only; the numbers come from ``gtpo.eval.stats``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gtpo.eval.evaluate import EvalReport
from gtpo.eval.stats import accuracy_interval, mean_interval, mean_pass_at_k, paired_difference

RESULTS = "results.json"


def summarize(report: EvalReport) -> dict[str, Any]:
    """One benchmark's row: k, avg@k (the success rate) with a 95% interval (clustered by problem), pass@k, the
    mean episode return with its interval (an environment's rewards; the math task's equals avg@k), turns, tool
    use."""
    mean, lo, hi = accuracy_interval(report.per_problem)
    metrics = report.metrics(prefix="")
    returns = report.returns
    ret, ret_lo, ret_hi = mean_interval(returns) if returns else (0.0, 0.0, 0.0)
    return {
        "benchmark": report.name,
        "problems": len(report.per_problem),
        "k": report.k,
        f"avg@{report.k}": mean,
        "ci95_low": lo,
        "ci95_high": hi,
        f"pass@{report.k}": mean_pass_at_k(report.per_problem, report.k),
        "return_mean": ret,
        "return_ci95_low": ret_lo,
        "return_ci95_high": ret_hi,
        "turns_mean": metrics["turns_mean"],
        "tool_call_rate": metrics["tool_call_rate"],
        "per_problem": report.per_problem,
        "problem_ids": [t.problem.id for t in report.trajectories[:: report.k]],
    }


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """avg@k is the success rate (the math task: accuracy); the mean return is an environment's episode return
    (the sum of its step rewards), shown where it says more than avg@k."""
    returns = any(abs(r.get("return_mean", r[f"avg@{r['k']}"]) - r[f"avg@{r['k']}"]) > 1e-12 for r in rows)
    head = "| benchmark | problems | k | avg@k | 95% interval | pass@k |"
    lines = [
        head + (" mean return [95% interval] |" if returns else "") + " turns | tool-call rate |",
        "|---|---|---|---|---|---|" + ("---|" if returns else "") + "---|---|",
    ]
    for r in rows:
        k = r["k"]
        shown = (
            f" {r['return_mean']:.3f} [{r['return_ci95_low']:.3f}, {r['return_ci95_high']:.3f}] |" if returns else ""
        )
        lines.append(
            f"| {r['benchmark']} | {r['problems']} | {k} | {r[f'avg@{k}']:.3f} | "
            f"[{r['ci95_low']:.3f}, {r['ci95_high']:.3f}] | {r[f'pass@{k}']:.3f} |{shown} {r['turns_mean']:.2f} | "
            f"{r['tool_call_rate']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_trajectories(report: EvalReport, path: Path) -> None:
    """Every trajectory, one JSON object per line, with each turn's text, code, status and output."""
    with path.open("w", encoding="utf-8") as handle:
        for t in report.trajectories:
            record = {
                "problem_id": t.problem.id,
                "question": t.opening or t.problem.question,
                "reference": t.problem.answer,
                "final_answer": t.final_answer,
                "correct": t.correct,
                "finish_reason": t.finish_reason,
                "turns": [
                    {
                        "text": turn.text,
                        "code": turn.code,
                        "exec_status": turn.exec_status,
                        "tool_output": turn.tool_output,
                        "invalid_call": turn.invalid_call,
                    }
                    for turn in t.turns
                ],
            }
            handle.write(json.dumps(record) + "\n")


def write_results(reports: Sequence[EvalReport], out: Path) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [summarize(r) for r in reports]
    for report in reports:
        write_trajectories(report, out / f"trajectories_{report.name}.jsonl")
    (out / RESULTS).write_text(json.dumps(rows, indent=2))
    (out / "results.md").write_text(markdown_table(rows))
    return rows


def compare_runs(dir_a: Path, dir_b: Path) -> str:
    """Two evaluation directories on their common benchmarks: B - A (the change from baseline A), its interval."""
    rows_a = {r["benchmark"]: r for r in json.loads((Path(dir_a) / RESULTS).read_text())}
    rows_b = {r["benchmark"]: r for r in json.loads((Path(dir_b) / RESULTS).read_text())}
    lines = [
        f"| benchmark | A: {Path(dir_a).name} | B: {Path(dir_b).name} | B - A | 95% interval |",
        "|---|---|---|---|---|",
    ]
    for name in [n for n in rows_a if n in rows_b]:
        a, b = rows_a[name], rows_b[name]
        if a["problem_ids"] != b["problem_ids"]:
            raise ValueError(f"--compare: {name} was evaluated on different problems in the two runs")
        diff, lo, hi = paired_difference(b["per_problem"], a["per_problem"])
        acc_a, acc_b = a[f"avg@{a['k']}"], b[f"avg@{b['k']}"]
        lines.append(f"| {name} | {acc_a:.3f} | {acc_b:.3f} | {diff:+.3f} | [{lo:+.3f}, {hi:+.3f}] |")
    return "\n".join(lines) + "\n"
