"""Credit assignment: finished trajectories -> rewards -> advantages on every model token.

This is the one place that reads trajectory records (each turn's environment reward, invalid actions, success,
code) and hands plain lists and tensors to the pure math in ``gtpo.method.rewards`` and
``gtpo.method.advantages``. It holds no formula of its own; see docs/algorithms.md for the equations and the
function that implements each.

From an environment's step rewards: GTPO's turn reward is the step's reward plus the format penalty on an invalid
action (and, where the environment offers a tool, on a first turn that calls none), plus shaping and length
penalties on the last turn; GRPO's trajectory reward is the episode's return (``algo.episode_return``), at most 0
with a format violation. The math task rewards only its last step (1 if correct), which makes both the paper's
formulas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gtpo.config import TrainConfig
from gtpo.method.advantages import (
    agreement_by_variant,
    call_sign_agreement,
    grpo_advantages,
    gtpo_advantages,
    hybrid_advantages,
    variant_advantages,
)
from gtpo.method.rewards import (
    episode_returns,
    format_ok,
    grpo_episode_rewards,
    overlong_penalty,
    shaped_accuracy,
    turn_rewards,
)
from gtpo.types import Trajectory

Similarity = Callable[[list[str], list[str]], torch.Tensor]
CreditFn = Callable[[Sequence[Trajectory], Sequence[int]], "Credit"]
"""(trajectories, tokens per trajectory) -> their credit."""
ScoreFn = Callable[[Sequence[Trajectory], Sequence[int]], list[float]]
"""(trajectories, tokens per trajectory) -> each trajectory's reward."""


@dataclass
class Credit:
    """Per-turn advantages [B, K] (GRPO: the trajectory's advantage on every turn) and what produced them."""

    turn_advantages: torch.Tensor
    trajectory_rewards: torch.Tensor
    """[B]: GRPO's episode return (at most 0 with a format violation), or GTPO's undiscounted sum of turn rewards."""
    accuracy_values: list[float]
    """Per trajectory acc after shaping (1/0 without shaping)."""
    metrics: dict[str, float]
    turn_rewards: torch.Tensor | None = None
    """[B, K]: GTPO's turn rewards; GRPO's trajectory reward on every turn (what each turn was credited with)."""


@dataclass
class TurnRewards:
    """GTPO's reward half: turn rewards [B, K], turn mask [B, K], acc after shaping, and GRPO's format flag."""

    rewards: torch.Tensor
    mask: torch.Tensor
    acc: list[float]
    fmt_ok: list[bool]


def trajectory_turn_rewards(
    trajectories: Sequence[Trajectory],
    *,
    format_penalty: float,
    no_call_penalty: float,
    shaping_alpha: float,
    similarity: Similarity | None,
    outcome_penalties: Sequence[float] | None = None,
) -> TurnRewards:
    """Turn rewards of finished trajectories: each turn's environment reward, format penalties, and on the last
    turn GTPO's shaping (within ``group_id`` groups when ``similarity`` is given; it lifts a failed trajectory's
    last turn by alpha x its code's similarity to the group's successes) and ``outcome_penalties`` (e.g.
    ``rewards.overlong_penalty``). Shared by ``assign_credit`` and the verl reward
    (``gtpo.integrations.verl_reward``)."""
    correct = [t.correct for t in trajectories]
    invalid = [[turn.invalid_call for turn in t.turns] or [False] for t in trajectories]
    steps = [[turn.reward for turn in t.turns] or [0.0] for t in trajectories]
    # The no-call penalty is for environments that offer a tool; elsewhere every first turn counts as calling.
    first_call = [(bool(t.turns) and t.turns[0].has_tool_call) if t.uses_tools else True for t in trajectories]
    if similarity is not None:
        groups = [t.group_id for t in trajectories]
        acc = shaped_accuracy(
            correct, [t.code for t in trajectories], groups, alpha=shaping_alpha, similarity=similarity
        )
    else:
        acc = [float(c) for c in correct]
    # What lands on the last turn beyond the environment's own reward: the shaped value of a failure.
    outcome = [0.0 if c else a for a, c in zip(acc, correct, strict=True)]
    if outcome_penalties is not None:
        outcome = [o + p for o, p in zip(outcome, outcome_penalties, strict=True)]
    rewards, mask = turn_rewards(
        outcome, invalid, first_call, format_penalty=format_penalty, no_call_penalty=no_call_penalty, step_rewards=steps
    )
    return TurnRewards(rewards, mask, acc, format_ok(invalid, first_call))


def assign_credit(
    trajectories: Sequence[Trajectory],
    *,
    algo: str,
    gamma: float,
    adv_norm: str,
    scale_by_std: bool,
    format_penalty: float,
    no_call_penalty: float,
    shaping: bool,
    shaping_alpha: float,
    similarity: Similarity | None,
    outcome_penalties: Sequence[float] | None = None,
    episode_return: str = "sum",
    traj_adv_weight: float = 0.0,
) -> Credit:
    """Advantages for whole groups. Needs only turn records, so a group split across ranks can be
    gathered without its token lists (see gtpo.distributed). ``outcome_penalties`` (one per trajectory, <= 0)
    add to GTPO's last-turn reward and to GRPO's trajectory reward. ``traj_adv_weight`` > 0 mixes GTPO's turn
    advantages with the group-normalized trajectory reward (``hybrid_advantages``)."""
    correct = [t.correct for t in trajectories]
    group_ids = torch.tensor([t.group_id for t in trajectories])
    turns, traj_rewards = _rewards(
        trajectories,
        algo=algo,
        format_penalty=format_penalty,
        no_call_penalty=no_call_penalty,
        shaping=shaping,
        shaping_alpha=shaping_alpha,
        similarity=similarity,
        outcome_penalties=outcome_penalties,
        episode_return=episode_return,
    )
    rewards_bk, turn_mask, acc, fmt_ok = turns.rewards, turns.mask, turns.acc, turns.fmt_ok
    if algo == "grpo":
        adv = grpo_advantages(traj_rewards, group_ids, scale_by_std=scale_by_std)
        # GRPO: the trajectory's one advantage on every one of its turns (hence on every model token).
        turn_adv = torch.where(turn_mask, adv[:, None].to(torch.float32), torch.zeros(()))
    else:
        turn_adv = gtpo_advantages(rewards_bk, turn_mask, group_ids, gamma, norm=adv_norm, scale_by_std=scale_by_std)
        if traj_adv_weight:
            trajectory_adv = grpo_advantages(traj_rewards, group_ids, scale_by_std=scale_by_std)
            turn_adv = hybrid_advantages(turn_adv, trajectory_adv, turn_mask, traj_adv_weight)

    shaped = [a for a, c in zip(acc, correct, strict=True) if not c and a > 0]
    valid_adv = turn_adv[turn_mask]
    metrics = {
        "reward/mean": traj_rewards.mean().item(),
        "reward/format_ok_rate": sum(fmt_ok) / len(fmt_ok),
        "reward/shaped_frac": len(shaped) / len(acc),
        "reward/shaped_mean": sum(shaped) / len(shaped) if shaped else 0.0,
        "adv/abs_mean": valid_adv.abs().mean().item() if valid_adv.numel() else 0.0,
    }
    calls = call_masks(trajectories, turn_adv.shape[1])
    agreement, counted = call_sign_agreement(turn_adv, *calls)
    if counted:
        metrics["adv/call_sign_agreement"] = agreement
    # the same diagnostic for every credit variant on this batch (GRPO's reward as _rewards makes it)
    grpo_reward = (
        traj_rewards if algo == "grpo" else _grpo_reward(trajectories, fmt_ok, episode_return, outcome_penalties)
    )
    variants = variant_advantages(rewards_bk, turn_mask, group_ids, grpo_reward, gamma=gamma, scale_by_std=scale_by_std)
    metrics.update(agreement_by_variant(variants, *calls))
    shown = rewards_bk if algo == "gtpo" else torch.where(turn_mask, traj_rewards[:, None], torch.zeros(()))
    return Credit(turn_adv, traj_rewards, acc, metrics, turn_rewards=shown)


def call_masks(trajectories: Sequence[Trajectory], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, K] masks of the turns that call the tool, and of those calls that are invalid."""
    is_call = torch.zeros(len(trajectories), width, dtype=torch.bool)
    is_invalid = torch.zeros_like(is_call)
    for i, t in enumerate(trajectories):
        for k, turn in enumerate(t.turns[:width]):
            is_call[i, k] = turn.has_tool_call
            is_invalid[i, k] = turn.invalid_call
    return is_call, is_invalid


def trajectory_rewards(
    trajectories: Sequence[Trajectory],
    *,
    algo: str,
    format_penalty: float,
    no_call_penalty: float,
    shaping: bool,
    shaping_alpha: float,
    similarity: Similarity | None,
    outcome_penalties: Sequence[float] | None = None,
    episode_return: str = "sum",
) -> list[float]:
    """Each trajectory's reward as ``assign_credit`` computes it (``Credit.trajectory_rewards``), without the
    advantages: what group filtering by score compares within a group."""
    _, rewards = _rewards(
        trajectories,
        algo=algo,
        format_penalty=format_penalty,
        no_call_penalty=no_call_penalty,
        shaping=shaping,
        shaping_alpha=shaping_alpha,
        similarity=similarity,
        outcome_penalties=outcome_penalties,
        episode_return=episode_return,
    )
    return rewards.tolist()


def _rewards(
    trajectories: Sequence[Trajectory],
    *,
    algo: str,
    format_penalty: float,
    no_call_penalty: float,
    shaping: bool,
    shaping_alpha: float,
    similarity: Similarity | None,
    outcome_penalties: Sequence[float] | None,
    episode_return: str,
) -> tuple[TurnRewards, torch.Tensor]:
    """Turn rewards (GTPO's, shaped when on) and the trajectory reward [B]: GRPO's episode return (sum or last step
    reward, at most 0 with a format violation), or GTPO's undiscounted sum of turn rewards; ``outcome_penalties``
    added to both."""
    if algo not in ("gtpo", "grpo"):
        raise ValueError(f"algo.algo must be 'gtpo' or 'grpo', got {algo!r}")
    if shaping and algo == "gtpo" and similarity is None:
        raise ValueError("algo.shaping is on but no similarity function was given")
    turns = trajectory_turn_rewards(
        trajectories,
        format_penalty=format_penalty,
        no_call_penalty=no_call_penalty,
        shaping_alpha=shaping_alpha,
        similarity=similarity if shaping and algo == "gtpo" else None,
        outcome_penalties=outcome_penalties,
    )
    if algo == "grpo":
        rewards = _grpo_reward(trajectories, turns.fmt_ok, episode_return, outcome_penalties)
    else:
        rewards = (turns.rewards * turns.mask).sum(dim=1)
    return turns, rewards


def _grpo_reward(
    trajectories: Sequence[Trajectory],
    fmt_ok: Sequence[bool],
    episode_return: str,
    outcome_penalties: Sequence[float] | None,
) -> torch.Tensor:
    """GRPO's trajectory reward [B]: the episode return, at most 0 with a format violation, plus the penalties."""
    returns = episode_returns([[turn.reward for turn in t.turns] for t in trajectories], episode_return)
    rewards = grpo_episode_rewards(returns, fmt_ok)
    if outcome_penalties is not None:
        rewards = rewards + torch.tensor(outcome_penalties, dtype=torch.float32)
    return rewards


def bind_credit(config: TrainConfig, similarity: Similarity | None) -> tuple[CreditFn, ScoreFn]:
    """``assign_credit`` and ``trajectory_rewards`` with a run's settings read once (``algo.*``, and the overlong
    penalty of ``overlong.mode="penalty"`` computed from each trajectory's token count)."""
    algo, overlong, cap = config.algo, config.overlong, config.rollout.max_total_tokens
    rewards = {
        "algo": algo.algo,
        "format_penalty": algo.format_penalty,
        "no_call_penalty": algo.no_call_penalty,
        "shaping": algo.shaping,
        "shaping_alpha": algo.shaping_alpha,
        "similarity": similarity,
        "episode_return": algo.episode_return,
    }
    buffer = round(overlong.buffer * cap)

    def penalties(lengths: Sequence[int]) -> list[float] | None:
        if overlong.mode != "penalty":
            return None
        return overlong_penalty(lengths, cap, buffer, overlong.penalty)

    def credit(trajectories: Sequence[Trajectory], lengths: Sequence[int]) -> Credit:
        return assign_credit(
            trajectories,
            gamma=algo.gamma,
            adv_norm=algo.adv_norm,
            scale_by_std=algo.scale_by_std,
            outcome_penalties=penalties(lengths),
            traj_adv_weight=algo.traj_adv_weight,
            **rewards,
        )

    def score(trajectories: Sequence[Trajectory], lengths: Sequence[int]) -> list[float]:
        return trajectory_rewards(trajectories, outcome_penalties=penalties(lengths), **rewards)

    return credit, score
