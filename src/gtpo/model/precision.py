"""Device and precision: which device a rank runs on, the weights' dtype, and the bf16 compute rule.

One rule for the trainer, the engine and the vLLM backend: float32 master weights computing in bf16 on a GPU
that supports it ("auto"), float32 on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from gtpo.config import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU if there is one (torchrun's LOCAL_RANK), else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA GPU is visible; use --device cpu or auto")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    """Weights dtype; "auto" keeps float32 master weights (bf16 compute comes from ``autocast``)."""
    return {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}.get(name, torch.float16)


def computes_in_bf16(dtype_name: str, device: torch.device) -> bool:
    """float32 master weights computing in bf16: "auto" on a GPU that supports it (CPU runs in float32)."""
    return dtype_name == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(dtype_name: str, device: torch.device) -> Any:
    """bf16 autocast where ``computes_in_bf16``; a no-op elsewhere."""
    enabled = computes_in_bf16(dtype_name, device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)
