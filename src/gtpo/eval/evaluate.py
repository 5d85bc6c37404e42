"""Evaluation: sample k trajectories per held-out problem (or environment instance) with the training protocol,
and score them.

The trainer's scheduled evaluations and ``gtpo eval`` both call ``evaluate_problems``, so a number seen during
training and one seen afterwards are computed by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gtpo.distributed import DistContext, gather_objects, shard_indices, strip_tokens
from gtpo.envs.base import EnvFactory
from gtpo.eval.stats import accuracy_interval
from gtpo.generation.protocol import StreamingSampler
from gtpo.rollout.episode import rollout
from gtpo.rollout.spec import EpisodeSpec
from gtpo.run.metrics import read_metrics
from gtpo.types import Problem, Trajectory

STREAMING_CHUNK = 64
"""Problems per evaluation rollout with a streaming sampler (the engine)."""
BATCH_CHUNK = 32
"""Problems per evaluation rollout with a batch sampler."""


@dataclass
class EvalReport:
    """Scores of one evaluation run; ``per_problem`` holds each problem's k correctness flags."""

    name: str
    k: int
    per_problem: list[list[bool]]
    trajectories: list[Trajectory] = field(repr=False, default_factory=list)

    @property
    def returns(self) -> list[float]:
        """Each problem's mean episode return over its k samples (the sum of its environment's step rewards; for
        the math task, its accuracy)."""
        k, trajs = self.k, self.trajectories
        episode = [sum(turn.reward for turn in t.turns) for t in trajs]
        return [sum(episode[i * k : (i + 1) * k]) / k for i in range(len(trajs) // k)] if k else []

    @property
    def accuracy(self) -> float:
        """avg@k: mean accuracy over the k samples of every problem."""
        flat = [c for row in self.per_problem for c in row]
        return sum(flat) / len(flat) if flat else 0.0

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        """avg@k with its 95% interval (clustered by problem), the mean return, turns and tool use."""
        trajs = self.trajectories
        turns = [t.num_turns for t in trajs]
        all_turns = [turn for t in trajs for turn in t.turns]
        returns = self.returns
        metrics = {
            f"{prefix}avg@{self.k}": self.accuracy,
            f"{prefix}return_mean": sum(returns) / len(returns) if returns else 0.0,
            f"{prefix}turns_mean": sum(turns) / len(turns) if turns else 0.0,
            f"{prefix}tool_call_rate": (
                sum(turn.has_tool_call for turn in all_turns) / len(all_turns) if all_turns else 0.0
            ),
        }
        if self.per_problem:
            _, low, high = accuracy_interval(self.per_problem)
            metrics.update({f"{prefix}ci95_low": low, f"{prefix}ci95_high": high})
        return metrics


def evaluate_problems(
    problems: Sequence[Problem],
    *,
    name: str,
    sampler: Any,
    tokenizer: Any,
    make_env: EnvFactory,
    spec: EpisodeSpec,
    k: int = 1,
    batch_problems: int | None = None,
    seed: int | None = 0,
    on_progress: Callable[[int], None] | None = None,
    on_trajectory_end: Callable[[], None] | None = None,
) -> EvalReport:
    """Roll out ``k`` samples per problem by the rules of ``spec``, each in its own environment from ``make_env``
    (in chunks of ``batch_problems``), and collect success.

    ``batch_problems`` None: 64 at a time with the engine (enough to keep its slots busy, few enough that a
    progress bar moves), 32 with batch samplers (their padded batches grow with the longest row). A chunk
    samples with ``seed`` plus the index of its first problem, so the chunking picks the random numbers: it
    is fixed here and never depends on whether progress is shown, so every caller (a run's evaluations,
    ``gtpo eval``, a tiny model's build) samples the same trajectories. ``on_progress(n)`` is called after
    each chunk with its number of problems (a progress bar; it may raise to abandon the evaluation);
    ``on_trajectory_end()`` as each trajectory ends.
    """
    if batch_problems is None:
        batch_problems = STREAMING_CHUNK if isinstance(sampler, StreamingSampler) else BATCH_CHUNK
    trajectories: list[Trajectory] = []
    for start in range(0, len(problems), batch_problems):
        chunk = list(problems[start : start + batch_problems])
        seed_here = None if seed is None else seed + start
        out = rollout(chunk, k, sampler, tokenizer, make_env, spec, seed=seed_here, on_trajectory_end=on_trajectory_end)
        trajectories.extend(out.trajectories)
        if on_progress is not None:
            on_progress(len(chunk))
    per_problem = [[t.correct for t in trajectories[i * k : (i + 1) * k]] for i in range(len(problems))]
    return EvalReport(name=name, k=k, per_problem=per_problem, trajectories=trajectories)


def repaired_call(trajectory: Trajectory) -> bool:
    """Whether an invalid tool call was followed, in a later turn, by a call that ran and was valid: the model
    read a failure and tried again successfully (whether the episode then succeeded is ``correct``'s)."""
    failed = False
    for turn in trajectory.turns:
        if turn.invalid_call:
            failed = True
        elif failed and turn.has_tool_call and turn.exec_status is not None:
            return True
    return False


def eval_record(report: EvalReport, step: int) -> dict[str, Any]:
    """One evaluation, per problem (rows in problem order, k entries each): correctness, and per trajectory
    turns, model tokens, invalid tool calls and whether one was repaired (``repaired_call``). What
    ``gtpo compare`` pairs runs by; written to
    ``gtpo.run.metrics.EVAL_FILE`` by the run recorder (``gtpo.run.recorder``)."""
    k = report.k
    rows = [report.trajectories[i * k : (i + 1) * k] for i in range(len(report.per_problem))]
    record: dict[str, Any] = {"step": step, "name": report.name, "k": k, "correct": report.per_problem}
    if report.trajectories:
        record["problems"] = [row[0].problem.id for row in rows]
        record["turns"] = [[t.num_turns for t in row] for row in rows]
        record["tokens"] = [[sum(turn.num_model_tokens for turn in t.turns) for t in row] for row in rows]
        record["invalid_calls"] = [[sum(turn.invalid_call for turn in t.turns) for t in row] for row in rows]
        if any(turn.exec_status is not None for t in report.trajectories for turn in t.turns):
            # Only where calls run code: a game's moves never "run", so repair has no meaning there ("-").
            record["repaired"] = [[int(repaired_call(t)) for t in row] for row in rows]
    return record


def read_eval_records(path: Path) -> list[dict[str, Any]]:
    """The evaluations of one run in step order; a step evaluated twice (a resumed run) keeps its last record."""
    if not Path(path).exists():
        return []
    by_step = {record["step"]: record for record in read_metrics(path)}
    return [by_step[step] for step in sorted(by_step)]


def evaluate_sharded(problems: Sequence[Problem], ctx: DistContext, **kwargs: Any) -> EvalReport:
    """``evaluate_problems`` (``kwargs``) with the problems dealt round-robin across torchrun's ranks and the
    results gathered on every rank (turn records only), in problem order; one process: the plain evaluation."""
    index = shard_indices(len(problems), ctx)
    report = evaluate_problems([problems[i] for i in index], **kwargs)
    if not ctx.enabled:
        return report
    k = report.k
    rows = [
        (row, [strip_tokens(t) for t in report.trajectories[i * k : (i + 1) * k]])
        for i, row in enumerate(report.per_problem)
    ]
    gathered = gather_objects(rows, index, len(problems), ctx)
    return EvalReport(
        name=report.name,
        k=k,
        per_problem=[row for row, _ in gathered],
        trajectories=[t for _, trajs in gathered for t in trajs],
    )
