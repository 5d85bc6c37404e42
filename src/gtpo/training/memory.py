"""How many tokens one micro-batch may pack: the activations autograd keeps for the backward, measured on the model.

A micro-batch's memory is dominated by what the forward saves for the backward, which grows with its token count
and with the model's width and depth: about 40 KiB a token for the shipped tiny model, 1.3 MiB for SmolLM2-135M
in float32 (30 layers), 3.3 MiB for Qwen2.5-1.5B without gradient checkpointing. One fixed token budget cannot
suit all of them: 8192 tokens of SmolLM2 keep ~11 GiB of activations on a CPU, twice TRL's whole process on the
same batch. So the default budget (``optim.micro_batch_tokens`` 0) is measured: a short forward of the policy
itself, through the update's own path (packed attention, checkpointing, autocast), counts the bytes autograd saves
for two token counts, and the budget is the largest that keeps them under ``optim.activation_gb``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

AUTO_MAX_TOKENS = 8192
"""The most tokens an automatic budget allows (the fixed default before budgets were measured: small models keep
the same micro-batches, and their updates the same bits)."""
BUDGET_MULTIPLE = 256
"""Automatic budgets are multiples of this (and at least this)."""
PROBE_TOKENS = (64, 128)
"""Token counts of the two probing forwards: their difference cancels what does not grow with tokens."""


def auto_token_budget(
    bytes_per_token: float, activation_bytes: float, cap: int = AUTO_MAX_TOKENS, multiple: int = BUDGET_MULTIPLE
) -> int:
    """The largest multiple of ``multiple`` tokens, at most ``cap``, whose activations (``bytes_per_token`` each)
    fit ``activation_bytes``; never below ``multiple`` (a trajectory longer than any budget still gets a
    micro-batch of its own)."""
    if bytes_per_token <= 0:
        return cap
    fitting = int(activation_bytes // bytes_per_token) // multiple * multiple
    return max(multiple, min(cap, fitting))


def saved_bytes(run: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct tensors autograd saves for the backward while ``run()`` executes its forward.

    Tensors sharing storage count once; storage of ``exclude`` (the parameters: weights a product saves are there
    anyway) counts not at all. The graph ``run`` builds is dropped without a backward."""
    excluded = {_storage_ptr(t) for t in exclude}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    del result
    return sum(seen.values())


def _storage_ptr(tensor: torch.Tensor) -> int:
    """Where a tensor's storage starts; for a sharded (DTensor) parameter, its local shard's."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.untyped_storage().data_ptr()


def saved_bytes_per_token(
    forward: Callable[[int], object], exclude: Iterable[torch.Tensor] = (), tokens: tuple[int, int] = PROBE_TOKENS
) -> float:
    """Bytes saved for the backward per token: the slope between ``forward(n)`` at the two token counts."""
    exclude = list(exclude)
    low, high = (saved_bytes(lambda n=n: forward(n), exclude) for n in tokens)
    return max(high - low, 0) / (tokens[1] - tokens[0])
