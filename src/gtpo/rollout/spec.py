"""One episode's rules, built once from the config and handed to every place that rolls out.

Training rollouts, held-out evaluation and the tiny build's measurement run episodes by the same rules, so they
take the same object: a frozen ``EpisodeSpec``. Its defaults are the config's (``RolloutConfig``,
``GenerationConfig``, ``AlgoConfig``): there is no second set of caps to drift from the settings in use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gtpo.config import GenerationConfig, RolloutConfig, TrainConfig

SCHEDULES = ("auto", "deterministic", "asap")
"""When a trajectory whose code ran re-enters generation (streaming samplers only; see ``gtpo.rollout.episode``)."""


@dataclass(frozen=True)
class EpisodeSpec:
    """How one multi-turn episode runs: the prompt, the length caps, sampling, and how long an environment step
    may take. ``schedule``/``rejoin_steps`` matter only to a streaming sampler (the engine). What counts as an
    invalid action is the environment's (``gtpo.envs``)."""

    system_prompt: str
    max_turns: int = RolloutConfig.max_turns
    max_total_tokens: int = RolloutConfig.max_total_tokens
    """Prompt + every turn + every tool output."""
    max_new_tokens_per_turn: int = RolloutConfig.max_new_tokens_per_turn
    temperature: float = RolloutConfig.temperature
    top_p: float = RolloutConfig.top_p
    step_timeout_s: float = RolloutConfig.step_timeout_s
    schedule: str = GenerationConfig.schedule
    rejoin_steps: int = GenerationConfig.rejoin_steps

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule (config generation.schedule) must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.step_timeout_s <= 0:
            raise ValueError(f"step_timeout_s (config rollout.step_timeout_s) must be > 0, got {self.step_timeout_s}")

    def evaluation(self, temperature: float) -> EpisodeSpec:
        """The same episode for held-out evaluation: sampled at ``temperature`` from the full distribution
        (top_p 1)."""
        return dataclasses.replace(self, temperature=temperature, top_p=1.0)


def episode_spec(config: TrainConfig, system_prompt: str) -> EpisodeSpec:
    """The training episode of ``config`` (``.evaluation(config.eval.temperature)`` for held-out runs)."""
    r = config.rollout
    return EpisodeSpec(
        system_prompt=system_prompt,
        max_turns=r.max_turns,
        max_total_tokens=r.max_total_tokens,
        max_new_tokens_per_turn=r.max_new_tokens_per_turn,
        temperature=r.temperature,
        top_p=r.top_p,
        step_timeout_s=r.step_timeout_s,
        schedule=config.generation.schedule,
        rejoin_steps=config.generation.rejoin_steps,
    )
