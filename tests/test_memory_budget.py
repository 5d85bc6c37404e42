"""The measured micro-batch budget: saved-activation bytes counted by hand, budgets by hand, and the update's probe
through its own path (checkpointing shrinks what it measures; a small budget splits the batch)."""

import copy

import pytest
import torch

from gtpo.components import enable_checkpointing
from gtpo.config import ConfigError, from_dict, validate
from gtpo.distributed import DistContext
from gtpo.training.batch import TokenBatch
from gtpo.training.memory import AUTO_MAX_TOKENS, auto_token_budget, saved_bytes, saved_bytes_per_token
from gtpo.training.update import PolicyUpdate

MIB = 2**20


@pytest.mark.parametrize(
    ("per_token", "budget", "expected"),
    [
        (1 * MIB, 2048 * MIB, 2048),  # exactly 2048 tokens fit
        (1.3 * MIB, 2048 * MIB, 1536),  # 1575 fit, rounded down to a multiple of 256
        (40 * 2**10, 2048 * MIB, AUTO_MAX_TOKENS),  # 52,428 fit: capped
        (100 * MIB, 2048 * MIB, 256),  # 20 fit: never below one multiple
        (0.0, 2048 * MIB, AUTO_MAX_TOKENS),  # nothing saved (a frozen model): the cap
    ],
)
def test_auto_token_budget_by_hand(per_token, budget, expected):
    assert auto_token_budget(per_token, budget) == expected


def test_saved_bytes_counts_each_saved_tensor_once_and_leaves_out_excluded_storage():
    w = torch.nn.Parameter(torch.ones(16))

    def forward(n: int) -> torch.Tensor:
        x = torch.ones(n, 16, requires_grad=True)
        y = x * w  # saves x [n, 16] and w
        return (y * y).sum()  # saves y [n, 16], twice: one storage

    # per token: x and y, 16 float32 each = 128 bytes; w (64 bytes) only when not excluded
    assert saved_bytes(lambda: forward(10), exclude=[w]) == 10 * 128
    assert saved_bytes(lambda: forward(10)) == 10 * 128 + 64
    assert saved_bytes_per_token(forward, exclude=[w]) == 128.0
    assert saved_bytes_per_token(forward) == 128.0  # the constant cancels in the slope


def test_budget_fields_are_validated():
    with pytest.raises(ConfigError, match=r"optim\.activation_gb"):
        validate(from_dict({"optim": {"activation_gb": 0}}))
    with pytest.raises(ConfigError, match=r"optim\.micro_batch_tokens"):
        validate(from_dict({"optim": {"micro_batch_tokens": -1}}))


def long_batch(vocab: int, lengths=(200, 150, 120)):
    gen = torch.Generator().manual_seed(0)
    rows, width = len(lengths), max(lengths)
    ids = torch.randint(1, vocab, (rows, width), generator=gen)
    attention = torch.zeros(rows, width, dtype=torch.long)
    for r, n in enumerate(lengths):
        attention[r, :n] = 1
    loss_mask = attention.clone()
    loss_mask[:, :4] = 0
    batch = TokenBatch(ids * attention, attention, loss_mask, loss_mask - 1, torch.zeros(rows, width))
    return batch, torch.randn(rows, width, generator=gen) * loss_mask, loss_mask.float()


def measured_update(model, checkpointing=False, **optim) -> PolicyUpdate:
    cfg = from_dict(
        {
            "model": {"gradient_checkpointing": checkpointing},
            "optim": {"micro_batch_tokens": 0, **optim},
            "algo": {"is_correction": "none"},
        }
    )
    model = copy.deepcopy(model)
    if checkpointing:
        enable_checkpointing(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return PolicyUpdate(cfg, model, optimizer, scheduler, ctx=DistContext(), device=torch.device("cpu"))


def test_the_update_measures_its_model_and_splits_a_batch_by_the_budget(tiny_model):
    plain, checkpointed = measured_update(tiny_model), measured_update(tiny_model, checkpointing=True)
    hidden, layers = tiny_model.config.hidden_size, tiny_model.config.num_hidden_layers
    # each layer keeps at least its input (hidden float32 values a token); checkpointing keeps little more than that
    assert plain.bytes_per_token > layers * hidden * 4
    assert checkpointed.bytes_per_token < plain.bytes_per_token / 3
    assert plain.token_budget == AUTO_MAX_TOKENS  # a tiny model: far under 2 GiB at the cap

    # a budget so small that 256 tokens are all it allows: 470 tokens of three trajectories -> three passes
    small = measured_update(tiny_model, activation_gb=plain.bytes_per_token * 300 / 2**30)
    assert small.token_budget == 256
    batch, advantages, loss_mask = long_batch(tiny_model.config.vocab_size)
    assert small(batch, advantages, loss_mask)["perf/micro_batches"] == 3
    assert plain(batch, advantages, loss_mask)["perf/micro_batches"] == 1


def test_a_set_budget_is_used_as_is_without_measuring(tiny_model):
    update = measured_update(tiny_model, micro_batch_tokens=300)
    assert update.token_budget == 300 and update.bytes_per_token is None
