"""Build a run's components from its config: device, policy (+LoRA, reference), sampler, sandbox, data.

Kept apart from the trainer so that the trainer reads as the loop it is, and so ``gtpo eval`` can build the
same sampler and sandbox. Nothing here trains.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from gtpo.config import ConfigError, DataConfig, ModelConfig, RolloutConfig
from gtpo.types import Problem

GENERIC_SYSTEM_PROMPT = (
    "Solve the problem step by step. You may write Python code in a ```python code block; it will be run and "
    "its output shown to you in an ```output block, and you can continue reasoning and writing code. "
    "Put the final answer in \\boxed{}."
)

TINY = "tiny"
ARITH = "arith"
ARITH_HELDOUT = "arith-heldout"
MULTISTEP = "multistep"
MULTISTEP_HELDOUT = "multistep-heldout"
EMBEDDED_TASKS = {ARITH: "gtpo.tasks.arith", MULTISTEP: "gtpo.tasks.multistep"}
"""Built-in tasks by ``data.train`` name -> module with SYSTEM_PROMPT, train_problems, heldout_problems; the
held-out set of each is ``data.eval="<name>-heldout"``."""


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


def autocast(dtype_name: str, device: torch.device) -> Any:
    """bf16 autocast for "auto" on a GPU that supports it; a no-op elsewhere (CPU runs in float32)."""
    enabled = dtype_name == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def model_path(name_or_path: str) -> str:
    """Map a shipped model's alias ("tiny", "tiny-multistep") to its directory; anything else is passed to
    transformers as is."""
    from gtpo.tiny.build import SHIPPED_MODELS

    return str(SHIPPED_MODELS.get(name_or_path, name_or_path))


def build_policy(cfg: ModelConfig, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """Load the trainable policy (optionally wrapped with LoRA) and its tokenizer."""
    from gtpo.policy import load_policy

    dtype = resolve_dtype(cfg.dtype)
    model, tokenizer = load_policy(model_path(cfg.name_or_path), dtype=dtype, device=device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora_rank > 0:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as err:
            raise ImportError("model.lora_rank > 0 needs peft: pip install 'gtpo[lora]'") from err
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            target_modules=list(cfg.lora_target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model, tokenizer


def build_reference(cfg: ModelConfig, device: torch.device) -> torch.nn.Module | None:
    """A frozen copy of the initial policy for the KL term. With LoRA none is loaded: the base is the ref."""
    if cfg.lora_rank > 0:
        return None
    from gtpo.policy import load_policy

    ref, _ = load_policy(model_path(cfg.name_or_path), dtype=resolve_dtype(cfg.dtype), device=device)
    ref.eval().requires_grad_(False)
    return ref


def build_sampler(cfg: RolloutConfig, model: torch.nn.Module, tokenizer: Any, name_or_path: str) -> Any:
    if cfg.backend == "vllm":
        from gtpo.generate_vllm import VLLMSampler

        return VLLMSampler(
            model_path(name_or_path), gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, tokenizer=tokenizer
        )
    from gtpo.generate import HFSampler

    return HFSampler(model, tokenizer)


def build_sandbox(cfg: RolloutConfig) -> Any:
    import os

    from gtpo.sandbox import SandboxLimits, SandboxPool

    limits = SandboxLimits(wall_time_s=cfg.sandbox_timeout_s, memory_mb=cfg.sandbox_memory_mb)
    return SandboxPool(limits=limits, max_workers=cfg.sandbox_workers or os.cpu_count() or 1)


def system_prompt_for(cfg: DataConfig) -> str:
    if cfg.system_prompt is not None:
        return cfg.system_prompt
    if cfg.train in EMBEDDED_TASKS:
        return importlib.import_module(EMBEDDED_TASKS[cfg.train]).SYSTEM_PROMPT
    return GENERIC_SYSTEM_PROMPT


def load_train_problems(cfg: DataConfig, seed: int) -> list[Problem]:
    if cfg.train in EMBEDDED_TASKS:
        return importlib.import_module(EMBEDDED_TASKS[cfg.train]).train_problems(seed=seed)
    return _load(cfg.train, cfg, cfg.split)


def load_eval_problems(cfg: DataConfig) -> list[Problem]:
    if not cfg.eval:
        return []
    task = cfg.eval.removesuffix("-heldout")
    if cfg.eval.endswith("-heldout") and task in EMBEDDED_TASKS:
        problems = importlib.import_module(EMBEDDED_TASKS[task]).heldout_problems()
    else:
        from gtpo.data import BENCHMARKS, load_benchmark

        problems = load_benchmark(cfg.eval) if cfg.eval in BENCHMARKS else _load(cfg.eval, cfg, "test")
    return problems[: cfg.eval_limit] if cfg.eval_limit else problems


def _load(source: str, cfg: DataConfig, split: str) -> list[Problem]:
    from gtpo.data import load_problems

    if not Path(source).exists() and "/" not in source:
        raise ConfigError(
            f"data source {source!r} is neither an existing file nor an HF dataset name (owner/name); "
            "use 'arith' or 'multistep', a .jsonl/.parquet path, or a dataset name"
        )
    return load_problems(source, question_field=cfg.question_field, answer_field=cfg.answer_field, split=split)
