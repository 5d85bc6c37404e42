"""What a batch of trajectories looks like, in numbers: the ``rollout/...`` and ``reward/accuracy`` metrics."""

from __future__ import annotations

from collections.abc import Sequence

from gtpo.types import Trajectory


def is_void_trajectory(trajectory: Trajectory) -> bool:
    """SimpleTIR's void turn: a turn with neither a complete code block nor a final answer."""
    return any(turn.code is None and turn.final_answer is None for turn in trajectory.turns)


def rollout_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Batch statistics with namespaced keys (accuracy, turns, tool use, failures, lengths, groups)."""
    if not trajectories:
        return {}
    n = len(trajectories)
    turns = [turn for t in trajectories for turn in t.turns]
    calls = [turn for turn in turns if turn.has_tool_call]
    groups: dict[int, set[bool]] = {}
    for t in trajectories:
        groups.setdefault(t.group_id, set()).add(t.correct)
    metrics = {
        "reward/accuracy": sum(t.correct for t in trajectories) / n,
        "rollout/turns_mean": len(turns) / n,
        "rollout/tool_call_rate": len(calls) / max(len(turns), 1),
        "rollout/invalid_call_rate": sum(turn.invalid_call for turn in turns) / max(len(turns), 1),
        "rollout/timeout_rate": sum(turn.exec_status == "timeout" for turn in calls) / max(len(calls), 1),
        "rollout/length_mean": sum(turn.num_model_tokens for turn in turns) / n,
        "rollout/void_rate": sum(is_void_trajectory(t) for t in trajectories) / n,
        "rollout/zero_variance_group_frac": sum(len(v) == 1 for v in groups.values()) / len(groups),
    }
    for reason in ("answer", "max_turns", "length", "eos"):
        metrics[f"rollout/finish_{reason}"] = sum(t.finish_reason == reason for t in trajectories) / n
    for reason in ("terminated", "truncated", "env_error", "env_timeout"):  # only where they occur
        count = sum(t.finish_reason == reason for t in trajectories)
        if count:
            metrics[f"rollout/finish_{reason}"] = count / n
    return metrics
