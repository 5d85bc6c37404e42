"""Rewards: GTPO turn rewards, the GRPO trajectory reward, and self-supervised accuracy shaping.

Pure functions from plain lists (what the grader and the rollout recorded) to tensors or lists. The
events that drive them are decided elsewhere: correctness by ``gtpo.data.grading``, whether a call is invalid by
``gtpo.tools.is_invalid_call``. Normalization into advantages lives in ``gtpo.method.advantages``.
See docs/algorithms.md for each formula and the provenance of each default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gtpo.method.similarity import tfidf_code_similarity

Similarity = Callable[[list[str], list[str]], torch.Tensor]
"""sim(a, b) -> [len(a), len(b)] similarity matrix; ``gtpo.method.similarity`` has the implementations."""


def turn_rewards(
    acc: Sequence[float],
    invalid_calls: Sequence[Sequence[bool]],
    first_turn_has_call: Sequence[bool],
    format_penalty: float = 0.1,
    no_call_penalty: float = 0.1,
    step_rewards: Sequence[Sequence[float]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GTPO turn rewards r[i, j] = s[i, j] + acc[i, j] + fmt[i, j] and the turn mask: ([B, K] float, [B, K] bool).

    acc[i] lands on trajectory i's last turn (0 on earlier turns); fmt is -format_penalty on every turn
    with an invalid tool call (an invalid action) and -no_call_penalty on turn 1 if it makes no tool call (the
    two add). s[i, j] is the environment's reward for turn j (``step_rewards``; None: 0 everywhere, the paper's
    case, where the outcome is all of acc). ``len(invalid_calls[i])`` is trajectory i's number of turns; K is
    the largest.
    """
    _check_lengths(acc=acc, invalid_calls=invalid_calls, first_turn_has_call=first_turn_has_call)
    if step_rewards is not None:
        _check_lengths(acc=acc, step_rewards=step_rewards)
        for i, (steps, calls) in enumerate(zip(step_rewards, invalid_calls, strict=True)):
            if len(steps) != len(calls):
                raise ValueError(
                    f"step_rewards[{i}] has {len(steps)} entries and invalid_calls[{i}] {len(calls)}: one per turn"
                )
    if format_penalty < 0 or no_call_penalty < 0:
        raise ValueError(
            f"format_penalty and no_call_penalty are subtracted and must be >= 0 (0 disables), got "
            f"{format_penalty} and {no_call_penalty}"
        )
    turn_counts = [len(calls) for calls in invalid_calls]
    if any(n < 1 for n in turn_counts):
        raise ValueError("invalid_calls: every trajectory needs at least one turn (one entry per turn)")
    b, k = len(turn_counts), max(turn_counts, default=0)
    rewards = torch.zeros(b, k, dtype=torch.float32)
    mask = torch.zeros(b, k, dtype=torch.bool)
    for i, (calls, n) in enumerate(zip(invalid_calls, turn_counts, strict=True)):
        mask[i, :n] = True
        if step_rewards is not None:
            rewards[i, :n] += torch.tensor(step_rewards[i], dtype=torch.float32)
        rewards[i, n - 1] += acc[i]
        rewards[i, :n] -= format_penalty * torch.tensor(calls, dtype=torch.float32)
        if not first_turn_has_call[i]:
            rewards[i, 0] -= no_call_penalty
    return rewards, mask


def format_ok(invalid_calls: Sequence[Sequence[bool]], first_turn_has_call: Sequence[bool]) -> list[bool]:
    """Per trajectory: no invalid tool call on any turn, and a tool call on turn 1.

    These are exactly the events that ``turn_rewards`` penalizes, but read from the events themselves, not
    from the penalty sizes: setting the penalties to 0 (the GTPO ablation) leaves GRPO's format term intact.
    """
    _check_lengths(invalid_calls=invalid_calls, first_turn_has_call=first_turn_has_call)
    return [bool(first) and not any(calls) for calls, first in zip(invalid_calls, first_turn_has_call, strict=True)]


def grpo_rewards(correct: Sequence[bool], fmt_ok: Sequence[bool]) -> torch.Tensor:
    """GRPO's one reward per trajectory, r = min(acc, fmt) with both 0/1: 1 iff correct and format-ok. [B]."""
    _check_lengths(correct=correct, fmt_ok=fmt_ok)
    return torch.tensor([float(min(bool(c), bool(f))) for c, f in zip(correct, fmt_ok, strict=True)])


def episode_returns(step_rewards: Sequence[Sequence[float]], kind: str = "sum") -> list[float]:
    """Each trajectory's return from its environment's step rewards: their sum (undiscounted), or the last one.
    A trajectory without a step returns 0."""
    if kind not in ("sum", "last"):
        raise ValueError(f"kind (config algo.episode_return) must be 'sum' or 'last', got {kind!r}")
    if kind == "last":
        return [float(steps[-1]) if steps else 0.0 for steps in step_rewards]
    return [float(sum(steps)) for steps in step_rewards]


def grpo_episode_rewards(returns: Sequence[float], fmt_ok: Sequence[bool]) -> torch.Tensor:
    """GRPO's one reward per trajectory from an environment's episode return R: R if the format is clean, else
    min(R, 0), so a format violation never scores above 0. For 0/1 returns this is the paper's min(acc, fmt)
    (``grpo_rewards``). [B] float32."""
    _check_lengths(returns=returns, fmt_ok=fmt_ok)
    return torch.tensor(
        [float(r) if ok else min(float(r), 0.0) for r, ok in zip(returns, fmt_ok, strict=True)], dtype=torch.float32
    )


def shaped_accuracy(
    correct: Sequence[bool],
    codes: Sequence[str],
    group_ids: Sequence[int],
    alpha: float = 0.5,
    similarity: Similarity = tfidf_code_similarity,
) -> list[float]:
    """The acc value of each trajectory with GTPO's self-supervised shaping.

    Successes keep 1. A failed trajectory in a group with successes P gets
    alpha * mean over p in P of clip(sim(code_i, code_p), 0, 1); alpha < 1 keeps a near miss below any
    success. A failure without code gets 0; successes without code are left out of P (nothing to compare
    to); groups with no success (or no success with code) are unchanged (all 0).
    """
    _check_lengths(correct=correct, codes=codes, group_ids=group_ids)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (config shaping_alpha) must be in [0, 1], got {alpha}")
    acc = [1.0 if c else 0.0 for c in correct]
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        members.setdefault(g, []).append(i)
    for indices in members.values():
        references = [codes[i] for i in indices if correct[i] and codes[i].strip()]
        failures = [i for i in indices if not correct[i] and codes[i].strip()]
        if not references or not failures:
            continue
        sim = similarity([codes[i] for i in failures], references)
        if tuple(sim.shape) != (len(failures), len(references)):
            raise ValueError(
                f"similarity returned shape {tuple(sim.shape)}, expected {(len(failures), len(references))}"
            )
        shaped = alpha * sim.to(torch.float64).clamp(0.0, 1.0).mean(dim=1)
        for i, value in zip(failures, shaped.tolist(), strict=True):
            acc[i] = value
    return acc


def _check_lengths(**sequences: Sequence[object]) -> None:
    lengths = {name: len(seq) for name, seq in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"one entry per trajectory is needed in each argument, got lengths {lengths}")


def overlong_penalty(lengths: Sequence[int], max_length: int, buffer: int, factor: float = 1.0) -> list[float]:
    """DAPO's soft overlong punishment, one value per trajectory (0 or negative), added to its outcome reward.

    With L_max = ``max_length`` and a buffer of ``buffer`` tokens before it:
    0 while L <= L_max - buffer, then falling linearly to -factor at L = L_max (and -factor beyond).
    A trajectory cut by the length budget has L = L_max and gets the whole penalty; one that ended on its
    own close to the cap gets part of it. ``buffer`` = 0 penalizes only L >= L_max.
    """
    if max_length < 1 or not 0 <= buffer <= max_length:
        raise ValueError(f"need max_length >= 1 and 0 <= buffer <= max_length, got {max_length} and {buffer}")
    if factor < 0:
        raise ValueError(f"factor (config overlong.penalty) must be >= 0 (it is subtracted), got {factor}")
    start = max_length - buffer
    penalties = []
    for length in lengths:
        if length <= start and length < max_length:
            penalties.append(0.0)
        elif buffer == 0 or length >= max_length:
            penalties.append(-factor)
        else:
            penalties.append(-factor * (length - start) / buffer)
    return penalties


def informative_groups(scores: Sequence[float], group_ids: Sequence[int]) -> list[bool]:
    """Per trajectory: does its group carry a training signal, i.e. do the group's scores differ?

    A group whose trajectories all score the same (all right, all wrong, same format events) gets advantage 0
    on every token under GRPO's normalization, so it adds nothing to the policy gradient: DAPO's dynamic
    sampling and SimpleTIR's filter leave such groups out and sample others. Scores compare exactly (float64),
    the rule ``gtpo.method.advantages`` uses for a set whose advantages are all 0.
    """
    _check_lengths(scores=scores, group_ids=group_ids)
    values: dict[int, set[float]] = {}
    for score, g in zip(scores, group_ids, strict=True):
        values.setdefault(g, set()).add(float(score))
    return [len(values[g]) > 1 for g in group_ids]
