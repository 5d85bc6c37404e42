"""Checks of values a type cannot express, each naming the field and the fix."""

from __future__ import annotations

from typing import Any

from gtpo.config.files import ConfigError
from gtpo.config.sections import TrainConfig


def validate(config: TrainConfig) -> TrainConfig:
    """Check values a type cannot express; raise ConfigError naming the field and the fix."""
    checks = [
        (config.steps >= 1, "steps", "must be >= 1"),
        (config.dist_timeout_s > 0, "dist_timeout_s", "must be > 0 seconds"),
        (config.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1 (the newest is what --resume continues)"),
        (config.rollout.group_size >= 2, "rollout.group_size", "must be >= 2 (advantages are relative)"),
        (config.rollout.problems_per_step >= 1, "rollout.problems_per_step", "must be >= 1"),
        (config.rollout.max_turns >= 1, "rollout.max_turns", "must be >= 1"),
        (config.rollout.max_new_tokens_per_turn >= 1, "rollout.max_new_tokens_per_turn", "must be >= 1"),
        (config.rollout.temperature > 0, "rollout.temperature", "must be > 0 for training"),
        (0 < config.rollout.top_p <= 1, "rollout.top_p", "must be in (0, 1]"),
        (config.eval.samples >= 1, "eval.samples", "must be >= 1"),
        (config.generation.engine_slots >= 0, "generation.engine_slots", "must be >= 0 (0 = the whole batch)"),
        (config.generation.engine_chunk >= 0, "generation.engine_chunk", "must be >= 0 (0 = automatic)"),
        (config.generation.rejoin_steps >= 1, "generation.rejoin_steps", "must be >= 1"),
        (0 < config.algo.gamma <= 1, "algo.gamma", "must be in (0, 1]"),
        (0 <= config.algo.traj_adv_weight <= 1, "algo.traj_adv_weight", "must be in [0, 1] (0 = turn credit only)"),
        (
            config.algo.traj_adv_weight == 0 or config.algo.algo == "gtpo",
            "algo.traj_adv_weight",
            "mixes GTPO's turn credit; set it to 0 with algo.algo grpo",
        ),
        (config.algo.format_penalty >= 0, "algo.format_penalty", "must be >= 0 (it is subtracted)"),
        (config.algo.no_call_penalty >= 0, "algo.no_call_penalty", "must be >= 0 (it is subtracted)"),
        (0 <= config.algo.shaping_alpha < 1, "algo.shaping_alpha", "must be in [0, 1) so shaping < success"),
        (0 <= config.algo.clip_low < 1, "algo.clip_low", "must be in [0, 1)"),
        (config.algo.clip_high >= 0, "algo.clip_high", "must be >= 0"),
        (config.algo.dual_clip is None or config.algo.dual_clip > 1, "algo.dual_clip", "must be > 1 or None"),
        (config.algo.kl_coef >= 0, "algo.kl_coef", "must be >= 0"),
        (config.algo.is_cap >= 1, "algo.is_cap", "must be >= 1 (weights of agreeing tokens stay 1)"),
        (config.filter.max_extra_problems >= 0, "filter.max_extra_problems", "must be >= 0"),
        (0 <= config.overlong.buffer <= 1, "overlong.buffer", "must be in [0, 1]"),
        (config.overlong.penalty >= 0, "overlong.penalty", "must be >= 0 (it is subtracted)"),
        (config.optim.lr > 0, "optim.lr", "must be > 0"),
        (config.optim.micro_batch_tokens >= 0, "optim.micro_batch_tokens", "must be >= 1 (e.g. 8192), or 0 to measure"),
        (config.optim.activation_gb > 0, "optim.activation_gb", "must be > 0 (GiB, e.g. 2)"),
        (config.optim.update_epochs >= 1, "optim.update_epochs", "must be >= 1"),
        (config.optim.nonfinite_stop >= 1, "optim.nonfinite_stop", "must be >= 1"),
        (config.model.lora_rank >= 0, "model.lora_rank", "must be >= 0"),
    ]
    for ok, name, fix in checks:
        if not ok:
            raise ConfigError(f"invalid config field '{name}': {fix} (got {_get(config, name)!r})")
    unknown = set(config.algo.invalid_statuses) - {"error", "timeout", "memory", "killed"}
    if unknown:
        raise ConfigError(
            f"invalid config field 'algo.invalid_statuses': unknown status {sorted(unknown)}; "
            "choose from error, timeout, memory, killed"
        )
    return config


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config
