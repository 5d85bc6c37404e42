"""gtpo in verl: the GTPO advantage estimator, the turn-reward manager, the sandbox tool and agent loop.

Importing this module registers, in the importing process, the advantage estimators ``gtpo`` and
``gtpo_turn_index`` (verl's ``register_adv_est``) and the reward manager ``gtpo``. verl imports it in every
one of its processes when the environment says ``VERL_USE_EXTERNAL_MODULES=gtpo.integrations.verl`` (read by
``import verl``), which is how ``python -m verl.trainer.main_ppo ... algorithm.adv_estimator=gtpo`` finds the
estimator. The agent loop, the tool and the shaping replay buffer (``verl_sampler``) are loaded by verl from
their config (examples/verl/), so they are not imported here: they pull in verl's rollout server stack and
TransferQueue.

Launch commands, settings and what is tested: docs/verl.md.
"""

from __future__ import annotations

from gtpo.integrations.verl_advantage import (
    compute_gtpo_advantage,
    compute_gtpo_turn_index_advantage,
    gtpo_token_advantages,
)
from gtpo.integrations.verl_reward import GTPORewardManager, RewardSettings, gtpo_reward_tensor
from gtpo.integrations.verl_shaping import shape_scores

__all__ = [
    "GTPORewardManager",
    "RewardSettings",
    "compute_gtpo_advantage",
    "compute_gtpo_turn_index_advantage",
    "gtpo_reward_tensor",
    "gtpo_token_advantages",
    "shape_scores",
]
