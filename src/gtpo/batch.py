"""Trajectories -> right-padded tensors for the update; micro-batch splitting.

Right padding keeps every row's positions starting at 0, as in generation. Padding has attention 0,
loss_mask 0 and turn_ids -1, so nothing downstream can train on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from gtpo.types import Trajectory


@dataclass
class TokenBatch:
    """[B, T] tensors: ids, attention, loss mask (1 = sampled token), turn ids (-1 = untrained), sampler log-probs."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    turn_ids: torch.Tensor
    sampler_logprobs: torch.Tensor

    def split(self, micro_batch_size: int) -> list[TokenBatch]:
        rows = self.input_ids.shape[0]
        return [self[lo : lo + micro_batch_size] for lo in range(0, rows, micro_batch_size)]

    def __getitem__(self, rows: slice) -> TokenBatch:
        return TokenBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def collate(trajectories: Sequence[Trajectory], pad_token_id: int) -> TokenBatch:
    if not trajectories:
        raise ValueError("collate: no trajectories")
    width = max(len(t.input_ids) for t in trajectories)
    rows = len(trajectories)
    batch = TokenBatch(
        input_ids=torch.full((rows, width), pad_token_id, dtype=torch.long),
        attention_mask=torch.zeros((rows, width), dtype=torch.long),
        loss_mask=torch.zeros((rows, width), dtype=torch.long),
        turn_ids=torch.full((rows, width), -1, dtype=torch.long),
        sampler_logprobs=torch.zeros((rows, width), dtype=torch.float32),
    )
    for row, t in enumerate(trajectories):
        n = len(t.input_ids)
        if not (len(t.loss_mask) == len(t.turn_ids) == len(t.sampler_logprobs) == n):
            raise ValueError(f"collate: trajectory {row} has token lists of different lengths")
        batch.input_ids[row, :n] = torch.tensor(t.input_ids)
        batch.attention_mask[row, :n] = 1
        batch.loss_mask[row, :n] = torch.tensor(t.loss_mask)
        batch.turn_ids[row, :n] = torch.tensor(t.turn_ids)
        batch.sampler_logprobs[row, :n] = torch.tensor(t.sampler_logprobs)
    return batch
