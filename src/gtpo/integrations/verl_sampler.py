"""verl v1 replay buffers that apply GTPO's code-similarity shaping to each sampled batch of whole groups.

Select with ``trainer.v1.sampler.custom_sampler.path=pkg://gtpo.integrations.verl_sampler`` and
``trainer.v1.sampler.custom_sampler.name=GTPOReplayBuffer`` (``trainer.v1.trainer_mode=sync``, the default) or
``GTPOReplayBufferAsync`` (the async modes). Each is verl's own buffer, unchanged, plus one step after
``sample``: read the batch's ``rm_scores`` and reward info from TransferQueue, add the shaping
(``verl_shaping.shape_scores``), write ``rm_scores`` back; the advantage step then reads the shaped scores.
Validation batches are left as scored, so validation accuracy stays the plain one.

verl builds a custom buffer with only its base arguments, and its own DAPO filter is configured through the
built-in buffer; keys set in ``trainer.v1.sampler.sampler_kwargs`` that are ``ReplayBuffer`` arguments
(``filter_groups_metric``, ``train_batch_size``, ``gen_batch_size``, ``max_inflight_gen_batches``,
``sync_refill_failed_groups``) are passed on. Shaping never changes which groups DAPO drops: a group it lifts
has a success and a failure, so its scores differ anyway.
"""

from __future__ import annotations

from typing import Any

import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync
from verl.workers.utils.padding import response_to_nested

from gtpo.integrations.verl_shaping import shape_scores

FORWARDED = ("filter_groups_metric", "train_batch_size", "gen_batch_size", "max_inflight_gen_batches")
FORWARDED += ("sync_refill_failed_groups",)
"""``ReplayBuffer`` arguments verl leaves out for a custom buffer, taken from ``sampler_kwargs`` when set."""


def shape_batch_in_queue(batch: KVBatchMeta) -> dict[str, float]:
    """Shape the ``rm_scores`` of a sampled batch in TransferQueue; returns the shaping metrics."""
    fields = ["uid", "rm_scores", "response_mask", "extra_fields"]
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
    response_mask = data["response_mask"]
    scores = data["rm_scores"].to_padded_tensor(padding=0.0)
    infos = []
    for extra in list(data["extra_fields"]):
        extra = getattr(extra, "data", extra)
        infos.append(extra.get("reward_extra_info") if isinstance(extra, dict) else None)
    uids = [getattr(u, "data", u) for u in list(data["uid"])]
    shaped, metrics = shape_scores(scores, response_mask.to_padded_tensor(padding=0), uids, infos)
    if shaped is not scores:
        nested = TensorDict({"rm_scores": response_to_nested(shaped, response_mask)}, batch_size=len(batch))
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=nested)
    return metrics


class _GroupShaping:
    """``sample`` as the buffer's own, then the shaping of the training batch."""

    def __init__(self, *args: Any, sampler_kwargs: Any = None, **kwargs: Any) -> None:
        extra = {k: sampler_kwargs[k] for k in FORWARDED if sampler_kwargs is not None and k in sampler_kwargs}
        super().__init__(*args, sampler_kwargs=sampler_kwargs, **{**kwargs, **extra})

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[KVBatchMeta, dict]:
        batch, metrics = super().sample(global_steps, partition_id, batch_size)  # type: ignore[misc]
        if partition_id != "val" and batch.keys:
            metrics.update(shape_batch_in_queue(batch))
        return batch, metrics


class GTPOReplayBuffer(_GroupShaping, ReplayBuffer):
    """verl's sync-mode buffer with GTPO shaping (``trainer.v1.trainer_mode=sync``)."""


class GTPOReplayBufferAsync(_GroupShaping, ReplayBufferAsync):
    """verl's async-mode buffer with GTPO shaping (``colocate_async``, ``separate_async``)."""
