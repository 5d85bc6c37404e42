"""The groups one training step learns from: roll out, gather, score, leave out groups without signal, refill.

With ``filter.groups`` off this is one rollout of ``problems_per_step`` groups. With it on (DAPO's
dynamic sampling), groups whose trajectories all agree (``gtpo.method.rewards.informative_groups`` on accuracy, as DAPO
and SimpleTIR, or on the trajectory reward) are left out and more problems are rolled out, in rounds of exactly
the missing number, until ``problems_per_step`` groups differ or the cap on extra problems is spent.

Orchestration only, no formula: rolling out and scoring are plain functions given by the caller. This module
is the one owner of a trajectory's ``group_id`` (it numbers the groups of a step, refills included, and the
rollout stamps what it is given) and it assigns no credit: the caller credits the kept groups once. Under
torchrun each rank rolls out its round-robin share of a round and every rank gathers all turn records (groups
are normalized whole), so all ranks take the same decisions and run the same number of rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gtpo.distributed import DistContext, gather_objects, shard_indices, strip_tokens
from gtpo.envs.base import EnvFactory
from gtpo.method.rewards import informative_groups
from gtpo.rollout.episode import rollout
from gtpo.rollout.spec import EpisodeSpec
from gtpo.types import Problem, Trajectory

ROUND_SEED_STRIDE = 100_003
"""Seeds of a step's refill rounds are this far apart, so a refill never repeats the first round's draws."""


@dataclass(frozen=True)
class RoundShare:
    """This rank's part of one rollout round: one trajectory to roll out per entry."""

    problems: list[Problem]
    group_ids: list[int]
    """The group each trajectory belongs to: the rollout stamps these as ``Trajectory.group_id``."""
    indices: list[int]
    """Positions in the round's global batch (trajectory j samples problem j // G)."""
    seed: int
    """This rank's seed for this round of the step."""


RolloutFn = Callable[[RoundShare], tuple[list[Trajectory], dict[str, float]]]
"""A round's share -> its trajectories (in order, stamped with the share's group ids) and stage timings."""
ScoreFn = Callable[[list[Trajectory], list[int]], list[float]]
"""(trajectories, token lengths) -> each trajectory's reward, for ``filter_metric="score"``."""


@dataclass
class StepGroups:
    """What one step trains on, and what it cost to find it."""

    local: list[Trajectory] = field(default_factory=list)
    """This rank's trajectories of the kept groups, with tokens."""
    local_positions: list[int] = field(default_factory=list)
    """Where each of ``local`` sits in ``kept``."""
    kept: list[Trajectory] = field(default_factory=list)
    """All ranks' kept trajectories (turn records only), in a fixed global order."""
    kept_lengths: list[int] = field(default_factory=list)
    generated: list[Trajectory] = field(default_factory=list)
    """Everything rolled out this step, kept or not (turn records only)."""
    model_tokens: int = 0
    """Tokens the model generated this step, kept or not, all ranks."""
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def collect_groups(
    take: Callable[[int], list[Problem]],
    roll: RolloutFn,
    ctx: DistContext,
    *,
    problems_per_step: int,
    group_size: int,
    max_total_tokens: int,
    filter_groups: bool,
    max_extra_problems: int,
    filter_metric: str = "accuracy",
    score: ScoreFn | None = None,
    seed: int = 0,
) -> StepGroups:
    """Roll out ``problems_per_step`` groups of ``group_size`` (trajectory j of a round samples problem j // G),
    filtering and refilling as the module docstring says; ``filter_metric`` is "accuracy" (correctness must
    differ within a group) or "score" (the trajectory reward ``score`` gives must). Logs filter/* counts
    (filter on or off) and rollout/tokens_per_informative_group."""
    if filter_metric not in ("accuracy", "score"):
        raise ValueError(f"filter_metric (config filter.metric) must be accuracy or score, got {filter_metric!r}")
    if filter_metric == "score" and score is None:
        raise ValueError("filter_metric='score' needs a score function")
    out = StepGroups()
    need, extra_left, groups_seen = problems_per_step, max_extra_problems, 0
    informative = dropped = rounds = 0
    while need > 0:
        problems = take(need)
        total = len(problems) * group_size
        local_index = shard_indices(total, ctx)
        share = RoundShare(
            problems=[problems[j // group_size] for j in local_index],
            group_ids=[groups_seen + j // group_size for j in local_index],
            indices=local_index,
            seed=seed + ROUND_SEED_STRIDE * rounds,
        )
        local, timings = roll(share)
        # Tokens used, for the overlong penalty: a trajectory cut by a length cap counts as at the cap.
        records = [
            (strip_tokens(t), max_total_tokens if t.finish_reason == "length" else len(t.input_ids)) for t in local
        ]
        gathered = gather_objects(records, local_index, total, ctx)
        everyone, lengths = [t for t, _ in gathered], [n for _, n in gathered]
        by_score = filter_metric == "score"
        values = score(everyone, lengths) if by_score else [float(t.correct) for t in everyone]
        flags = informative_groups(values, [t.group_id for t in everyone])
        keep = flags if filter_groups else [True] * total
        positions = {}
        for j in range(total):
            if keep[j]:
                positions[j] = len(out.kept)
                out.kept.append(everyone[j])
                out.kept_lengths.append(lengths[j])
        for trajectory, j in zip(local, local_index, strict=True):
            if keep[j]:
                out.local.append(trajectory)
                out.local_positions.append(positions[j])
        out.generated += everyone
        for key, value in timings.items():
            out.timings[key] = out.timings.get(key, 0.0) + value
        informative += sum(flags[::group_size])
        dropped += sum(not k for k in keep[::group_size])
        groups_seen += len(problems)
        rounds += 1
        # Another round only while informative groups are missing and the cap on extra problems allows.
        need = min(problems_per_step - (groups_seen - dropped), extra_left) if filter_groups else 0
        extra_left -= max(need, 0)
    out.model_tokens = sum(turn.num_model_tokens for t in out.generated for turn in t.turns)
    out.metrics = {
        "filter/groups_generated": float(groups_seen),
        "filter/groups_informative": float(informative),
        "filter/groups_dropped": float(dropped),
        "filter/rounds": float(rounds),
    }
    if informative:
        out.metrics["rollout/tokens_per_informative_group"] = out.model_tokens / informative
    return out


def roll_round(
    share: RoundShare, *, sampler: Any, tokenizer: Any, make_env: EnvFactory, spec: EpisodeSpec
) -> tuple[list[Trajectory], dict[str, float]]:
    """The ``RolloutFn`` of a training step (bind the keywords): one trajectory per problem of the share."""
    with torch.no_grad():
        result = rollout(
            share.problems, 1, sampler, tokenizer, make_env, spec, seed=share.seed, group_ids=share.group_ids
        )
    return result.trajectories, result.timings.as_dict()
