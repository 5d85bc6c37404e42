"""The environment interface: what the rollout asks of anything a model interacts with over several turns.

Gymnasium's shape over text, as GEM, OpenEnv and TRL's environment factories use it for language models:

- ``reset(seed) -> observation`` or ``(observation, info)``: the first observation becomes the user message of
  the prompt. The same seed must give the same start: the G trajectories of a group share it.
- ``step(action_text) -> (observation, reward, terminated, truncated, info)``: ``action_text`` is the model's
  turn exactly as decoded from its sampled tokens; ``reward`` is that step's reward (GTPO's turn reward is built
  from it); ``terminated`` says the task ended (solved, failed, answered), ``truncated`` that a limit of the
  environment's cut it. Both end the trajectory.

``info`` may carry the keys below; each has a documented default, so an environment that knows nothing of them
still trains. Optional attributes of the environment say how its observations enter the token stream
(``observation_role``), where a model turn ends (``stop_at_code_block``) and whether it offers a tool that the
model should call on its first turn (``uses_tools``); ``close()`` is called when the trajectory is done.

What this is not: no tokens and no model here. How an observation becomes tokens is the rollout's
(``gtpo.rollout.observation``); how rewards become advantages is ``gtpo.method.credit``'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from gtpo.types import Problem

INVALID_ACTION = "invalid_action"
"""info key, bool (default False): the action was invalid (unparseable, illegal, a failed tool call). GTPO adds
its format penalty to such a turn's reward."""
TOOL_CALL = "tool_call"
"""info key, bool (default True): the turn was an attempt to act (a tool call, a move). ``adv/call_sign_agreement``
counts these turns: credit should push valid ones up and invalid ones down."""
SUCCESS = "success"
"""info key, bool: the episode (so far) counts as solved. Read from the trajectory's last step; without it, a
trajectory succeeds when its last step terminated it with a positive reward. Accuracy, group filtering and
shaping read it."""
CODE = "code"
"""info key, str: code the turn ran. GTPO's self-supervised shaping compares a failed trajectory's code with its
group's successes; environments that run no code get no shaping."""
ANSWER = "answer"
"""info key, str: the final answer the turn gave (shown in samples and evaluation files)."""
FINISH = "finish_reason"
"""info key, str: why the episode ended, in the trajectory's own words (e.g. "answer"); otherwise "terminated" or
"truncated" (or "eos"/"length" for inline environments, from how the model's message ended)."""

ObservationRole = Literal["inline", "user", "tool"]
OBSERVATION_ROLES: tuple[str, ...] = ("inline", "user", "tool")


@runtime_checkable
class Environment(Protocol):
    """Text in, text and a reward out. Optional attributes: see ``EnvFormat``; optional ``close()``."""

    def reset(self, seed: int | None = None) -> Any: ...

    def step(self, action: str) -> Any: ...


EnvFactory = Callable[[Problem], Environment]
"""A problem -> a fresh environment for one trajectory (reset with ``problem.seed``)."""


@dataclass(frozen=True)
class EnvFormat:
    """How an environment's episode meets the model's tokens (read from its attributes, with these defaults)."""

    observation_role: ObservationRole = "user"
    """"inline": the observation text continues the model's own message (the TIR protocol: a ```output block
    after the model's ```python block); "user"/"tool": the observation is a new chat message of that role,
    rendered by the model's chat template."""
    stop_at_code_block: bool = False
    """The model's turn ends when it closes a ```python block (a tool call), not only at the end of its message.
    Inline environments need it: their episode goes on only after a turn that stopped at a tool call."""
    uses_tools: bool = False
    """The environment offers a tool: GTPO's no-call penalty applies to a first turn that does not call it."""

    def __post_init__(self) -> None:
        if self.observation_role not in OBSERVATION_ROLES:
            raise ValueError(f"observation_role must be one of {OBSERVATION_ROLES}, got {self.observation_role!r}")
        if self.observation_role == "inline" and not self.stop_at_code_block:
            raise ValueError(
                "observation_role 'inline' needs stop_at_code_block: an inline observation continues a message the "
                "model left open at a tool call"
            )


def env_format(env: Any) -> EnvFormat:
    """The ``EnvFormat`` an environment declares through its attributes."""
    defaults = EnvFormat()
    return EnvFormat(
        observation_role=getattr(env, "observation_role", defaults.observation_role),
        stop_at_code_block=bool(getattr(env, "stop_at_code_block", defaults.stop_at_code_block)),
        uses_tools=bool(getattr(env, "uses_tools", defaults.uses_tools)),
    )


@dataclass
class StepResult:
    """One checked ``step``: what the rollout records on the turn."""

    observation: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any] = field(default_factory=dict)


class EnvContractError(RuntimeError):
    """An environment broke its contract (a wrong return type); the message names the environment and the fix."""


def checked_reset(raw: Any, name: str) -> tuple[str, dict[str, Any]]:
    """``reset``'s return as (observation, info): a string alone, or Gymnasium's (observation, info) pair."""
    if isinstance(raw, str):
        return raw, {}
    if isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[0], str) and isinstance(raw[1], dict):
        return raw[0], raw[1]
    raise EnvContractError(
        f"{name}.reset must return the first observation as a str, or (observation: str, info: dict); got {_shape(raw)}"
    )


def checked_step(raw: Any, name: str) -> StepResult:
    """``step``'s return, checked: (observation: str, reward: a finite number, terminated: bool, truncated: bool,
    info: dict). A wrong shape is the environment's bug, named in one line."""
    if not (isinstance(raw, tuple) and len(raw) == 5):
        raise EnvContractError(
            f"{name}.step must return (observation, reward, terminated, truncated, info); got {_shape(raw)}"
        )
    observation, reward, terminated, truncated, info = raw
    if not isinstance(observation, str):
        raise EnvContractError(f"{name}.step: the observation must be a str, got {type(observation).__name__}")
    try:
        value = float(reward)
    except (TypeError, ValueError):
        raise EnvContractError(f"{name}.step: the reward must be a number, got {reward!r}") from None
    if not math.isfinite(value):
        raise EnvContractError(f"{name}.step: the reward must be finite, got {reward!r}")
    if info is None:
        info = {}
    if not isinstance(info, dict):
        raise EnvContractError(f"{name}.step: info must be a dict, got {type(info).__name__}")
    return StepResult(observation, value, bool(terminated), bool(truncated), info)


def _shape(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    return type(value).__name__
