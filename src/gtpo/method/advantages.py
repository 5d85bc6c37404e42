"""Advantages: turn returns and their group normalization (GTPO), trajectory rewards normalized (GRPO), and
the turn-credit variants beside them (per-turn-index sets that hold stopped trajectories, A2TGPO's
accumulation, a turn/trajectory hybrid), with the call-sign diagnostic that compares them on one batch.

Pure tensor functions, vectorized over the batch (loops over the K turn positions in ``discounted_returns``
and ``carried_returns`` are the only loops). Shapes: B trajectories, K max turns, T tokens; turn tensors are
[B, K] with ``turn_mask``; ``turn_ids`` [B, T] is the 0-based turn index on model tokens and -1 on prompt
and observation tokens. See docs/algorithms.md for the equations and where each default comes from.

What this is not: it reads no trajectories and computes no rewards (``gtpo.method.rewards``), and it knows
nothing of the loss (``gtpo.method.losses``).

Convention shared by GTPO and GRPO: the std of a normalization set is the *population* std (divide by n,
not n - 1), so a set of one has std 0 and every set's advantages have unit mean square. A set whose values
are all equal gets advantage exactly 0 (never NaN, never a rounding-error residue).
"""

from __future__ import annotations

import torch

NORMS: tuple[str, ...] = ("group", "turn_index", "batch", "turn_index_carry", "a2tgpo")
"""How GTPO turns become advantages (config field ``adv_norm``): returns normalized over a set (the first four),
or A2TGPO's per-turn-index rewards accumulated (``a2tgpo_advantages``)."""


def discounted_returns(turn_rewards: torch.Tensor, turn_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """R[i, j] = sum over valid k >= j of gamma^(k - j) * r[i, k]; 0 on masked turns.

    GTPO's return-based credit: a turn is credited with what happens after it, discounted by distance.
    Masked (padding) turns contribute no reward and get return 0. Shapes: [B, K] in, [B, K] out.
    """
    _check_turn_tensors(turn_rewards, turn_mask)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    mask = turn_mask.to(turn_rewards.dtype)
    rewards = turn_rewards * mask
    returns = torch.zeros_like(rewards)
    carry = torch.zeros_like(rewards[:, 0])
    for j in range(rewards.shape[1] - 1, -1, -1):  # K is a handful of turns; never a loop over tokens
        carry = rewards[:, j] + gamma * carry
        returns[:, j] = carry * mask[:, j]
    return returns


def gtpo_advantages(
    turn_rewards: torch.Tensor,
    turn_mask: torch.Tensor,
    group_ids: torch.Tensor,
    gamma: float,
    norm: str = "group",
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GTPO turn advantages: A[i, j] = (R[i, j] - mean_S) / (std_S + eps), 0 on masked turns.

    The set S holding turn (i, j) is, for ``norm="group"``, every valid turn of every trajectory of i's
    group (pooled); for ``norm="turn_index"``, turn j of the trajectories of i's group that have a turn j;
    for ``norm="turn_index_carry"``, position j of *every* trajectory of i's group, one that stopped before j
    holding its last return (``carried_returns``), so that no set depends on which trajectories went on;
    for ``norm="batch"``, every valid turn of the whole batch (groups are ignored: one third-party reading of
    the paper). ``norm="a2tgpo"`` is ``a2tgpo_advantages``. ``scale_by_std=False`` only subtracts the mean
    (Dr. GRPO). ``group_ids`` [B] may be any integers. Shapes: [B, K] rewards and mask, [B] ids -> [B, K].
    """
    if norm not in NORMS:
        raise ValueError(f"norm (config adv_norm) must be one of {NORMS}, got {norm!r}")
    if norm == "a2tgpo":
        return a2tgpo_advantages(turn_rewards, turn_mask, group_ids, gamma, scale_by_std, eps)
    returns = discounted_returns(turn_rewards, turn_mask, gamma)
    group_index = _group_index(group_ids, turn_rewards.shape[0])
    mask = turn_mask.bool()
    k = turn_rewards.shape[1]
    values, members = returns, mask
    if norm == "group":
        set_ids = group_index[:, None].expand(-1, k)
    elif norm == "batch":
        set_ids = torch.zeros_like(returns, dtype=torch.long)
    else:
        set_ids = group_index[:, None] * k + torch.arange(k, device=returns.device)[None, :]
    if norm == "turn_index_carry":
        # every position from a trajectory's first turn on is a member; past its last turn it holds that return
        values, members = carried_returns(returns, mask), mask.long().cummax(dim=1).values.bool()
    normalized = torch.zeros_like(returns)
    normalized[members] = _normalize_within_sets(values[members], set_ids[members], scale_by_std, eps)
    return torch.where(mask, normalized, torch.zeros((), dtype=returns.dtype))


def carried_returns(returns: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
    """R on valid turns; on a masked turn, the return of the trajectory's latest valid turn before it (0 if none).

    Past its last turn a trajectory that stopped *holds* its final return (its last turn's reward), as if it
    stood still; so every turn-index set of ``adv_norm="turn_index_carry"`` has all G members of the group,
    and with outcome-only rewards and gamma = 1 every position holds the outcome: GRPO's set. A loop over the
    K turn positions. Shapes: [B, K] in, [B, K] out.
    """
    _check_turn_tensors(returns, turn_mask)
    mask = turn_mask.bool()
    held = torch.zeros_like(returns[:, 0])
    out = torch.empty_like(returns)
    for j in range(returns.shape[1]):
        held = torch.where(mask[:, j], returns[:, j], held)
        out[:, j] = held
    return out


def a2tgpo_advantages(
    turn_rewards: torch.Tensor,
    turn_mask: torch.Tensor,
    group_ids: torch.Tensor,
    gamma: float,
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """A2TGPO's turn-group normalization and variance-rescaled accumulation, read onto GTPO's turn rewards:

        z[i, k] = (r[i, k] - mean_Sk) / (std_Sk + eps)    Sk: turn k of the group's trajectories that have one
        A[i, j] = sum over valid k >= j of gamma^(k - j) z[i, k] / sqrt(number of valid k >= j)

    Normalizing each turn only against peers at the same depth, then dividing by the square root of the
    number of terms so that a sum of n roughly unit terms keeps a unit scale at every depth (arXiv 2605.06200
    applies both to its information-gain signal; here the signal is the turn reward, outcome included).
    Caveat (docs/algorithms.md, section 4): the baselines summed into A[i, j] are one per later turn of i,
    so their number follows i's own decision to go on. 0 on masked turns. Shapes: [B, K], [B, K], [B] -> [B, K].
    """
    _check_turn_tensors(turn_rewards, turn_mask)
    group_index = _group_index(group_ids, turn_rewards.shape[0])
    mask = turn_mask.bool()
    k = turn_rewards.shape[1]
    set_ids = group_index[:, None] * k + torch.arange(k, device=turn_rewards.device)[None, :]
    z = torch.zeros_like(turn_rewards)
    z[mask] = _normalize_within_sets(turn_rewards[mask], set_ids[mask], scale_by_std, eps)
    accumulated = discounted_returns(z, mask, gamma)
    terms = mask.flip(1).cumsum(dim=1).flip(1).clamp(min=1).to(turn_rewards.dtype)
    return torch.where(mask, accumulated / terms.sqrt(), torch.zeros((), dtype=turn_rewards.dtype))


def hybrid_advantages(
    turn_advantages: torch.Tensor, trajectory_advantages: torch.Tensor, turn_mask: torch.Tensor, weight: float
) -> torch.Tensor:
    """Turn and trajectory credit mixed: A[i, j] = (1 - w) * A_turn[i, j] + w * A_traj[i] on valid turns, else 0.

    w = 0 is GTPO's turn credit, w = 1 puts the trajectory's one (GRPO-style) advantage on every turn; between,
    a turn is judged by what followed it and by how the whole trajectory did (in form, MT-GRPO's A_outcome + c * A_turn
    is (1 + c) times this with w = 1 / (1 + c)). Shapes: [B, K], [B], [B, K] -> [B, K].
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight (config traj_adv_weight) must be in [0, 1], got {weight}")
    if turn_advantages.shape != turn_mask.shape or trajectory_advantages.shape != turn_advantages.shape[:1]:
        raise ValueError(
            f"turn_advantages and turn_mask must be [B, K] and trajectory_advantages [B], got "
            f"{tuple(turn_advantages.shape)}, {tuple(turn_mask.shape)} and {tuple(trajectory_advantages.shape)}"
        )
    mixed = (1.0 - weight) * turn_advantages + weight * trajectory_advantages[:, None].to(turn_advantages.dtype)
    return torch.where(turn_mask.bool(), mixed, torch.zeros((), dtype=turn_advantages.dtype))


def grpo_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO: A[i] = (r[i] - mean_group) / (std_group + eps) with GTPO's std convention. Shapes: [B] -> [B]."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor [B], got shape {tuple(rewards.shape)}")
    group_index = _group_index(group_ids, rewards.shape[0])
    return _normalize_within_sets(rewards, group_index, scale_by_std, eps)


def call_sign_agreement(
    turn_advantages: torch.Tensor, is_call: torch.Tensor, is_invalid: torch.Tensor
) -> tuple[float, int]:
    """How often credit points the right way on tool calls: the share of tool-call turns with a non-zero
    advantage whose sign matches the call (up for a valid call, down for an invalid one), and how many turns
    were counted. A diagnostic of turn credit, not part of the loss: GRPO's one trajectory advantage pushes a
    valid call down whenever its trajectory failed; turn credit can do better, or (pooled over turn positions)
    worse. Shapes: [B, K] each (bool masks); (nan, 0) when no call has a non-zero advantage."""
    if not turn_advantages.shape == is_call.shape == is_invalid.shape:
        raise ValueError(
            f"turn_advantages, is_call and is_invalid must have one shape [B, K], got {tuple(turn_advantages.shape)}, "
            f"{tuple(is_call.shape)} and {tuple(is_invalid.shape)}"
        )
    counted = is_call & (turn_advantages != 0)
    agrees = counted & ((turn_advantages > 0) != is_invalid)
    n = int(counted.sum())
    return (int(agrees.sum()) / n if n else float("nan")), n


CREDIT_VARIANTS: tuple[str, ...] = (*NORMS, "hybrid", "grpo")
"""Credit schemes whose call-sign agreement each training step logs on its own batch (``variant_advantages``)."""
HYBRID_DIAGNOSTIC_WEIGHT = 0.5
"""The trajectory weight of the ``"hybrid"`` diagnostic (MT-GRPO's coefficient 1, rescaled)."""


def variant_advantages(
    turn_rewards: torch.Tensor,
    turn_mask: torch.Tensor,
    group_ids: torch.Tensor,
    grpo_rewards: torch.Tensor,
    *,
    gamma: float,
    scale_by_std: bool,
) -> dict[str, torch.Tensor]:
    """Every scheme of ``CREDIT_VARIANTS`` on one batch: GTPO under each ``adv_norm``; ``"hybrid"``, pooled
    ``"group"`` turn credit mixed half and half with the group-normalized sum of turn rewards; ``"grpo"``, the
    advantage of ``grpo_rewards`` [B] on every valid turn. A diagnostic beside a run's own credit: which scheme
    would sign the same tool calls right. Shapes: [B, K], [B, K], [B], [B] -> {name: [B, K]}."""
    mask = turn_mask.bool()
    out = {n: gtpo_advantages(turn_rewards, mask, group_ids, gamma, norm=n, scale_by_std=scale_by_std) for n in NORMS}
    summed = grpo_advantages((turn_rewards * mask).sum(dim=1), group_ids, scale_by_std=scale_by_std)
    out["hybrid"] = hybrid_advantages(out["group"], summed, mask, HYBRID_DIAGNOSTIC_WEIGHT)
    trajectory = grpo_advantages(grpo_rewards, group_ids, scale_by_std=scale_by_std).to(turn_rewards.dtype)
    out["grpo"] = torch.where(mask, trajectory[:, None], torch.zeros((), dtype=turn_rewards.dtype))
    return out


def agreement_by_variant(
    variants: dict[str, torch.Tensor], is_call: torch.Tensor, is_invalid: torch.Tensor
) -> dict[str, float]:
    """``adv/call_sign_agreement/<name>`` for each variant's [B, K] advantages where any call was counted."""
    shares = {name: call_sign_agreement(adv, is_call, is_invalid) for name, adv in variants.items()}
    return {f"adv/call_sign_agreement/{name}": share for name, (share, n) in shares.items() if n}


def turns_to_tokens(turn_values: torch.Tensor, turn_ids: torch.Tensor) -> torch.Tensor:
    """Broadcast each turn's value to that turn's tokens: out[i, t] = v[i, turn_ids[i, t]], 0 where -1.

    Prompt and observation tokens (turn id -1) get 0, so they carry no advantage. [B, K] x [B, T] -> [B, T].
    """
    if turn_values.dim() != 2 or turn_ids.dim() != 2 or turn_values.shape[0] != turn_ids.shape[0]:
        raise ValueError(
            f"turn_values must be [B, K] and turn_ids [B, T] with the same B, got "
            f"{tuple(turn_values.shape)} and {tuple(turn_ids.shape)}"
        )
    if turn_ids.numel() and (turn_ids.min() < -1 or turn_ids.max() >= turn_values.shape[1]):
        raise ValueError(
            f"turn_ids must be -1 (not a model token) or a turn index in [0, {turn_values.shape[1]}), "
            f"got values in [{int(turn_ids.min())}, {int(turn_ids.max())}]"
        )
    is_model_token = turn_ids >= 0
    gathered = turn_values.gather(1, turn_ids.clamp(min=0).long())
    return torch.where(is_model_token, gathered, torch.zeros((), dtype=turn_values.dtype))


def _normalize_within_sets(values: torch.Tensor, set_ids: torch.Tensor, scale_by_std: bool, eps: float) -> torch.Tensor:
    """(v - mean_S) / (std_S + eps) per set S (population std), 0 for sets whose values are all equal.

    Statistics run in float64 so that sums of rewards like 0.9 * 0.1 do not leave float32 residue.
    ``set_ids`` [N] are non-negative ints; the sets need not be contiguous.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if values.numel() == 0:
        return values.clone()
    v = values.to(torch.float64)
    ids = set_ids.long()
    n_sets = int(ids.max()) + 1
    counts = torch.zeros(n_sets, dtype=torch.float64, device=v.device).index_add_(0, ids, torch.ones_like(v))
    sums = torch.zeros_like(counts).index_add_(0, ids, v)
    centered = v - (sums / counts.clamp(min=1))[ids]
    highest = torch.full_like(counts, -torch.inf).scatter_reduce(0, ids, v, "amax")
    lowest = torch.full_like(counts, torch.inf).scatter_reduce(0, ids, v, "amin")
    constant = (highest == lowest)[ids]  # also true for a set of one
    if scale_by_std:
        variance = torch.zeros_like(counts).index_add_(0, ids, centered**2) / counts.clamp(min=1)
        centered = centered / (variance.sqrt()[ids] + eps)
    return torch.where(constant, torch.zeros_like(centered), centered).to(values.dtype)


def _group_index(group_ids: torch.Tensor, batch: int) -> torch.Tensor:
    """Map arbitrary integer group ids [B] to 0..G-1."""
    if group_ids.dim() != 1 or group_ids.shape[0] != batch:
        raise ValueError(f"group_ids must be a 1-D tensor of length B={batch}, got {tuple(group_ids.shape)}")
    if group_ids.is_floating_point():
        raise ValueError("group_ids must be an integer tensor (one id per trajectory's problem)")
    return torch.unique(group_ids, return_inverse=True)[1]


def _check_turn_tensors(turn_rewards: torch.Tensor, turn_mask: torch.Tensor) -> None:
    if turn_rewards.dim() != 2 or turn_rewards.shape != turn_mask.shape:
        raise ValueError(
            f"turn_rewards and turn_mask must both be [B, K], got {tuple(turn_rewards.shape)} and "
            f"{tuple(turn_mask.shape)}"
        )
    if not turn_rewards.is_floating_point():
        raise ValueError("turn_rewards must be a floating-point tensor")
