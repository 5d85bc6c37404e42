"""Packing trajectories into micro-batches by a token budget: whole trajectories, no padding, nothing lost."""

import pytest
import torch

from gtpo.training.batch import pack_micro_batches


def padded(lengths, trained_from=2):
    """Right-padded ids (row r holds 100 * r + position) and a loss mask that starts at ``trained_from``."""
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width)
    for r, n in enumerate(lengths):
        ids[r, :n] = 100 * r + torch.arange(n)
        mask[r, trained_from:n] = 1
    return ids, torch.tensor(lengths), mask


def test_first_fit_decreasing_fills_micro_batches_up_to_the_budget():
    ids, lengths, mask = padded([5, 9, 3, 7, 2], trained_from=1)
    micro = pack_micro_batches(ids, lengths, mask, token_budget=10)
    # longest first: 9 -> [9]; 7 -> [7]; 5 -> new [5]; 3 -> fits with 7 (10); 2 -> fits with 5 (7)
    assert sorted(m.rows.tolist() for m in micro) == [[0, 4], [1], [2, 3]]
    assert all(m.tokens <= 10 for m in micro)
    assert sorted(r for m in micro for r in m.rows.tolist()) == [0, 1, 2, 3, 4]


def test_a_trajectory_longer_than_the_budget_gets_a_micro_batch_of_its_own():
    ids, lengths, mask = padded([12, 3, 4])
    micro = pack_micro_batches(ids, lengths, mask, token_budget=8)
    assert [m.rows.tolist() for m in micro] == [[0], [1, 2]]


def test_rows_without_loss_tokens_are_not_packed():
    ids, lengths, mask = padded([3, 3, 3, 3, 3])
    mask[2] = 0  # e.g. filtered out: nothing to train, so it is not packed at all
    micro = pack_micro_batches(ids, lengths, mask, token_budget=6)
    assert [m.rows.tolist() for m in micro] == [[0, 1], [3, 4]]


def test_packed_row_positions_and_unpacking_round_trip():
    ids, lengths, mask = padded([4, 6, 3])
    (mb,) = pack_micro_batches(ids, lengths, mask, token_budget=100)
    assert mb.seq_lens == (4, 6, 3) and mb.width == 6
    assert mb.input_ids.tolist() == [[0, 1, 2, 3, 100, 101, 102, 103, 104, 105, 200, 201, 202]]
    # the loss tokens (positions >= 2 of each row) at their packed positions
    assert mb.scored.tolist() == [2, 3, 6, 7, 8, 9, 12]
    scores = mb.input_ids[0, mb.scored].float()  # stand-in scores: the token ids themselves
    grid = mb.unpack(scores)
    assert grid.shape == (3, 6)
    expected = torch.where(mb.select(mask) > 0, mb.select(ids).float(), torch.zeros(()))
    assert torch.equal(grid, expected)


def test_unpack_passes_gradients_to_the_scores():
    ids, lengths, mask = padded([4, 5])
    (mb,) = pack_micro_batches(ids, lengths, mask, token_budget=100)
    scores = torch.randn(len(mb.scored), requires_grad=True)
    (mb.unpack(scores) * 2).sum().backward()
    assert torch.equal(scores.grad, torch.full_like(scores, 2.0))


def test_position_zero_is_never_scored_and_a_bad_budget_is_refused():
    ids, lengths, mask = padded([3, 3], trained_from=0)
    (mb,) = pack_micro_batches(ids, lengths, mask, token_budget=10)
    assert mb.scored.tolist() == [1, 2, 4, 5]  # the first token of each trajectory has no prefix
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        pack_micro_batches(ids, lengths, mask, token_budget=0)
