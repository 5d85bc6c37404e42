"""GTPO's code-similarity shaping on verl, applied where a verl run first sees a whole group.

verl 0.9 scores each trajectory alone, as soon as it finishes (``GTPORewardManager.run_single``), and its
advantage step reads only ``uid``, ``response_mask`` and the token scores, so neither place can compare a
failed trajectory's code with its group's successes. The v1 trainer's replay buffer can: it hands the trainer
finished groups only, and it is a documented extension point (``trainer.v1.sampler.custom_sampler``). So the
reward manager records in ``reward_extra_info`` what shaping needs (``acc``, the code, ``shaping_alpha``, the
similarity's name), and ``gtpo.integrations.verl_sampler``'s replay buffer calls ``shape_scores`` on each
sampled batch, before the advantage step: a failed trajectory's last-turn reward gains its shaped accuracy
(``gtpo.method.rewards.shaped_accuracy`` within its ``uid`` group, exactly as
``gtpo.method.credit.assign_credit`` does),
so the ``gtpo`` estimator then computes the trainer's credit.

This module is pure torch on the batch's fields, no TransferQueue, so it is tested on verl's DataProto alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import torch

from gtpo.integrations.verl_advantage import group_ids_from_index
from gtpo.integrations.verl_reward import ALPHA_KEY, CODE_KEY, SIMILARITY_KEY
from gtpo.method.rewards import shaped_accuracy
from gtpo.method.similarity import get_similarity

Similarity = Callable[[list[str], list[str]], torch.Tensor]


def shape_scores(
    token_scores: torch.Tensor,
    response_mask: torch.Tensor,
    uids: Sequence[Any],
    reward_infos: Sequence[dict[str, Any] | None],
    similarity: Similarity | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token scores [B, T] with GTPO's shaping added, and metrics.

    Row i's shaped accuracy minus its accuracy (0 for successes and for groups without one) is added on its
    last model token, where its last turn's reward sits (``place_turn_rewards``). Rows without the reward
    manager's info (another reward, padding) take no part: no code, not a success. ``similarity`` replaces
    the one the info names (tests). Shaping needs each group whole: ``uids`` must cover every trajectory of
    a sampled group, which verl's replay buffer guarantees.
    """
    if token_scores.shape != response_mask.shape or token_scores.dim() != 2:
        raise ValueError(f"token_scores {tuple(token_scores.shape)} and response_mask must both be [B, T]")
    if not (len(uids) == len(reward_infos) == token_scores.shape[0]):
        raise ValueError(f"need one uid and one reward info per row ({token_scores.shape[0]})")
    infos = [info or {} for info in reward_infos]
    correct = [float(info.get("acc", 0.0)) == 1.0 for info in infos]
    codes = [str(info.get(CODE_KEY) or "") for info in infos]
    alphas = {float(info[ALPHA_KEY]) for info in infos if ALPHA_KEY in info}
    names = {str(info[SIMILARITY_KEY]) for info in infos if SIMILARITY_KEY in info}
    if len(alphas) > 1 or len(names) > 1:
        raise ValueError(f"one run needs one shaping setting, got alpha {sorted(alphas)} and similarity {names}")
    alpha = alphas.pop() if alphas else 0.0
    if alpha == 0.0:
        return token_scores, {"gtpo/shaped_frac": 0.0, "gtpo/shaped_mean": 0.0}
    sim = similarity or _similarity(names.pop() if names else "tfidf")
    groups = group_ids_from_index(list(uids), len(uids)).tolist()
    shaped = shaped_accuracy(correct, codes, groups, alpha=alpha, similarity=sim)
    delta = torch.tensor([s - float(c) for s, c in zip(shaped, correct, strict=True)], dtype=token_scores.dtype)
    model = response_mask.bool()
    has_turn = model.any(dim=1)
    last = model.shape[1] - 1 - model.flip(dims=[1]).long().argmax(dim=1)  # the last model token of each row
    out = token_scores.clone()
    rows = torch.arange(out.shape[0])[has_turn]
    out[rows, last[has_turn]] += delta[has_turn].to(out.device)
    lifted = [s for s, c in zip(shaped, correct, strict=True) if not c and s > 0]
    metrics = {
        "gtpo/shaped_frac": len(lifted) / len(shaped),
        "gtpo/shaped_mean": sum(lifted) / len(lifted) if lifted else 0.0,
    }
    return out, metrics


@cache
def _similarity(name: str) -> Similarity:
    """One similarity object per process (an embedding model loads once)."""
    return get_similarity(name)
