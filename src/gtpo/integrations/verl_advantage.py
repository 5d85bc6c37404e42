"""GTPO as a verl advantage estimator: ``algorithm.adv_estimator=gtpo`` (or ``gtpo_turn_index``).

verl hands an estimator token-level rewards [B, T], the response mask and the group index (``uid``: the
trajectories sampled for one prompt). GTPO needs per-turn rewards and turn boundaries, and both are in what
verl passes: turns are the runs of 1s in the multi-turn response mask, and a turn's reward is the sum of the
token rewards in its region (``gtpo.integrations.verl_turns``), which ``GTPORewardManager`` and the
``gtpo_tool_agent`` loop put on the last token of each turn. The math itself is gtpo's:
``discounted_returns``/``gtpo_advantages``/``turns_to_tokens`` from ``gtpo.method.advantages``, nothing re-derived.

Settings come from verl's ``algorithm`` config: ``gamma`` (GTPO's default is 0.9, verl's is 1.0, so set it)
and ``norm_adv_by_std_in_grpo`` (False: only subtract the mean, as ``scale_by_std=False`` in gtpo). The
normalization set is chosen by the estimator's name, because verl's algorithm config has no free field for
it: ``gtpo`` pools all turns of a group (gtpo's ``adv_norm=group``), ``gtpo_turn_index`` normalizes turn j
across the group (``adv_norm=turn_index``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from gtpo.integrations.verl_turns import turn_ids_from_mask, turn_rewards_from_tokens
from gtpo.method.advantages import discounted_returns, gtpo_advantages, turns_to_tokens

GTPO_DEFAULT_GAMMA = 0.9
"""Used only when verl passes no config (direct calls); a verl run takes ``algorithm.gamma``."""


def group_ids_from_index(index: Any, batch: int) -> torch.Tensor:
    """verl's ``uid`` array (strings or ints, one per row) -> integer group ids [B] for gtpo."""
    if index is None:
        raise ValueError("GTPO needs verl's group index (non_tensor_batch['uid']) to normalize within groups")
    values = np.asarray(index, dtype=object)
    if values.shape != (batch,):
        raise ValueError(f"index must hold one group id per row ({batch}), got shape {values.shape}")
    _, inverse = np.unique(values.astype(str), return_inverse=True)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long)


def gtpo_token_advantages(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    gamma: float,
    norm: str = "group",
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both [B, T]: GTPO's turn advantages and discounted turn returns, each on the
    tokens of its turn and 0 on tool output and padding."""
    turn_ids, turn_mask = turn_ids_from_mask(response_mask)
    rewards = turn_rewards_from_tokens(token_level_rewards.float(), response_mask)
    group_ids = group_ids_from_index(index, token_level_rewards.shape[0]).to(rewards.device)
    advantages = gtpo_advantages(rewards, turn_mask, group_ids, gamma, norm=norm, scale_by_std=scale_by_std, eps=eps)
    returns = discounted_returns(rewards, turn_mask, gamma)
    dtype = token_level_rewards.dtype
    return turns_to_tokens(advantages, turn_ids).to(dtype), turns_to_tokens(returns, turn_ids).to(dtype)


def _estimate(
    token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any, epsilon: float, config: Any, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """What both registered estimators do, with gamma and scale_by_std read from verl's algorithm config (an
    AlgoConfig or a DictConfig), or gtpo's defaults when verl passes none."""
    gamma, scale_by_std = GTPO_DEFAULT_GAMMA, True
    if config is not None:
        gamma = float(config.get("gamma", GTPO_DEFAULT_GAMMA))
        scale_by_std = bool(config.get("norm_adv_by_std_in_grpo", True))
    with torch.no_grad():
        return gtpo_token_advantages(
            token_level_rewards, response_mask, index, gamma, norm, scale_by_std=scale_by_std, eps=epsilon
        )


@register_adv_est("gtpo")
def compute_gtpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    epsilon: float = 1e-6,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl estimator ``gtpo``: returns normalized over all turns of each group (gtpo ``adv_norm=group``).

    ``**kwargs`` takes what verl passes to some estimators and GTPO does not use (``reward_baselines``).
    """
    return _estimate(token_level_rewards, response_mask, index, epsilon, config, "group")


@register_adv_est("gtpo_turn_index")
def compute_gtpo_turn_index_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    epsilon: float = 1e-6,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl estimator ``gtpo_turn_index``: turn j normalized across the group's trajectories that have a
    turn j (gtpo ``adv_norm=turn_index``)."""
    return _estimate(token_level_rewards, response_mask, index, epsilon, config, "turn_index")
