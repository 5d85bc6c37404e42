"""Trajectories -> right-padded tensors for the update; packing them into micro-batches by a token budget.

The step's batch is a right-padded [B, T] ``TokenBatch`` (cheap to index: ids, masks, advantages all line up;
padding has attention 0, loss_mask 0 and turn_ids -1, so nothing downstream can train on it). The model never
sees that padding: ``pack_micro_batches`` deals whole trajectories into micro-batches of at most a token budget
and lays each micro-batch out as one row without padding (``MicroBatch``); its scores come back in the padded
layout of its own rows, so the loss sees the same [S, T] tensors as for a padded batch.
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


@dataclass
class MicroBatch:
    """Whole trajectories of one forward/backward, packed back to back into one row of N tokens.

    ``rows`` [S] are their indices in the step's ``TokenBatch`` and ``seq_lens`` their lengths (in that order);
    ``scored`` [M] the packed positions whose token the loss needs (loss_mask 1), and ``scatter_index`` [M] the
    same tokens' flat positions in the [S, width] padded layout of these rows (``unpack``).
    """

    rows: torch.Tensor
    input_ids: torch.Tensor
    seq_lens: tuple[int, ...]
    scored: torch.Tensor
    scatter_index: torch.Tensor
    width: int

    @property
    def tokens(self) -> int:
        return sum(self.seq_lens)

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """[M] scores -> [S, width] (0 where nothing was scored); differentiable."""
        flat = values.new_zeros(len(self.seq_lens) * self.width)
        return flat.index_copy(0, self.scatter_index, values).view(len(self.seq_lens), self.width)

    def select(self, tensor: torch.Tensor) -> torch.Tensor:
        """This micro-batch's rows of a step-level [B, T] tensor, cut to [S, width]."""
        return tensor[self.rows, : self.width]

    def to(self, device: torch.device | str) -> MicroBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("rows", "input_ids", "scored", "scatter_index"):
            moved[name] = moved[name].to(device)
        return MicroBatch(**moved)


def pack_micro_batches(
    input_ids: torch.Tensor, lengths: torch.Tensor, loss_mask: torch.Tensor, token_budget: int
) -> list[MicroBatch]:
    """Deal the trajectories that have a loss token into micro-batches of at most ``token_budget`` tokens.

    ``input_ids``/``loss_mask`` [B, T] right-padded, ``lengths`` [B] real tokens per row. First-fit decreasing:
    longest first, each into the first micro-batch with room, so micro-batches come out few and full; a
    trajectory longer than the budget gets one of its own. Rows without a loss token are left out (they add
    nothing to any loss or gradient). The order is deterministic (ties by row index), so every run and rank
    packs the same way.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget (optim.micro_batch_tokens) must be >= 1, got {token_budget}")
    lengths_list = [int(n) for n in lengths.tolist()]
    trained = (loss_mask > 0).any(dim=1).tolist()
    order = sorted((r for r in range(len(lengths_list)) if trained[r]), key=lambda r: (-lengths_list[r], r))
    bins: list[list[int]] = []
    room: list[int] = []
    for r in order:
        n = lengths_list[r]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(r)
                room[b] -= n
                break
        else:
            bins.append([r])
            room.append(token_budget - n)
    return [_pack(sorted(rows), input_ids, lengths_list, loss_mask) for rows in bins]


def _pack(rows: list[int], input_ids: torch.Tensor, lengths: list[int], loss_mask: torch.Tensor) -> MicroBatch:
    seq_lens = tuple(lengths[r] for r in rows)
    width = max(seq_lens)
    index = torch.tensor(rows, dtype=torch.long, device=input_ids.device)
    ids = torch.cat([input_ids[r, : lengths[r]] for r in rows])[None]
    scored, scatter = [], []
    offset = 0
    for local, r in enumerate(rows):
        # position 0 has no prefix to be scored from (and is a prompt token, never in the loss)
        cols = torch.nonzero(loss_mask[r, 1 : lengths[r]] > 0).flatten() + 1
        scored.append(cols + offset)
        scatter.append(cols + local * width)
        offset += lengths[r]
    return MicroBatch(index, ids, seq_lens, torch.cat(scored), torch.cat(scatter), width)
