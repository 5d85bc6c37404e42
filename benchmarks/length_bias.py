"""Length bias of the normalization sets: how much of the push a trajectory gets comes from its turn count.

Not a speed benchmark: a measurement of the estimator, with ``adv_norm="group"`` as the baseline measured in
the same run. Synthetic groups under a *null* model in which the number of turns says nothing about success:
each trajectory draws its turn count uniformly from 1..K and its correctness with probability p, independently;
each turn makes an invalid call with probability q. Rewards are GTPO's (``gtpo.method.rewards.turn_rewards``, the
default penalties, no shaping), advantages ``gtpo.method.advantages.gtpo_advantages`` under every ``adv_norm``;
``hybrid`` mixes the pooled ``group`` advantages half and half with the group-normalized reward sum
(``hybrid_advantages``, ``traj_adv_weight`` 0.5); GRPO puts its one advantage on every turn. For every turn count n
the script prints, per scheme:

- ``weight/turn``: mean |sum of the trajectory's turn advantages| / n, relative to that of 1-turn trajectories.
  1.0 means a trajectory weighs in proportion to its turns and no more (each turn carries the advantage,
  as it carries its tokens); above 1.0, each turn of a long trajectory is pushed harder than a short one's.
- ``vs group``: that weight per turn divided by the group normalization's (the baseline);
- ``net``: mean signed sum of turn advantages (correct and wrong together) +- a 95% half-width. Under the
  null an estimator without length bias gives 0 for every n; a positive value trains the policy towards n
  turns, a negative one away from them. (With gamma < 1 a long correct trajectory's early returns are
  discounted, so every GTPO norm prefers short trajectories: that is the discount, not the normalization.
  With ``--invalid`` > 0 long trajectories really earn less, so GRPO's and GTPO's net push away from them.)

    python benchmarks/length_bias.py [--groups 8000] [--gamma 1.0] [--invalid 0.0]
"""

from __future__ import annotations

import argparse
import random

import torch

from gtpo.method.advantages import NORMS, grpo_advantages, gtpo_advantages, hybrid_advantages
from gtpo.method.rewards import format_ok, grpo_rewards, turn_rewards


def null_groups(
    groups: int, group_size: int, max_turns: int, p_correct: float, p_invalid: float, seed: int
) -> tuple[list[float], list[list[bool]], list[int]]:
    """(acc, invalid calls per turn, group ids) with turn counts independent of correctness."""
    rng = random.Random(seed)
    acc, invalid, group_ids = [], [], []
    for g in range(groups):
        for _ in range(group_size):
            n = rng.randint(1, max_turns)
            acc.append(float(rng.random() < p_correct))
            invalid.append([rng.random() < p_invalid for _ in range(n)])
            group_ids.append(g)
    return acc, invalid, group_ids


def turn_advantages(norm: str, acc: list[float], invalid: list[list[bool]], ids: list[int], gamma: float):
    """[B, K] advantages and the turn mask for one scheme (an ``adv_norm``, ``"hybrid"``, or ``"grpo"``)."""
    first_call = [True] * len(acc)
    rewards, mask = turn_rewards(acc, invalid, first_call)
    rewards, group_ids = rewards.double(), torch.tensor(ids)
    if norm == "grpo":
        traj = grpo_advantages(grpo_rewards([a == 1.0 for a in acc], format_ok(invalid, first_call)), group_ids)
        return torch.where(mask, traj[:, None].to(torch.float64), torch.zeros((), dtype=torch.float64)), mask
    if norm == "hybrid":
        pooled = gtpo_advantages(rewards, mask, group_ids, gamma, norm="group")
        return hybrid_advantages(pooled, grpo_advantages((rewards * mask).sum(dim=1), group_ids), mask, 0.5), mask
    return gtpo_advantages(rewards, mask, group_ids, gamma, norm=norm), mask


def by_turn_count(
    advantages: torch.Tensor, mask: torch.Tensor, max_turns: int
) -> dict[int, tuple[float, float, float]]:
    """n -> (weight per turn relative to n = 1, mean signed total advantage, 95% half-width of that mean)."""
    totals = advantages.sum(dim=1)
    turns = mask.sum(dim=1)
    out = {}
    for n in range(1, max_turns + 1):
        chosen = totals[turns == n]
        half = 1.96 * chosen.std().item() / chosen.numel() ** 0.5
        out[n] = (chosen.abs().mean().item() / n, chosen.mean().item(), half)
    return {n: (w / out[1][0], net, half) for n, (w, net, half) in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=8000)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-turns", type=int, default=5)
    parser.add_argument("--p-correct", type=float, default=0.5)
    parser.add_argument("--invalid", type=float, default=0.0, help="probability of an invalid call per turn")
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    acc, invalid, ids = null_groups(
        args.groups, args.group_size, args.max_turns, args.p_correct, args.invalid, args.seed
    )
    print(
        f"null model: {args.groups} groups x {args.group_size}, turns uniform in 1..{args.max_turns}, "
        f"p(correct)={args.p_correct}, p(invalid call)={args.invalid}, gamma={args.gamma}"
    )
    header = " | ".join(f"{n} turns" for n in range(1, args.max_turns + 1))
    print(f"| norm | quantity | {header} |")
    print("|---|---|" + "---|" * args.max_turns)
    rows = {
        norm: by_turn_count(*turn_advantages(norm, acc, invalid, ids, args.gamma), args.max_turns)
        for norm in (*NORMS, "hybrid", "grpo")
    }
    base = rows["group"]
    for norm, row in rows.items():
        print(f"| {norm} | weight/turn | " + " | ".join(f"{row[n][0]:.2f}" for n in row) + " |")
        print(f"| {norm} | vs group | " + " | ".join(f"{row[n][0] / base[n][0]:.2f}x" for n in row) + " |")
        print(f"| {norm} | net | " + " | ".join(f"{row[n][1]:+.3f} +- {row[n][2]:.3f}" for n in row) + " |")


if __name__ == "__main__":
    main()
