"""Build a run's components from its config: the policy (+LoRA, reference), the sampler and the sandbox.

Kept apart from the trainer so that the trainer reads as the loop it is, and so ``gtpo eval`` can build the
same sampler and sandbox. Nothing here trains.
"""

from __future__ import annotations

from typing import Any

import torch

from gtpo.config import ConfigError, ModelConfig, SandboxConfig, TrainConfig
from gtpo.model.precision import resolve_dtype
from gtpo.model.source import check_model_source, model_path


def build_policy(cfg: ModelConfig, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """Load the trainable policy (optionally wrapped with LoRA) and its tokenizer."""
    from gtpo.model.policy import check_packed_logprobs, compile_layers, load_policy

    check_model_source(cfg.name_or_path)
    dtype = resolve_dtype(cfg.dtype)
    try:
        model, tokenizer = load_policy(model_path(cfg.name_or_path), dtype=dtype, device=device)
    except OSError as err:  # load_policy's message names the field and the fix; the CLI prints it in one line
        raise ConfigError(str(err).splitlines()[0]) from err
    check_packed_logprobs(model)
    if cfg.gradient_checkpointing:  # takes effect in the update (gtpo.model.policy.checkpointing_active)
        enable_checkpointing(model)
    if cfg.compile:
        compile_layers(model)
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


def enable_checkpointing(model: torch.nn.Module) -> None:
    """transformers' activation checkpointing of the decoder layers, non-reentrant (under its 5.24+ name if there)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_reference(cfg: ModelConfig, device: torch.device) -> torch.nn.Module | None:
    """A frozen copy of the initial policy for the KL term. With LoRA none is loaded: the base is the ref."""
    if cfg.lora_rank > 0:
        return None
    from gtpo.model.policy import load_policy

    ref, _ = load_policy(model_path(cfg.name_or_path), dtype=resolve_dtype(cfg.dtype), device=device)
    ref.eval().requires_grad_(False)
    return ref


def build_sampler(config: TrainConfig, model: torch.nn.Module, tokenizer: Any) -> Any:
    """The backend ``config.generation`` names over ``model`` (the engine and vLLM keep their own weight copy),
    sized for ``config.rollout``'s batch and lengths; vLLM computes in the dtype the trainer computes in."""
    cfg, rollout = config.generation, config.rollout
    if cfg.backend == "vllm":
        from gtpo.generation.vllm import VLLMSampler, engine_dtype

        return VLLMSampler(
            model_path(config.model.name_or_path),
            dtype=engine_dtype(config.model.dtype, next(model.parameters()).device),
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            tokenizer=tokenizer,
        )
    if cfg.backend == "hf":
        from gtpo.generation.hf import HFSampler

        return HFSampler(model, tokenizer)
    from gtpo.generation.engine import EngineOptions, EngineSampler
    from gtpo.generation.engine.weights import engine_dtype

    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    options = EngineOptions(
        dtype=engine_dtype(cfg.engine_dtype, model, device),
        packed_weights=cfg.engine_packed_weights,
        slots=cfg.engine_slots or rollout.problems_per_step * rollout.group_size,
        max_len=rollout.max_total_tokens,
        chunk=cfg.engine_chunk or (16 if on_cuda else 2),
        cuda_graphs=cfg.engine_cuda_graphs,
        prefill_wait=32 if on_cuda else 0,
    )
    if on_cuda and not cfg.engine_slots:
        from gtpo.generation.engine.cache import slots_in_memory

        options.slots = min(options.slots, slots_in_memory(model, options.max_len, device, options.dtype))
    return EngineSampler(model, tokenizer, options)


def build_sandbox(cfg: SandboxConfig) -> Any:
    """The pool that runs the model's code. Besides the sandbox's own hidden folders it masks gtpo's task
    generators, data and assets and HumanEval's data: a tool call must not read held-out answers or hidden tests
    (``gtpo.sandbox.hidden_tests.default_hidden_paths``)."""
    import os

    from gtpo.sandbox import SandboxLimits, SandboxPool
    from gtpo.sandbox.hidden_tests import default_hidden_paths

    hidden = tuple(dict.fromkeys((*SandboxLimits().hidden_paths, *default_hidden_paths())))
    limits = SandboxLimits(wall_time_s=cfg.timeout_s, memory_mb=cfg.memory_mb, hidden_paths=hidden)
    return SandboxPool(limits=limits, max_workers=cfg.workers or os.cpu_count() or 1)
