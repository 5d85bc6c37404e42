"""Multi-turn TIR episodes: generate a turn, run its code in the trajectory's sandbox session, append the
output, repeat; then grade. Produces ``Trajectory`` records with exact token bookkeeping.

Bookkeeping without re-tokenization drift: model tokens are kept exactly as sampled, and only the inserted
tool output is tokenized (on its own, as plain text: control-token text a program prints stays text). So
``input_ids`` is prompt + turn 1 tokens + observation 1 tokens + turn 2 tokens + ..., and decoding a turn's
tokens gives back that turn's text.

Episode rules (documented choices):
- a turn with a closed python block runs it, even if it also has a ``\\boxed{}`` (the answer is not final);
- a turn with a ``\\boxed{}`` and no closed block ends the episode ("answer"); EOS without one ends it ("eos");
- an opened, unclosed block that hits EOS or the token cap is an unparseable (invalid) call, and ends it;
- after the last allowed turn no observation is appended ("max_turns"): nothing would read it;
- the total budget (prompt + turns + observations) ends an episode with "length".
Sandbox sessions are opened at a trajectory's first code call (with its problem's setup code) and closed when
the rollout returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from gtpo.generation.protocol import Sample, Sampler, StreamingSampler
from gtpo.model.policy import prompt_ids
from gtpo.rollout.spec import EpisodeSpec
from gtpo.tools import (
    extract_boxed,
    extract_code,
    format_tool_output,
    is_invalid_call,
)
from gtpo.types import CodeExecutor, ExecResult, Problem, Trajectory, Turn

GradeFn = Callable[[str | None, str], bool]


@dataclass
class RolloutTimings:
    """Wall seconds of one rollout call. ``sandbox_s`` is the time the generator sat idle waiting for
    code to finish (with a streaming sampler most code runs while other trajectories decode)."""

    generation_s: float = 0.0
    sandbox_s: float = 0.0
    grading_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"generation_s": self.generation_s, "sandbox_s": self.sandbox_s, "grading_s": self.grading_s}


@dataclass
class RolloutResult:
    trajectories: list[Trajectory]
    timings: RolloutTimings = field(default_factory=RolloutTimings)


@dataclass
class _Episode:
    """What both drivers share: the limits of an episode and how a turn and a tool result change it."""

    tokenizer: Any
    max_turns: int
    max_total_tokens: int
    max_new_tokens_per_turn: int
    invalid_statuses: Collection[str]

    def cap(self, trajectory: Trajectory) -> int:
        return min(self.max_new_tokens_per_turn, self.max_total_tokens - len(trajectory.input_ids))

    def add_turn(self, trajectory: Trajectory, sample: Sample) -> str | None:
        """Append a sampled turn; return its code if it must run (closed block), else end the episode."""
        text = self.tokenizer.decode(sample.token_ids, skip_special_tokens=True)
        code, has_call, parse_error = extract_code(text)
        trajectory.input_ids.extend(sample.token_ids)
        # Sampled tokens: trained on (mask 1) and tagged with their turn; observations get 0 / -1 (add_result).
        trajectory.loss_mask.extend([1] * len(sample.token_ids))
        trajectory.turn_ids.extend([len(trajectory.turns)] * len(sample.token_ids))
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
            return turn.code or ""
        turn.invalid_call = is_invalid_call(has_call, turn.parse_error, None, self.invalid_statuses)
        if turn.final_answer is not None:
            trajectory.finish_reason = "answer"
        elif sample.finish == "eos":
            trajectory.finish_reason = "eos"
        else:
            trajectory.finish_reason = "length"
        return None

    def add_result(self, trajectory: Trajectory, result: ExecResult) -> bool:
        """Record the tool result of the last turn and append its observation; True if the episode goes on."""
        turn = trajectory.turns[-1]
        turn.exec_status = result.status
        turn.tool_output = result.output
        turn.invalid_call = is_invalid_call(True, False, result.status, self.invalid_statuses)
        if len(trajectory.turns) == self.max_turns:
            trajectory.finish_reason = "max_turns"
            return False
        # The output is text a program printed: "<|im_end|>" in it is those ten characters, not the chat's
        # end-of-message token (nor may a printed "<|im_start|>assistant" open a turn), hence split_special_tokens.
        observation = self.tokenizer.encode(
            format_tool_output(result.output), add_special_tokens=False, split_special_tokens=True
        )
        observation = observation[: self.max_total_tokens - len(trajectory.input_ids)]
        trajectory.input_ids.extend(observation)
        trajectory.loss_mask.extend([0] * len(observation))  # tool output: never trained on
        trajectory.turn_ids.extend([-1] * len(observation))
        trajectory.sampler_logprobs.extend([0.0] * len(observation))
        if len(trajectory.input_ids) >= self.max_total_tokens:
            trajectory.finish_reason = "length"
            return False
        return True


def rollout(
    problems: Sequence[Problem],
    group_size: int,
    sampler: Sampler,
    tokenizer: Any,
    executor: CodeExecutor,
    spec: EpisodeSpec,
    *,
    seed: int | None = None,
    group_ids: Sequence[int] | None = None,
    grade_fn: GradeFn | None = None,
) -> RolloutResult:
    """``group_size`` trajectories per problem, contiguous, run by the rules of ``spec``; each carries its
    problem's entry of ``group_ids`` (default: the problem's index here) as ``group_id``.

    A streaming sampler (``gtpo.generation.engine.EngineSampler``) moves every trajectory on its own: a turn that ends
    with code goes to the sandbox while the others keep decoding, and its next turn re-enters the engine
    after the tool output is appended. ``spec.schedule`` says when it re-enters: "asap" as soon as the output is
    back (fastest; which tokens run together then depends on timing), "deterministic" exactly
    ``spec.rejoin_steps`` engine steps after the code was sent (waiting for the result if it is late), so that a
    seed reproduces a run; "auto" is deterministic on CPU and asap on GPU (GPU numerics depend on batch
    shapes anyway). Any other sampler runs turn by turn: all active trajectories generate, then all their
    code runs, then the next turn.
    """
    if grade_fn is None:
        from gtpo.data.grading import grade as grade_fn
    if group_ids is not None and len(group_ids) != len(problems):
        raise ValueError(f"group_ids: {len(group_ids)} ids for {len(problems)} problems")
    episode = _Episode(
        tokenizer, spec.max_turns, spec.max_total_tokens, spec.max_new_tokens_per_turn, spec.invalid_statuses
    )
    trajectories = []
    for index, problem in enumerate(problems):
        prompt = prompt_ids(tokenizer, spec.system_prompt, problem.question)
        for _ in range(group_size):
            trajectories.append(
                Trajectory(
                    problem=problem,
                    group_id=index if group_ids is None else group_ids[index],
                    input_ids=list(prompt),
                    loss_mask=[0] * len(prompt),
                    turn_ids=[-1] * len(prompt),
                    sampler_logprobs=[0.0] * len(prompt),
                    prompt_len=len(prompt),
                )
            )
    active = [i for i, t in enumerate(trajectories) if len(t.input_ids) < spec.max_total_tokens]
    for i in set(range(len(trajectories))) - set(active):
        trajectories[i].finish_reason = "length"
    timings = RolloutTimings()
    sessions: dict[int, str] = {}
    try:
        if isinstance(sampler, StreamingSampler):
            stream = sampler.turn_stream()
            schedule = spec.schedule
            if schedule == "auto":
                schedule = "asap" if stream.device.type == "cuda" else "deterministic"
            _run_streaming(
                trajectories, active, episode, stream, executor, sessions, timings,
                temperature=spec.temperature, top_p=spec.top_p, seed=seed or 0, schedule=schedule,
                rejoin_steps=spec.rejoin_steps,
            )  # fmt: skip
        else:
            _run_turn_by_turn(
                trajectories, active, episode, sampler, executor, sessions, timings,
                temperature=spec.temperature, top_p=spec.top_p, seed=seed,
            )  # fmt: skip
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


def open_sessions(executor: CodeExecutor, problems: Sequence[Problem]) -> list[str]:
    """Open one sandbox session per problem and run each problem's hidden setup code in it, all in one batch.

    The setup (``Problem.setup_code``: a task's table or function that the question refers to) runs before the
    model's first cell; its output is never shown to the model nor appended to the tokens. A failing setup is
    the task's bug, not the model's, so it raises (RuntimeError naming the problem) after closing the sessions.
    """
    sessions = [executor.open_session() for _ in problems]
    setups = [(s, p) for s, p in zip(sessions, problems, strict=True) if p.setup_code]
    results = executor.run_batch([(s, p.setup_code) for s, p in setups]) if setups else []
    for (_, problem), result in zip(setups, results, strict=True):
        if result.status != "ok":
            for session in sessions:
                executor.close_session(session)
            raise RuntimeError(
                f"setup code of problem {problem.id!r} failed in the sandbox ({result.status}): "
                f"{result.output.strip()[-500:]}"
            )
    return sessions


def _sessions(executor: CodeExecutor, sessions: dict[int, str], trajectories: list[Trajectory], indices) -> list[str]:
    """The trajectories' sandbox sessions, each opened (and set up) at its first code call."""
    new = [i for i in indices if i not in sessions]
    if new:
        sessions.update(zip(new, open_sessions(executor, [trajectories[i].problem for i in new]), strict=True))
    return [sessions[i] for i in indices]


def _run_turn_by_turn(
    trajectories: list[Trajectory],
    active: list[int],
    episode: _Episode,
    sampler: Sampler,
    executor: CodeExecutor,
    sessions: dict[int, str],
    timings: RolloutTimings,
    *,
    temperature: float,
    top_p: float,
    seed: int | None,
) -> None:
    """Batch samplers: each turn, every active trajectory generates, then all their code runs at once."""
    for turn_index in range(episode.max_turns):
        if not active:
            break
        start = time.perf_counter()
        samples = sampler.generate(
            [trajectories[i].input_ids for i in active],
            [episode.cap(trajectories[i]) for i in active],
            temperature=temperature,
            top_p=top_p,
            seed=None if seed is None else seed + turn_index,
        )
        timings.generation_s += time.perf_counter() - start
        calls = []
        for i, sample in zip(active, samples, strict=True):
            code = episode.add_turn(trajectories[i], sample)
            if code is not None:
                calls.append((i, code))
        start = time.perf_counter()
        opened = _sessions(executor, sessions, trajectories, [i for i, _ in calls])
        session_calls = [(session, code) for session, (_, code) in zip(opened, calls, strict=True)]
        results = executor.run_batch(session_calls) if calls else []
        timings.sandbox_s += time.perf_counter() - start
        active = [i for (i, _), r in zip(calls, results, strict=True) if episode.add_result(trajectories[i], r)]


def _run_streaming(
    trajectories: list[Trajectory],
    active: list[int],
    episode: _Episode,
    engine: Any,
    executor: CodeExecutor,
    sessions: dict[int, str],
    timings: RolloutTimings,
    *,
    temperature: float,
    top_p: float,
    seed: int,
    schedule: str,
    rejoin_steps: int,
) -> None:
    """The engine generates; code runs on worker threads; a trajectory re-enters when its output is in.

    The engine's clock counts its steps (prefill calls and decode steps), so "deterministic" re-entry is a
    function of the sampled tokens only. Trajectory ``i`` is engine key ``i``: with the seed, its random
    numbers depend on nothing else.
    """

    def submit(i: int) -> None:
        trajectory = trajectories[i]
        engine.submit(i, trajectory.input_ids, episode.cap(trajectory), temperature=temperature, top_p=top_p, seed=seed)

    def run_cell(i: int, code: str) -> list[ExecResult]:  # on a worker thread: a first call sets up too
        (session,) = _sessions(executor, sessions, trajectories, [i])
        return executor.run_batch([(session, code)])

    pending: dict[int, tuple[Future, int]] = {}  # trajectory -> (its code's result, re-entry time)
    for i in active:
        submit(i)
    with ThreadPoolExecutor(max_workers=32, thread_name_prefix="gtpo-cell") as cells:
        try:
            while engine.has_work() or pending:
                if engine.has_work():
                    start = time.perf_counter()
                    ended = engine.step()
                    timings.generation_s += time.perf_counter() - start
                    for i, sample in ended:
                        code = episode.add_turn(trajectories[i], sample)
                        if code is None:
                            engine.release(i)
                            continue
                        pending[i] = (cells.submit(run_cell, i, code), engine.clock + rejoin_steps)
                if schedule == "asap":
                    ready = [i for i, (future, _) in pending.items() if future.done()]
                else:
                    ready = [i for i, (_, due) in pending.items() if due <= engine.clock]
                if not ready and pending and not engine.has_work():  # the generator idles: wait for code
                    start = time.perf_counter()
                    if schedule == "asap":
                        wait([future for future, _ in pending.values()], return_when=FIRST_COMPLETED)
                        ready = [i for i, (future, _) in pending.items() if future.done()]
                    else:
                        first = min(due for _, due in pending.values())
                        ready = [i for i, (_, due) in pending.items() if due == first]
                    timings.sandbox_s += time.perf_counter() - start
                for i in sorted(ready):
                    future, _ = pending.pop(i)
                    start = time.perf_counter()
                    (result,) = future.result()
                    timings.sandbox_s += time.perf_counter() - start
                    if episode.add_result(trajectories[i], result):
                        submit(i)
                    else:
                        engine.release(i)
        finally:
            for future, _ in pending.values():
                future.cancel()
            engine.reset()


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
