"""The ``gtpo_tool_agent`` loop: verl's tool agent loop, with GTPO's turn rewards on each turn's last token.

verl 0.9's agent loop writes a trajectory's reward as one number on its last token (``AgentLoopOutput.
as_dict``), which would leave GTPO with outcome rewards only. This loop changes two things and nothing else:
it records each turn's token range in ``extra_fields`` (verl's rollout-time reward call gets no response
mask, and ``GTPORewardManager`` needs the turns), and it returns an output whose ``rm_scores`` carry the
per-turn rewards that ``GTPORewardManager`` reported, one per turn end. Their sum equals the score verl logs.

Register it with ``actor_rollout_ref.rollout.agent.agent_loop_config_path=examples/verl/agent_loops.yaml``
(or by importing this module) and select it with ``actor_rollout_ref.rollout.agent.default_agent_loop=
gtpo_tool_agent``. Only verl's v1 trainer (``trainer.use_v1=True``, the default) builds ``rm_scores`` from
``as_dict``; the deprecated v0 trainer would fall back to one reward per trajectory.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop

from gtpo.integrations.verl_reward import TURN_REWARDS_KEY, TURN_SPANS_KEY
from gtpo.integrations.verl_turns import place_turn_rewards, turn_spans


class TurnRewardOutput(AgentLoopOutput):
    """An ``AgentLoopOutput`` whose ``rm_scores`` hold one reward per turn, on the turn's last token."""

    @classmethod
    def wrap(cls, output: AgentLoopOutput) -> TurnRewardOutput:
        """The same output, as this class; which fields were set is kept (``as_dict`` dumps only those)."""
        values = {name: getattr(output, name) for name in type(output).model_fields}
        return cls.model_construct(_fields_set=set(output.model_fields_set), **values)

    def as_dict(self) -> dict[str, Any]:
        output = super().as_dict()
        info = self.extra_fields.get("reward_extra_info") or {}
        if TURN_REWARDS_KEY in info and "rm_scores" in output:
            output["rm_scores"] = turn_scores(json.loads(info[TURN_REWARDS_KEY]), output["response_mask"])
        return output


def turn_scores(rewards: list[float], response_mask: torch.Tensor) -> torch.Tensor:
    """[T] float32: ``rewards[j]`` on the last token of turn j of this response mask."""
    n_turns = len(turn_spans(response_mask))
    if len(rewards) != max(n_turns, 1):
        raise ValueError(f"{len(rewards)} turn rewards for a response with {n_turns} model turns")
    values = torch.tensor([rewards], dtype=torch.float32)
    return place_turn_rewards(values, response_mask.reshape(1, -1).long())[0]


@register("gtpo_tool_agent")
class GTPOToolAgentLoop(ToolAgentLoop):
    """verl's ``tool_agent`` loop; its output records turn spans and places per-turn rewards."""

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        output = await super().run(sampling_params, **kwargs)
        return with_turn_spans(output)


def with_turn_spans(output: AgentLoopOutput) -> TurnRewardOutput:
    """Record the turn token ranges for the reward manager and switch to per-turn ``rm_scores``."""
    output.extra_fields[TURN_SPANS_KEY] = [list(span) for span in turn_spans(output.response_mask)]
    return TurnRewardOutput.wrap(output)
