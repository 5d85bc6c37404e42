"""GTPO turn rewards for verl: from decoded multi-turn responses to rewards on each turn's last token.

Two entry points share one parser (``verl_parse``) and the trainer's reward step
(``gtpo.method.credit.trajectory_turn_rewards``, over the math in ``gtpo.method.rewards``):

- ``gtpo_reward_tensor(data, tokenizer)``: a whole batch (a verl ``DataProto`` with ``responses``,
  ``response_mask``, ``uid`` and ground truths). Groups are whole here, so code-similarity shaping
  (``shaped_accuracy``) is applied within each ``uid`` group, as in gtpo's own trainer.
- ``GTPORewardManager``: verl's reward-loop interface (``run_single``), which verl 0.9 calls on **one
  trajectory at a time**, during rollout. It returns the unshaped turn rewards (their sum as the score, the
  list in ``reward_extra_info``); the ``gtpo_tool_agent`` loop puts them on each turn's last token. Shaping
  needs the group's successful code, which a one-trajectory call cannot see, so the manager also records
  what shaping needs (``acc``, the trajectory's code, ``shaping_alpha``, the similarity) in
  ``reward_extra_info``, and ``gtpo.integrations.verl_shaping`` applies it once the group is whole.

Tool-call validity comes from the statuses ``SandboxTool`` recorded in the trajectory's ``extra_fields``
(``verl_parse.TOOL_CALLS_KEY``), which verl passes to the reward call as ``tool_extra_fields``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from gtpo.data.grading import grade_batch
from gtpo.integrations.verl_parse import TOOL_CALLS_KEY, build_turns, decode_segments, statuses_by_turn
from gtpo.integrations.verl_turns import place_turn_rewards, turn_spans
from gtpo.method.credit import TurnRewards, trajectory_turn_rewards
from gtpo.method.similarity import get_similarity
from gtpo.types import Problem, Trajectory

Similarity = Callable[[list[str], list[str]], torch.Tensor]
TURN_REWARDS_KEY = "gtpo_turn_rewards"
"""``reward_extra_info`` key: the JSON list of a trajectory's turn rewards (read by ``verl_agent_loop``)."""
TURN_SPANS_KEY = "gtpo_turn_spans"
"""``extra_fields`` key where the ``gtpo_tool_agent`` loop leaves each turn's token range for the reward."""
CODE_KEY, ALPHA_KEY, SIMILARITY_KEY = "gtpo_code", "gtpo_shaping_alpha", "gtpo_similarity"
"""``reward_extra_info`` keys for the group step (``verl_shaping``): the trajectory's code, the shaping scale it
still has to apply (0 when shaping is off or already applied) and the similarity's name
(``gtpo.method.similarity.get_similarity``)."""


@dataclass(frozen=True)
class RewardSettings:
    """gtpo's reward settings: the ``algo`` config fields of the same names, with their defaults
    (docs/algorithms.md), plus the grader's time limit per answer."""

    format_penalty: float = 0.1
    no_call_penalty: float = 0.1
    shaping: bool = True
    shaping_alpha: float = 0.5
    similarity: str = "tfidf"
    grade_timeout_s: float = 5.0


def read_trajectory(
    response_ids: Sequence[int],
    spans: Sequence[tuple[int, int]],
    tokenizer: Any,
    ground_truth: str,
    uid: str,
    tool_calls: Sequence[Sequence[Any]] | None,
) -> Trajectory:
    """One response as a gtpo ``Trajectory`` (turn records, final answer); ``correct`` is set by grading.
    ``tool_calls`` are ``SandboxTool``'s ``[[turn, status], ...]`` records for it."""
    turns = build_turns(decode_segments(response_ids, spans, tokenizer), statuses_by_turn(tool_calls))
    trajectory = Trajectory(problem=Problem(id=uid, question="", answer=str(ground_truth)), group_id=0, turns=turns)
    trajectory.final_answer = turns[-1].final_answer if turns else None
    return trajectory


def grade(trajectories: Sequence[Trajectory], timeout_s: float) -> None:
    """Set ``correct`` on each trajectory with gtpo's grader (math-verify in a worker process), and reward the
    last turn with it (1 if correct), as the math environment's last step does."""
    verdicts = grade_batch([t.final_answer for t in trajectories], [t.problem.answer for t in trajectories], timeout_s)
    for trajectory, verdict in zip(trajectories, verdicts, strict=True):
        trajectory.correct = trajectory.final_answer is not None and verdict
        if trajectory.turns:
            trajectory.turns[-1].reward = float(trajectory.correct)


def turn_rewards_for(
    trajectories: Sequence[Trajectory], settings: RewardSettings, similarity: Similarity | None
) -> TurnRewards:
    """gtpo's turn rewards (``gtpo.method.credit.trajectory_turn_rewards``) with the settings of a verl run; shaping
    within ``group_id`` groups when ``settings.shaping`` and a similarity are given."""
    return trajectory_turn_rewards(
        trajectories,
        format_penalty=settings.format_penalty,
        no_call_penalty=settings.no_call_penalty,
        shaping_alpha=settings.shaping_alpha,
        similarity=similarity if settings.shaping else None,
    )


def gtpo_reward_tensor(
    data: DataProto,
    tokenizer: Any,
    settings: RewardSettings = RewardSettings(),  # frozen, so sharing the default is safe
    similarity: Similarity | None = None,
) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    """Token-level rewards [B, T] for a batch: turn j's reward on turn j's last token; and per-row info.
    ``similarity`` replaces the one ``settings.similarity`` names (tests).

    Reads ``batch['responses']``, ``batch['response_mask']`` (and ``attention_mask`` to drop padding when
    present), ``non_tensor_batch['uid']``, ``non_tensor_batch['reward_model'][i]['ground_truth']`` and the
    tool statuses in ``non_tensor_batch['tool_extra_fields']`` (or ``'extra_fields'``).
    """
    responses, response_mask = data.batch["responses"], data.batch["response_mask"]
    lengths = _response_lengths(data)
    uids = [str(u) for u in data.non_tensor_batch["uid"]]
    group_of = {uid: g for g, uid in enumerate(dict.fromkeys(uids))}
    trajectories = []
    for i, uid in enumerate(uids):
        ids = responses[i, : lengths[i]].tolist()
        spans = turn_spans(response_mask[i, : lengths[i]])
        calls = _tool_calls(data.non_tensor_batch, i)
        trajectory = read_trajectory(ids, spans, tokenizer, _ground_truth(data.non_tensor_batch, i), uid, calls)
        trajectory.group_id = group_of[uid]
        trajectories.append(trajectory)
    grade(trajectories, settings.grade_timeout_s)
    turns = turn_rewards_for(trajectories, settings, similarity or get_similarity(settings.similarity))
    token_rewards = place_turn_rewards(turns.rewards, response_mask.long())
    info = _info(trajectories, turns, settings, shaped=True)
    return token_rewards.to(torch.float32), info


def _info(
    trajectories: Sequence[Trajectory], turns: TurnRewards, settings: RewardSettings, shaped: bool
) -> dict[str, list[Any]]:
    """Per-row ``reward_extra_info``. ``ALPHA_KEY`` is the shaping the group step still has to apply: 0 when
    shaping is off or the rewards are ``shaped`` already (so no batch is shaped twice)."""
    alpha = settings.shaping_alpha if settings.shaping and not shaped else 0.0
    return {
        "acc": [float(t.correct) for t in trajectories],
        "shaped_acc": [float(a) for a in turns.acc],
        "format_ok": [float(ok) for ok in turns.fmt_ok],
        "num_model_turns": [t.num_turns for t in trajectories],
        "invalid_calls": [sum(turn.invalid_call for turn in t.turns) for t in trajectories],
        TURN_REWARDS_KEY: [json.dumps(turns.rewards[i][turns.mask[i]].tolist()) for i in range(len(trajectories))],
        CODE_KEY: [t.code for t in trajectories],
        ALPHA_KEY: [alpha] * len(trajectories),
        SIMILARITY_KEY: [settings.similarity] * len(trajectories),
    }


def _tool_calls(non_tensor_batch: dict[str, np.ndarray], i: int) -> list[Any] | None:
    """Row i's ``SandboxTool`` records, from the extra fields verl passes (``tool_extra_fields`` to the reward
    loop; ``extra_fields`` in the trainer's batch)."""
    for key in ("tool_extra_fields", "extra_fields"):
        if key in non_tensor_batch:
            extra = getattr(non_tensor_batch[key][i], "data", non_tensor_batch[key][i]) or {}
            return extra.get(TOOL_CALLS_KEY)
    return None


def _response_lengths(data: DataProto) -> list[int]:
    responses = data.batch["responses"]
    if "attention_mask" in data.batch:
        return data.batch["attention_mask"][:, -responses.shape[1] :].sum(dim=1).tolist()
    return [responses.shape[1]] * responses.shape[0]


def _ground_truth(non_tensor_batch: dict[str, np.ndarray], i: int) -> str:
    reward_model = non_tensor_batch["reward_model"][i]
    return str(reward_model["ground_truth"])


@register("gtpo")
class GTPORewardManager(RewardManagerBase):
    """verl reward-loop manager: one trajectory -> gtpo turn rewards (shaped later, by the group step).

    Configure with ``reward.reward_manager.source=importlib``,
    ``reward.reward_manager.module.path=pkg://gtpo.integrations.verl_reward`` and
    ``reward.reward_manager.name=GTPORewardManager``. Settings (``RewardSettings`` fields) are read from
    ``reward.reward_kwargs``, where verl's own DAPO manager reads its arguments.
    """

    def __init__(self, config: Any, tokenizer: Any, compute_score: Any = None, **kwargs: Any) -> None:
        super().__init__(config, tokenizer, compute_score)
        kwargs_cfg = _select(config, ("reward", "reward_kwargs")) or {}
        fields = RewardSettings.__dataclass_fields__
        self.settings = RewardSettings(**{k: v for k, v in dict(kwargs_cfg).items() if k in fields})

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        """Score the last row of ``data`` (verl passes one trajectory, possibly as several outputs)."""
        row = data[-1:]
        return await self.loop.run_in_executor(None, self.score_row, row)

    def score_row(self, row: DataProto) -> dict[str, Any]:
        """The synchronous body of ``run_single``: parse, grade, turn rewards (no shaping: one trajectory)."""
        ids, spans = _row_tokens(row)
        uid = str(row.non_tensor_batch["uid"][0]) if "uid" in row.non_tensor_batch else ""
        ground_truth, calls = _ground_truth(row.non_tensor_batch, 0), _tool_calls(row.non_tensor_batch, 0)
        trajectory = read_trajectory(ids, spans, self.tokenizer, ground_truth, uid, calls)
        grade([trajectory], self.settings.grade_timeout_s)
        turns = turn_rewards_for([trajectory], self.settings, similarity=None)
        info = {key: values[0] for key, values in _info([trajectory], turns, self.settings, shaped=False).items()}
        return {"reward_score": float(turns.rewards[turns.mask].sum()), "reward_extra_info": info}


def _row_tokens(row: DataProto) -> tuple[list[int], list[tuple[int, int]]]:
    """Unpadded response ids and turn spans of a one-row DataProto.

    The spans come from ``response_mask`` when the batch has it, else from what the ``gtpo_tool_agent`` loop
    left in ``tool_extra_fields`` (verl's rollout-time reward call carries no response mask).
    """
    ids = row.batch["responses"][0, : _response_lengths(row)[0]].tolist()
    if "response_mask" in row.batch:
        return ids, turn_spans(row.batch["response_mask"][0, : len(ids)])
    extra = row.non_tensor_batch.get("tool_extra_fields")
    spans = (extra[0] or {}).get(TURN_SPANS_KEY) if extra is not None else None
    if spans is None:
        raise ValueError(
            "GTPORewardManager needs the turn boundaries: run the rollout with the gtpo_tool_agent loop "
            "(gtpo.integrations.verl_agent_loop), which records them, or pass response_mask"
        )
    return ids, [(int(s), int(e)) for s, e in spans]


def _select(config: Any, path: Sequence[str]) -> Any:
    node = config
    for key in path:
        if node is None:
            return None
        node = node.get(key) if hasattr(node, "get") else getattr(node, key, None)
    return node
