"""Multi-turn TIR episodes: generate a turn, run its code in the trajectory's sandbox session, append the
output, repeat; then grade. Produces ``Trajectory`` records with exact token bookkeeping.

Bookkeeping without re-tokenization drift: model tokens are kept exactly as sampled, and only the inserted
tool output is tokenized (on its own). So ``input_ids`` is prompt + turn 1 tokens + observation 1 tokens +
turn 2 tokens + ..., and decoding a turn's tokens gives back that turn's text.

Episode rules (documented choices):
- a turn with a closed python block runs it, even if it also has a ``\\boxed{}`` (the answer is not final);
- a turn with a ``\\boxed{}`` and no closed block ends the episode ("answer"); EOS without one ends it ("eos");
- an opened, unclosed block that hits EOS or the token cap is an unparseable (invalid) call, and ends it;
- after the last allowed turn no observation is appended ("max_turns"): nothing would read it;
- the total budget (prompt + turns + observations) ends an episode with "length".
Sandbox sessions are opened at a trajectory's first code call and closed when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from gtpo.generate import Sampler
from gtpo.policy import prompt_ids
from gtpo.tools import (
    DEFAULT_INVALID_STATUSES,
    extract_boxed,
    extract_code,
    format_tool_output,
    is_invalid_call,
)
from gtpo.types import CodeExecutor, Problem, Trajectory, Turn

GradeFn = Callable[[str | None, str], bool]


@dataclass
class RolloutTimings:
    """Wall seconds spent in each stage of one rollout call."""

    generation_s: float = 0.0
    sandbox_s: float = 0.0
    grading_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"generation_s": self.generation_s, "sandbox_s": self.sandbox_s, "grading_s": self.grading_s}


@dataclass
class RolloutResult:
    trajectories: list[Trajectory]
    timings: RolloutTimings = field(default_factory=RolloutTimings)


def rollout(
    problems: Sequence[Problem],
    group_size: int,
    sampler: Sampler,
    tokenizer: Any,
    executor: CodeExecutor,
    *,
    system_prompt: str,
    max_turns: int = 5,
    max_total_tokens: int = 4096,
    max_new_tokens_per_turn: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    invalid_statuses: Collection[str] = DEFAULT_INVALID_STATUSES,
    grade_fn: GradeFn | None = None,
    seed: int | None = None,
) -> RolloutResult:
    """``group_size`` trajectories per problem, contiguous, with ``group_id`` = the problem's index here."""
    if grade_fn is None:
        from gtpo.grading import grade as grade_fn
    timings = RolloutTimings()
    trajectories = []
    for index, problem in enumerate(problems):
        prompt = prompt_ids(tokenizer, system_prompt, problem.question)
        for _ in range(group_size):
            trajectories.append(
                Trajectory(
                    problem=problem,
                    group_id=index,
                    input_ids=list(prompt),
                    loss_mask=[0] * len(prompt),
                    turn_ids=[-1] * len(prompt),
                    sampler_logprobs=[0.0] * len(prompt),
                    prompt_len=len(prompt),
                )
            )
    sessions: dict[int, str] = {}
    active = [i for i, t in enumerate(trajectories) if len(t.input_ids) < max_total_tokens]
    for i in set(range(len(trajectories))) - set(active):
        trajectories[i].finish_reason = "length"
    try:
        for turn_index in range(max_turns):
            if not active:
                break
            caps = [min(max_new_tokens_per_turn, max_total_tokens - len(trajectories[i].input_ids)) for i in active]
            start = time.perf_counter()
            samples = sampler.generate(
                [trajectories[i].input_ids for i in active],
                caps,
                temperature=temperature,
                top_p=top_p,
                seed=None if seed is None else seed + turn_index,
            )
            timings.generation_s += time.perf_counter() - start
            calls: list[tuple[int, str]] = []
            for i, sample in zip(active, samples, strict=True):
                trajectory = trajectories[i]
                text = tokenizer.decode(sample.token_ids, skip_special_tokens=True)
                code, has_call, parse_error = extract_code(text)
                trajectory.input_ids.extend(sample.token_ids)
                # Sampled tokens: trained on (mask 1) and tagged with their turn; observations below get 0 / -1.
                trajectory.loss_mask.extend([1] * len(sample.token_ids))
                trajectory.turn_ids.extend([turn_index] * len(sample.token_ids))
                trajectory.sampler_logprobs.extend(sample.logprobs)
                turn = Turn(
                    text=text,
                    code=code if sample.finish == "stop" else None,
                    has_tool_call=has_call,
                    parse_error=parse_error or (has_call and sample.finish != "stop"),
                    final_answer=extract_boxed(text),
                    num_model_tokens=len(sample.token_ids),
                )
                trajectory.turns.append(turn)
                if sample.finish == "stop":
                    calls.append((i, turn.code or ""))
                    continue
                turn.invalid_call = is_invalid_call(has_call, turn.parse_error, None, invalid_statuses)
                if turn.final_answer is not None:
                    trajectory.finish_reason = "answer"
                elif sample.finish == "eos":
                    trajectory.finish_reason = "eos"
                else:
                    trajectory.finish_reason = "length"
            start = time.perf_counter()
            for i, _ in calls:
                if i not in sessions:
                    sessions[i] = open_session(executor, trajectories[i].problem)
            results = executor.run_batch([(sessions[i], code) for i, code in calls]) if calls else []
            timings.sandbox_s += time.perf_counter() - start
            still_active = []
            for (i, _), result in zip(calls, results, strict=True):
                trajectory = trajectories[i]
                turn = trajectory.turns[-1]
                turn.exec_status = result.status
                turn.tool_output = result.output
                turn.invalid_call = is_invalid_call(True, False, result.status, invalid_statuses)
                if turn_index + 1 == max_turns:
                    trajectory.finish_reason = "max_turns"
                    continue
                observation = tokenizer.encode(format_tool_output(result.output), add_special_tokens=False)
                room = max_total_tokens - len(trajectory.input_ids)
                observation = observation[:room]
                trajectory.input_ids.extend(observation)
                trajectory.loss_mask.extend([0] * len(observation))  # tool output: never trained on
                trajectory.turn_ids.extend([-1] * len(observation))
                trajectory.sampler_logprobs.extend([0.0] * len(observation))
                if len(trajectory.input_ids) >= max_total_tokens:
                    trajectory.finish_reason = "length"
                else:
                    still_active.append(i)
            active = still_active
    finally:
        for session in sessions.values():
            executor.close_session(session)

    start = time.perf_counter()
    for trajectory in trajectories:
        last = trajectory.turns[-1] if trajectory.turns else None
        trajectory.final_answer = last.final_answer if last is not None else None
        trajectory.correct = trajectory.final_answer is not None and bool(
            grade_fn(trajectory.final_answer, trajectory.problem.answer)
        )
    timings.grading_s += time.perf_counter() - start
    return RolloutResult(trajectories, timings)


def open_session(executor: CodeExecutor, problem: Problem) -> str:
    """Open a trajectory's sandbox session and run the problem's hidden setup code in it.

    The setup (``Problem.setup_code``: a task's table or function that the question refers to) runs before the
    model's first cell; its output is never shown to the model nor appended to the tokens. A failing setup is
    the task's bug, not the model's, so it raises (RuntimeError naming the problem) after closing the session.
    """
    session = executor.open_session()
    if problem.setup_code:
        result = executor.run_batch([(session, problem.setup_code)])[0]
        if result.status != "ok":
            executor.close_session(session)
            raise RuntimeError(
                f"setup code of problem {problem.id!r} failed in the sandbox ({result.status}): "
                f"{result.output.strip()[-500:]}"
            )
    return session


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
    return metrics
