"""The engine's attention: a transformers attention function over the engine's slot KV cache.

transformers lets a model call a registered attention function (``AttentionInterface``) in place of its own.
The engine's private copy of the policy is built with ``attn_implementation=ATTENTION_NAME``, so the model's
own modeling code (projections, rotary embeddings, norms, MLPs) runs unchanged and only two things differ:
the new keys and values are written into fixed slots of a preallocated cache at each token's absolute
position, and attention reads that cache. The model is called without a transformers cache, so nothing in
its forward allocates, synchronizes with the host, or changes shape between decode steps, which is what
lets a decode step be captured once as a CUDA graph and replayed.

What a call needs (which slots, which positions, the mask) is an ``AttentionPlan`` that the engine sets on
every attention module (attribute ``PLAN_ATTRIBUTE``) before the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

ATTENTION_NAME = "gtpo_slot_cache"
PLAN_ATTRIBUTE = "_gtpo_attention_plan"


@dataclass
class AttentionPlan:
    """Where one forward call writes its keys/values and what each query may read.

    The call's input is [R, n] tokens (R rows, n tokens each). ``write_slot``/``write_pos`` [R * n] give each
    token's cache slot and position (padding writes to the cache's spare slot). Rows read either slots
    0..R-1 in order (``read_slots`` None: the decode step, no gather), or a run of consecutive slots
    (``read_slots`` a slice: a view of the cache, no copy), or the slots in ``read_slots`` [R] (a gather).
    ``mask`` [R, 1, n, kv_len] is True where a query may attend to a cache position (position <= its own).
    """

    k_cache: list[torch.Tensor]
    v_cache: list[torch.Tensor]
    write_slot: torch.Tensor
    write_pos: torch.Tensor
    mask: torch.Tensor
    kv_len: int
    read_slots: torch.Tensor | slice | None = None
    _bias: torch.Tensor | None = None
    _bias_of: torch.Tensor | None = None
    """``mask`` in SDPA's additive form and the mask it was made from (see ``additive_mask``)."""


def slot_cache_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Write ``key``/``value`` [R, Hkv, n, D] into the cache, attend ``query`` [R, Hq, n, D] over it.

    Returns [R, n, Hq, D] as transformers' attention functions do. Grouped-query attention reads each
    key/value head once for its group of query heads (no repeated copies of the cache).
    """
    plan: AttentionPlan = getattr(module, PLAN_ATTRIBUTE)
    layer = module.layer_idx
    rows, q_heads, n, dim = query.shape
    kv_heads = key.shape[1]
    write_kv(
        plan,
        layer,
        key.transpose(1, 2).reshape(rows * n, kv_heads, dim),
        value.transpose(1, 2).reshape(rows * n, kv_heads, dim),
    )
    scale = dim**-0.5 if scaling is None else scaling
    if n == 1:
        grouped = query.view(rows, kv_heads, q_heads // kv_heads, dim)
        return decode_attention(plan, layer, grouped, scale).reshape(rows, 1, q_heads, dim), None
    return prefill_attention(plan, layer, query, scale).transpose(1, 2), None


def write_kv(plan: AttentionPlan, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
    """Write one call's keys/values [R * n, Hkv, D] at (``plan.write_slot``, ``plan.write_pos``) of ``layer``'s cache.

    Cache layout [slots, kv_heads, max_len, dim]: index (slot, :, position) -> one token's [kv_heads, dim].
    """
    plan.k_cache[layer][plan.write_slot, :, plan.write_pos] = key
    plan.v_cache[layer][plan.write_slot, :, plan.write_pos] = value


def read_kv(plan: AttentionPlan, layer: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values [R, Hkv, kv_len, D] that the call's ``rows`` rows read, as ``plan.read_slots`` says."""
    k_cache, v_cache, span = plan.k_cache[layer], plan.v_cache[layer], plan.kv_len
    if plan.read_slots is None:
        return k_cache[:rows, :, :span], v_cache[:rows, :, :span]
    if isinstance(plan.read_slots, slice):  # a view: attention reads the cache in place (same result as a copy)
        return k_cache[plan.read_slots, :, :span], v_cache[plan.read_slots, :, :span]
    # index_select copies span positions per slot, ~3x faster on a CPU than advanced indexing
    return (
        k_cache[:, :, :span].index_select(0, plan.read_slots),
        v_cache[:, :, :span].index_select(0, plan.read_slots),
    )


def decode_attention(plan: AttentionPlan, layer: int, query: torch.Tensor, scale: float) -> torch.Tensor:
    """One new token per row: ``query`` [R, Hkv, group, D] (a group's query heads share a key/value head) over
    the cached keys/values; returns [R, Hkv, group, D].

    Each key/value head is read once for its group of query heads (no repeated copies of the cache). On a GPU
    the step is a CUDA graph, written as plain matmuls; on a CPU it is one SDPA call with grouped heads.
    """
    rows, kv_heads, group, dim = query.shape
    keys, values = read_kv(plan, layer, rows)
    if not query.is_cuda:
        heads = query.view(rows, kv_heads * group, 1, dim)
        mask = additive_mask(plan, query.dtype)
        out = F.scaled_dot_product_attention(heads, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
        return out.view(rows, kv_heads, group, dim)
    scores = torch.matmul(query, keys.transpose(-1, -2)).float() * scale
    scores = scores.masked_fill(~plan.mask.view(rows, 1, 1, plan.kv_len), float("-inf"))
    weights = torch.softmax(scores, dim=-1).to(values.dtype)
    return torch.matmul(weights, values)


def prefill_attention(plan: AttentionPlan, layer: int, query: torch.Tensor, scale: float) -> torch.Tensor:
    """Several tokens per row: ``query`` [R, Hq, n, D] over the cached keys/values under ``plan.mask``;
    returns [R, Hq, n, D]."""
    rows, q_heads = query.shape[:2]
    keys, values = read_kv(plan, layer, rows)
    if query.is_cuda and q_heads != keys.shape[1]:
        # With a mask, CUDA's fused kernels do not take grouped heads (enable_gqa falls back to the math
        # kernel, which materializes every score); repeated heads keep the memory-efficient kernel.
        keys = keys.repeat_interleave(q_heads // keys.shape[1], dim=1)
        values = values.repeat_interleave(q_heads // values.shape[1], dim=1)
    gqa = q_heads != keys.shape[1]
    mask = plan.mask if query.is_cuda else additive_mask(plan, query.dtype)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=gqa)


def additive_mask(plan: AttentionPlan, dtype: torch.dtype) -> torch.Tensor:
    """``plan.mask`` as the additive mask SDPA turns a boolean one into (0 where a query may attend, -inf
    elsewhere), made by the first layer of a call and reused by the others: SDPA on a CPU would otherwise
    convert the boolean mask once per layer. The same values, so the same attention, bit for bit."""
    if plan._bias_of is not plan.mask or plan._bias is None or plan._bias.dtype != dtype:
        zeros = torch.zeros(plan.mask.shape, dtype=dtype, device=plan.mask.device)
        plan._bias = zeros.masked_fill_(plan.mask.logical_not(), float("-inf"))
        plan._bias_of = plan.mask
    return plan._bias


def register() -> None:
    """Make ``ATTENTION_NAME`` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, slot_cache_attention)


def set_plan(model: torch.nn.Module, plan: AttentionPlan) -> None:
    """Point every attention module of ``model`` at ``plan`` (modules are those with a ``layer_idx``)."""
    for module in model.modules():
        if hasattr(module, "layer_idx") and hasattr(module, "config"):
            setattr(module, PLAN_ATTRIBUTE, plan)


def slots_index(slots: list[int], device: torch.device) -> slice | torch.Tensor:
    """``slots`` as a plan's ``read_slots``: a slice when they are consecutive and ascending (views, no gathers),
    else an index tensor."""
    if slots == list(range(slots[0], slots[0] + len(slots))):
        return slice(slots[0], slots[0] + len(slots))
    return torch.tensor(slots, dtype=torch.long, device=device)
