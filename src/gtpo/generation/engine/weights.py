"""The engine's own copy of the policy: built from the policy's config, loaded from its weights, kept in sync.

Why a copy rather than the policy itself: the engine runs the model with its own attention function and,
on a GPU and for large models on CPUs with bf16 products (``engine_dtype``), in bfloat16 weights (the trainer
keeps float32 master weights and computes in bf16 under autocast on a GPU; autocast would re-cast every weight on
every decode step). A copy also keeps the policy untouched: its
config, attention implementation and autograd state are the trainer's. The trainer calls
``sync_weights`` after each optimizer step, as it does for vLLM; the copy costs one model's weights in the
engine's dtype (3 GB for a 1.5B model in bf16).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch

from gtpo.generation.engine.attention import ATTENTION_NAME, register


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP and PEFT wrappers (FSDP2 modules are the model itself)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    return model


BF16_MIN_WEIGHT_BYTES = 64 << 20
"""On a CPU, "auto" samples in bfloat16 for policies with more weight bytes than this (far beyond a core's caches).
There a decode step reads every weight from memory and multiplies it by a few rows, which runs below the CPU's
rate in float32 (SmolLM2-135M, 8 rows, on an AVX512-BF16 Xeon: 52 ms a step in float32, 42 ms in bfloat16; 2 rows
36 ms and 27 ms); a model whose weights stay in cache (the shipped tiny ones, a few MB) gains nothing (8 rows:
1.4 ms in float32, 1.7 ms in bfloat16)."""


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX tiles), as torch detects it.

    Elsewhere oneDNN emulates bf16 products through float32 and a decode step gets slower (SmolLM2-135M, 8 rows,
    oneDNN held to AVX2: 92 ms against 67 ms in float32). torch exposes the probes under private names; a torch
    without them counts as no.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    hardware = any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    onednn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()  # False if held to AVX2
    return hardware and bool(onednn)


def engine_dtype(setting: str, policy: torch.nn.Module, device: torch.device) -> torch.dtype:
    """The dtype of the engine's weights and cache for ``generation.engine_dtype`` (``setting``).

    "auto": bfloat16 on CUDA; bfloat16 on a CPU with native bf16 products for a policy above
    ``BF16_MIN_WEIGHT_BYTES``; else the policy's own dtype. "float32" and "bfloat16" are used as they are.
    """
    if setting != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[setting]
    policy_dtype = next(policy.parameters()).dtype
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and native_bf16_cpu():
        weight_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
        if weight_bytes > BF16_MIN_WEIGHT_BYTES:
            return torch.bfloat16
    return policy_dtype


def check_supported(config: Any) -> None:
    """The slot cache implements full causal attention; refuse models that need anything else."""
    layer_types = getattr(config, "layer_types", None) or []
    other = sorted({t for t in layer_types if t != "full_attention"})
    if other or getattr(config, "use_sliding_window", False):
        raise ValueError(
            f"generation.backend='engine' supports full-attention decoders only; this model has {other or 'sliding'} "
            "layers. Use --generation.backend hf (the plain transformers sampler) for it."
        )


def build_inference_copy(
    policy: torch.nn.Module, weights: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device
) -> torch.nn.Module:
    """A fresh model of the policy's architecture with the engine's attention, in ``dtype``, eval mode.

    The model is built on the meta device and then given uninitialized storage: a random init of every
    weight would be overwritten by ``load_weights`` at once, and it is most of the start-up time on a CPU
    (4 s of a 135M model's; the copy itself takes a tenth of that). Buffers that are not weights (rotary
    frequencies) are copied from the policy, so nothing of the copy is left uninitialized.
    """
    from transformers import AutoModelForCausalLM

    register()
    source = base_model(policy)
    config = copy.deepcopy(source.config)
    check_supported(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=ATTENTION_NAME)
    model.to_empty(device=device)
    model.tie_weights()  # to_empty gives tied parameters separate storage; tie them again
    model.eval().requires_grad_(False)
    load_weights(model, weights.items())
    load_buffers(model, source)
    left = [
        f"{name}.{attr}"
        for name, module in model.named_modules()
        for attr, value in vars(module).items()
        if isinstance(value, torch.Tensor) and value.is_meta
    ]
    if left:
        raise ValueError(f"engine weights: {', '.join(left[:3])} of the engine's model has no storage")
    return model


@torch.no_grad()
def load_buffers(model: torch.nn.Module, source: torch.nn.Module) -> None:
    """Copy every buffer of ``model`` from ``source``'s buffer of the same name (a missing one is an error).

    Buffers keep their own dtype (rotary frequencies stay float32 in a bfloat16 copy, as ``from_config``
    makes them).
    """
    given = dict(source.named_buffers())
    for name, buffer in model.named_buffers():
        if name not in given:
            raise ValueError(f"engine weights: the policy has no buffer {name!r} to copy into the engine's model")
        buffer.copy_(given[name].to(device=buffer.device, dtype=buffer.dtype))


@torch.no_grad()
def load_weights(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy ``named_tensors`` (plain transformers names) into ``model``, casting to its dtype and device.

    Every parameter must be given, except one tied to another (the LM head of tied-embedding models): a
    missing weight is an error, never a silently random engine.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    seen = set()
    for name, tensor in named_tensors:
        target = params.get(name)
        if target is None:
            continue
        target.copy_(tensor.detach().to(device=target.device, dtype=target.dtype))
        seen.add(id(target))
    missing = [name for name, p in params.items() if id(p) not in seen]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"engine weights: the policy's weights lack {', '.join(missing[:3])}{more}")
