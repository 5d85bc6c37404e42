"""The slot KV cache: one keys and one values tensor per layer, ``[slots + 1, kv_heads, max_len, head_dim]``.

Allocated once when the engine starts. The extra slot is a sink for padding and for rows that are not live.
Sizing lives here too: how many bytes a slot costs, and how many slots a GPU's free memory allows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def head_dim(config: Any) -> int:
    """The attention head size of a transformers model config."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def slot_bytes(config: Any, max_len: int, dtype: torch.dtype) -> int:
    """Bytes of one slot's keys and values over all layers, ``max_len`` positions in ``dtype``."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim(config) * max_len * dtype.itemsize


def slots_in_memory(
    model: torch.nn.Module, max_len: int, device: torch.device, dtype: torch.dtype = torch.bfloat16
) -> int:
    """Slots whose cache (bf16 by default, the engine's dtype on a GPU) fits in a quarter of the GPU's free memory."""
    from gtpo.generation.engine.weights import base_model

    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(free // 4 // slot_bytes(base_model(model).config, max_len, dtype)))


def allocate_caches(
    config: Any, slots: int, max_len: int, dtype: torch.dtype, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(keys, values): per layer, a zeroed cache of ``slots`` slots and the spare one."""
    layers = config.num_hidden_layers
    shape = (slots + 1, config.num_key_value_heads, max_len, head_dim(config))
    caches = zeroed_caches(2 * layers, shape, dtype, device)
    return caches[:layers], caches[layers:]


def zeroed_caches(count: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """``count`` zero tensors of ``shape``; on a CPU, views of one buffer whose pages the OS zeroes on first touch.

    Why: ``torch.zeros`` writes every byte, and a CPU cache is large (max_len positions for every slot, most
    never reached: 0.8 GB for a 135M model at 32 slots x 512) while a turn touches only its own positions. A
    calloc'd buffer (numpy's zeros) of that size is mapped lazily: start-up costs nothing and memory is
    committed only where keys and values are written or read. The contents are zeros either way.
    """
    if device.type != "cpu":
        return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(count)]
    numel = count * int(np.prod(shape))
    raw = torch.from_numpy(np.zeros(numel * dtype.itemsize, dtype=np.uint8))
    return list(raw.view(dtype).view(count, *shape).unbind(0))
