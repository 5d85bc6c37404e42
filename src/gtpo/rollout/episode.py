"""Multi-turn episodes against environments: generate a turn, step the trajectory's environment with it, append
the observation, repeat. Produces ``Trajectory`` records with exact token bookkeeping.

The rollout knows the environment interface (``gtpo.envs.base``), not any task: the math TIR episode is one
environment (``gtpo.envs.python_tool``), a game or a user's class another. Each trajectory gets its own
environment, reset with its problem's seed (the G trajectories of a group start alike).

Bookkeeping without re-tokenization drift: model tokens are kept exactly as sampled, and only the observation is
tokenized (``gtpo.rollout.observation``: inline text, or a chat message rendered by the model's template). So
``input_ids`` is prompt + turn 1 tokens + observation 1 tokens + turn 2 tokens + ..., decoding a turn's tokens
gives back that turn's text, and the tokens the trainer scores are those the sampler saw.

Episode rules (documented choices):
- the environment ends an episode by ``terminated`` or ``truncated``;
- an environment with inline observations continues only a turn that stopped at a tool call (a closed python
  block): a message the model ends itself (EOS) or that hits the per-turn cap ends the episode ("eos", "length");
- after the last allowed turn (``max_turns``) no observation is appended ("max_turns"): nothing would read it;
- the total budget (prompt + turns + observations) ends an episode with "length";
- an environment that raises, returns a malformed step, or takes longer than ``step_timeout_s`` ends that
  trajectory ("env_error" / "env_timeout", the reason in ``Trajectory.error``); the others go on.
Environment calls (reset, step) run off the decoding thread, each with a deadline (``gtpo.rollout.steps``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from gtpo.envs.base import (
    ANSWER,
    CODE,
    FINISH,
    INVALID_ACTION,
    SUCCESS,
    TOOL_CALL,
    EnvFactory,
    EnvFormat,
    StepResult,
    checked_reset,
    checked_step,
    env_format,
)
from gtpo.generation.protocol import Sample, Sampler, StreamingSampler
from gtpo.model.policy import prompt_ids
from gtpo.rollout.observation import ObservationTokens
from gtpo.rollout.spec import EpisodeSpec
from gtpo.rollout.steps import EnvCalls, Failure, Outcome
from gtpo.types import Problem, Trajectory, Turn


@dataclass
class RolloutTimings:
    """Wall seconds of one rollout call. ``env_s`` is the time the generator sat idle waiting for environment
    steps (with a streaming sampler most steps run while other trajectories decode)."""

    generation_s: float = 0.0
    env_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"generation_s": self.generation_s, "env_s": self.env_s}


@dataclass
class RolloutResult:
    trajectories: list[Trajectory]
    timings: RolloutTimings = field(default_factory=RolloutTimings)


@dataclass
class _Episodes:
    """What both drivers share: the limits of an episode and how a turn and an environment step change it."""

    tokenizer: Any
    max_turns: int
    max_total_tokens: int
    max_new_tokens_per_turn: int
    formats: list[EnvFormat]
    on_end: Callable[[], None] | None = None
    """Called once as each trajectory ends (a progress line)."""
    observations: dict[str, ObservationTokens] = field(default_factory=dict)

    def cap(self, trajectory: Trajectory) -> int:
        return min(self.max_new_tokens_per_turn, self.max_total_tokens - len(trajectory.input_ids))

    def add_turn(self, trajectory: Trajectory, sample: Sample) -> str:
        """Append a sampled turn; return its text (the action the environment steps with)."""
        text = self.tokenizer.decode(sample.token_ids, skip_special_tokens=True)
        trajectory.input_ids.extend(sample.token_ids)
        # Sampled tokens: trained on (mask 1) and tagged with their turn; observations get 0 / -1 (add_step).
        trajectory.loss_mask.extend([1] * len(sample.token_ids))
        trajectory.turn_ids.extend([len(trajectory.turns)] * len(sample.token_ids))
        trajectory.sampler_logprobs.extend(sample.logprobs)
        trajectory.turns.append(Turn(text=text, num_model_tokens=len(sample.token_ids)))
        return text

    def add_step(self, i: int, trajectory: Trajectory, outcome: Outcome, sample: Sample) -> bool:
        """Record the environment's step on the last turn and append its observation; True if the episode goes
        on."""
        going = self._add_step(i, trajectory, outcome, sample)
        if not going and self.on_end is not None:
            self.on_end()
        return going

    def _add_step(self, i: int, trajectory: Trajectory, outcome: Outcome, sample: Sample) -> bool:
        if isinstance(outcome, Failure):
            _fail(trajectory, outcome)
            return False
        turn, info, form = trajectory.turns[-1], outcome.info, self.formats[i]
        turn.reward = outcome.reward
        turn.observation = outcome.observation
        turn.has_tool_call = bool(info.get(TOOL_CALL, True))
        turn.invalid_call = bool(info.get(INVALID_ACTION, False))
        turn.code = info.get(CODE)
        turn.final_answer = info.get(ANSWER)
        turn.exec_status = info.get("exec_status")
        turn.tool_output = info.get("tool_output")
        turn.parse_error = bool(info.get("parse_error", False))
        trajectory.correct = bool(info[SUCCESS]) if SUCCESS in info else outcome.terminated and outcome.reward > 0
        inline_end = form.observation_role == "inline" and sample.finish != "stop"
        if outcome.terminated or outcome.truncated or inline_end:
            if FINISH in info:
                trajectory.finish_reason = info[FINISH]
            elif inline_end:  # the model's message ended: at EOS, or cut at the turn's token cap
                trajectory.finish_reason = "length" if sample.finish == "length" else "eos"
            else:
                trajectory.finish_reason = "terminated" if outcome.terminated else "truncated"
            return False
        if len(trajectory.turns) == self.max_turns:
            trajectory.finish_reason = "max_turns"
            return False
        render = self.observations.get(form.observation_role)
        if render is None:
            render = self.observations[form.observation_role] = ObservationTokens(self.tokenizer, form.observation_role)
        last = sample.token_ids[-1] if sample.token_ids else None
        observation = render(outcome.observation, last)[: self.max_total_tokens - len(trajectory.input_ids)]
        trajectory.input_ids.extend(observation)
        trajectory.loss_mask.extend([0] * len(observation))  # environment output: never trained on
        trajectory.turn_ids.extend([-1] * len(observation))
        trajectory.sampler_logprobs.extend([0.0] * len(observation))
        if len(trajectory.input_ids) >= self.max_total_tokens:
            trajectory.finish_reason = "length"
            return False
        return True


def _fail(trajectory: Trajectory, failure: Failure) -> None:
    trajectory.finish_reason = failure.reason  # type: ignore[assignment]
    trajectory.error = failure.message
    trajectory.correct = False


def rollout(
    problems: Sequence[Problem],
    group_size: int,
    sampler: Sampler,
    tokenizer: Any,
    make_env: EnvFactory,
    spec: EpisodeSpec,
    *,
    seed: int | None = None,
    group_ids: Sequence[int] | None = None,
    on_trajectory_end: Callable[[], None] | None = None,
) -> RolloutResult:
    """``group_size`` trajectories per problem, contiguous, each with its own environment from ``make_env``, run
    by the rules of ``spec``; each carries its problem's entry of ``group_ids`` (default: the problem's index
    here) as ``group_id``.

    A streaming sampler (``gtpo.generation.engine.EngineSampler``) moves every trajectory on its own: a turn goes
    to its environment while the others keep decoding, and the next turn re-enters the engine after the
    observation is appended. ``spec.schedule`` says when it re-enters: "asap" as soon as the step is back
    (fastest; which tokens run together then depends on timing), "deterministic" exactly ``spec.rejoin_steps``
    engine steps after the turn ended (waiting for the step if it is late), so that a seed reproduces a run;
    "auto" is deterministic on CPU and asap on GPU (GPU numerics depend on batch shapes anyway). Any other sampler
    runs turn by turn: all active trajectories generate, then all their environments step, then the next turn.
    ``on_trajectory_end()`` is called as each trajectory ends (for a progress line; not for those that end
    before their first turn).
    """
    if group_ids is not None and len(group_ids) != len(problems):
        raise ValueError(f"group_ids: {len(group_ids)} ids for {len(problems)} problems")
    trajectories = [
        Trajectory(problem=problem, group_id=index if group_ids is None else group_ids[index])
        for index, problem in enumerate(problems)
        for _ in range(group_size)
    ]
    timings = RolloutTimings()
    envs: list[Any] = [None] * len(trajectories)
    steps = EnvCalls(spec.step_timeout_s)
    try:
        start = time.perf_counter()
        formats = _start(trajectories, envs, make_env, steps, tokenizer, spec)
        timings.env_s += time.perf_counter() - start
        episodes = _Episodes(
            tokenizer, spec.max_turns, spec.max_total_tokens, spec.max_new_tokens_per_turn, formats, on_trajectory_end
        )
        active = [i for i, t in enumerate(trajectories) if t.error is None and len(t.input_ids) < spec.max_total_tokens]
        for t in trajectories:
            if t.error is None and len(t.input_ids) >= spec.max_total_tokens:
                t.finish_reason = "length"  # the prompt alone fills the budget
        stop_at_code = {formats[i].stop_at_code_block for i in active}
        if len(stop_at_code) > 1:
            raise ValueError("one rollout's environments must agree on stop_at_code_block (where a turn ends)")
        common = {
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "stop_at_code_block": stop_at_code.pop() if stop_at_code else True,
        }
        if isinstance(sampler, StreamingSampler):
            stream = sampler.turn_stream()
            schedule = spec.schedule
            if schedule == "auto":
                schedule = "asap" if stream.device.type == "cuda" else "deterministic"
            _run_streaming(
                trajectories, active, envs, episodes, stream, steps, timings, common,
                seed=seed or 0, schedule=schedule, rejoin_steps=spec.rejoin_steps,
            )  # fmt: skip
        else:
            _run_turn_by_turn(trajectories, active, envs, episodes, sampler, steps, timings, common, seed=seed)
    finally:
        for env in envs:
            if env is not None and hasattr(env, "close"):
                with contextlib.suppress(Exception):  # a failing close must not hide the rollout's result
                    env.close()
    for trajectory in trajectories:
        trajectory.final_answer = trajectory.turns[-1].final_answer if trajectory.turns else None
    return RolloutResult(trajectories, timings)


def _start(
    trajectories: list[Trajectory],
    envs: list[Any],
    make_env: EnvFactory,
    steps: EnvCalls,
    tokenizer: Any,
    spec: EpisodeSpec,
) -> list[EnvFormat]:
    """Make and reset every trajectory's environment (concurrently) and write its prompt: the system prompt and
    the first observation as the user's message."""

    def reset(i: int) -> tuple[str, dict]:
        env = envs[i] = make_env(trajectories[i].problem)
        name = type(env).__name__
        return checked_reset(env.reset(seed=trajectories[i].problem.seed), name)

    calls = [steps.submit(reset, i) for i in range(len(trajectories))]
    formats = []
    for i, (trajectory, call) in enumerate(zip(trajectories, calls, strict=True)):
        outcome = steps.outcome(call, f"the environment of problem {trajectory.problem.id!r}: reset")
        observation = "" if isinstance(outcome, Failure) else outcome[0]
        trajectory.opening = observation
        prompt = prompt_ids(tokenizer, spec.system_prompt, observation)
        trajectory.input_ids = list(prompt)
        trajectory.loss_mask = [0] * len(prompt)
        trajectory.turn_ids = [-1] * len(prompt)
        trajectory.sampler_logprobs = [0.0] * len(prompt)
        trajectory.prompt_len = len(prompt)
        form = env_format(envs[i]) if envs[i] is not None else EnvFormat()
        trajectory.uses_tools = form.uses_tools
        formats.append(form)
        if isinstance(outcome, Failure):
            _fail(trajectory, outcome)
    return formats


def _step(env: Any, action: str) -> StepResult:
    return checked_step(env.step(action), type(env).__name__)


def _run_turn_by_turn(
    trajectories: list[Trajectory],
    active: list[int],
    envs: list[Any],
    episodes: _Episodes,
    sampler: Sampler,
    steps: EnvCalls,
    timings: RolloutTimings,
    common: dict[str, Any],
    *,
    seed: int | None,
) -> None:
    """Batch samplers: each turn, every active trajectory generates, then all their environments step at once."""
    for turn_index in range(episodes.max_turns):
        if not active:
            break
        start = time.perf_counter()
        samples = sampler.generate(
            [trajectories[i].input_ids for i in active],
            [episodes.cap(trajectories[i]) for i in active],
            seed=None if seed is None else seed + turn_index,
            **common,
        )
        timings.generation_s += time.perf_counter() - start
        start = time.perf_counter()
        calls = [
            steps.submit(_step, envs[i], episodes.add_turn(trajectories[i], sample))
            for i, sample in zip(active, samples, strict=True)
        ]
        going = []
        for i, sample, call in zip(active, samples, calls, strict=True):
            outcome = steps.outcome(call, _what(trajectories[i]))
            if episodes.add_step(i, trajectories[i], outcome, sample):
                going.append(i)
        timings.env_s += time.perf_counter() - start
        active = going


def _what(trajectory: Trajectory) -> str:
    return f"the environment of problem {trajectory.problem.id!r}: step {trajectory.num_turns}"


def _run_streaming(
    trajectories: list[Trajectory],
    active: list[int],
    envs: list[Any],
    episodes: _Episodes,
    engine: Any,
    steps: EnvCalls,
    timings: RolloutTimings,
    common: dict[str, Any],
    *,
    seed: int,
    schedule: str,
    rejoin_steps: int,
) -> None:
    """The engine generates; environments step on worker threads; a trajectory re-enters when its observation is
    in.

    The engine's clock counts its steps (prefill calls and decode steps), so "deterministic" re-entry is a
    function of the sampled tokens only. Trajectory ``i`` is engine key ``i``: with the seed, its random
    numbers depend on nothing else. A turn that ends an inline episode (the model ended its message) releases
    its engine slot at once; its step's reward is collected at the end.
    """

    def submit(i: int) -> None:
        trajectory = trajectories[i]
        engine.submit(i, trajectory.input_ids, episodes.cap(trajectory), seed=seed, **common)

    pending: dict[int, tuple[tuple[Future, float], int, Sample]] = {}  # trajectory -> (step, re-entry, turn)
    closing: dict[int, tuple[tuple[Future, float], Sample]] = {}  # the last step of an inline episode
    for i in active:
        submit(i)
    try:
        while engine.has_work() or pending:
            if engine.has_work():
                start = time.perf_counter()
                ended = engine.step()
                timings.generation_s += time.perf_counter() - start
                for i, sample in ended:
                    call = steps.submit(_step, envs[i], episodes.add_turn(trajectories[i], sample))
                    if episodes.formats[i].observation_role == "inline" and sample.finish != "stop":
                        engine.release(i)
                        closing[i] = (call, sample)
                    else:
                        pending[i] = (call, engine.clock + rejoin_steps, sample)
            if schedule == "asap":
                ready = [i for i, (call, _, _) in pending.items() if call[0].done()]
            else:
                ready = [i for i, (_, due, _) in pending.items() if due <= engine.clock]
            if not ready and pending and not engine.has_work():  # the generator idles: wait for a step
                start = time.perf_counter()
                if schedule == "asap":
                    soonest = min(deadline for (_, deadline), _, _ in pending.values())
                    futures = [future for (future, _), _, _ in pending.values()]
                    wait(futures, timeout=max(soonest - time.monotonic(), 0.0), return_when=FIRST_COMPLETED)
                    ready = [i for i, (call, _, _) in pending.items() if call[0].done()]
                    ready = ready or [i for i, ((_, deadline), _, _) in pending.items() if deadline == soonest]
                else:
                    first = min(due for _, due, _ in pending.values())
                    ready = [i for i, (_, due, _) in pending.items() if due == first]
                timings.env_s += time.perf_counter() - start
            for i in sorted(ready):
                call, _, sample = pending.pop(i)
                start = time.perf_counter()
                outcome = steps.outcome(call, _what(trajectories[i]))
                timings.env_s += time.perf_counter() - start
                if episodes.add_step(i, trajectories[i], outcome, sample):
                    submit(i)
                else:
                    engine.release(i)
        start = time.perf_counter()
        for i, (call, sample) in sorted(closing.items()):
            episodes.add_step(i, trajectories[i], steps.outcome(call, _what(trajectories[i])), sample)
        timings.env_s += time.perf_counter() - start
    finally:
        for call, _, _ in pending.values():
            call[0].cancel()
        engine.reset()
