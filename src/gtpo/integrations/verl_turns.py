"""Turns from verl's multi-turn response mask: which tokens belong to which model turn.

In a verl multi-turn rollout, ``response_mask`` is 1 on the tokens the model sampled and 0 on tool output
(and padding), so each model turn is one contiguous run of 1s. These helpers turn that mask into gtpo's turn
bookkeeping (``turn_ids``/``turn_mask``, see ``gtpo.method.advantages``), and move per-turn values between the turn
axis [B, K] and the token axis [B, T]. Pure torch, no verl import, so the reward side and the estimator
agree on one definition of a turn.
"""

from __future__ import annotations

import torch

from gtpo.method.advantages import turns_to_tokens


def _runs(response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(is_model_token, run_index, starts): run_index[i, t] is the index of the last turn started at or
    before t (-1 before the first turn); starts marks each turn's first token."""
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be [B, T], got shape {tuple(response_mask.shape)}")
    model = response_mask.bool()
    previous = torch.zeros_like(model)
    previous[:, 1:] = model[:, :-1]
    starts = model & ~previous
    run_index = starts.long().cumsum(dim=1) - 1
    return model, run_index, starts


def turn_ids_from_mask(response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``turn_ids`` [B, T] (turn index on model tokens, -1 elsewhere) and ``turn_mask`` [B, K] (bool).

    K is the largest number of turns in the batch, at least 1, so a batch of empty responses still has
    well-formed [B, 1] turn tensors (all masked).
    """
    model, run_index, starts = _runs(response_mask)
    turn_ids = torch.where(model, run_index, torch.full_like(run_index, -1))
    counts = starts.sum(dim=1)
    k = max(int(counts.max()), 1) if counts.numel() else 1
    turn_mask = torch.arange(k, device=response_mask.device)[None, :] < counts[:, None]
    return turn_ids, turn_mask


def turn_rewards_from_tokens(token_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum token-level rewards into per-turn rewards [B, K].

    A token's reward goes to the turn that owns its region: turn j's region runs from its first token to
    the first token of turn j + 1, so it covers the turn's tool output too (and the last turn's region runs
    to the end). A reward placed on a turn's last token, or anywhere in its observation, is that turn's;
    verl's per-token KL penalty (``algorithm.use_kl_in_reward``) is summed into the turn it was paid on.
    Rewards before the first turn go to turn 0. Rows with no model token have no turn and lose their reward.
    """
    if token_rewards.shape != response_mask.shape:
        raise ValueError(
            f"token_rewards {tuple(token_rewards.shape)} and response_mask {tuple(response_mask.shape)} differ"
        )
    _, run_index, _ = _runs(response_mask)
    _, turn_mask = turn_ids_from_mask(response_mask)
    rewards = torch.zeros(turn_mask.shape, dtype=token_rewards.dtype, device=token_rewards.device)
    rewards.scatter_add_(1, run_index.clamp(min=0), token_rewards)
    return rewards * turn_mask.to(rewards.dtype)


def turn_end_mask(response_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool, True on the last token of each model turn (where per-turn rewards are placed)."""
    model, _, _ = _runs(response_mask)
    following = torch.zeros_like(model)
    following[:, :-1] = model[:, 1:]
    return model & ~following


def place_turn_rewards(turn_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Token-level rewards [B, T]: turn j's reward on its last token, 0 elsewhere (the inverse of
    ``turn_rewards_from_tokens`` for rewards placed this way)."""
    turn_ids, turn_mask = turn_ids_from_mask(response_mask)
    if turn_rewards.dim() != 2 or turn_rewards.shape[0] != response_mask.shape[0]:
        raise ValueError(
            f"turn_rewards must be [B, K] with B={response_mask.shape[0]}, got {tuple(turn_rewards.shape)}"
        )
    if turn_rewards.shape[1] < turn_mask.shape[1]:
        raise ValueError(
            f"response_mask has up to {turn_mask.shape[1]} turns but turn_rewards only {turn_rewards.shape[1]}"
        )
    values = turns_to_tokens(turn_rewards, turn_ids)  # each turn's value on all of its tokens
    return torch.where(turn_end_mask(response_mask), values, torch.zeros((), dtype=turn_rewards.dtype))


def turn_spans(mask: list[int] | torch.Tensor) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: the half-open token range of each model turn in one response's mask."""
    row = torch.as_tensor(mask).reshape(1, -1)
    starts = _runs(row)[2][0].nonzero().flatten().tolist()
    ends = (turn_end_mask(row)[0].nonzero().flatten() + 1).tolist()
    return list(zip(starts, ends, strict=True))
