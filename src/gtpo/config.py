"""Typed training configuration: dataclasses with a docstring per field, parsed by tyro.

The defaults ARE the embedded default run (`gtpo train` with no arguments): the shipped tiny model on the
built-in arithmetic task, sized to finish in minutes on a laptop CPU. Real-model recipes live as presets in
``gtpo/presets/*.yaml`` and are loaded with ``--preset NAME_OR_PATH``; command-line flags override a preset.

This module only describes and validates settings; it runs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A setting is unknown or invalid. The message names the field and how to fix it."""


@dataclass
class ModelConfig:
    name_or_path: str = "tiny"
    """A Hugging Face causal LM: hub name or local directory. "tiny" is the shipped few-MB model."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype. "auto": float32 master weights, computing in bfloat16 (autocast) on GPUs that support
    it. "bfloat16" halves weight memory, but AdamW updates at lr ~1e-6 round away in bf16 weights."""
    lora_rank: int = 0
    """LoRA rank (peft); 0 trains all weights."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (effective scale alpha/rank)."""
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Module names LoRA adapts."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on long multi-turn contexts: the update keeps each decoder layer's input only
    and recomputes the rest in the backward pass (about a third more compute; docs/training_speed.md)."""
    compile: bool = False
    """torch.compile the decoder layers' MLPs and norms (dynamic shapes) to fuse their elementwise work; the
    first steps pay the compilation (GPU; on a CPU it needs a C++ compiler and rarely pays off)."""


@dataclass
class DataConfig:
    train: str = "arith"
    """Training problems: "arith" (embedded task), a .jsonl/.json/.parquet path, an HF dataset name, or a
    reasoning-gym generator, "reasoning-gym:NAME[?size=N&seed=S&option=value]" (pip install 'gtpo[real]')."""
    eval: str = "arith-heldout"
    """Held-out problems: "arith-heldout", a benchmark name (math500, gsm8k, ...), a path, a reasoning-gym
    generator ("reasoning-gym:NAME?size=200"; its own held-out seed unless given), or "" for none."""
    question_field: str = "question"
    """Column holding the question (files and HF datasets)."""
    answer_field: str = "answer"
    """Column holding the reference answer."""
    split: str = "train"
    """Split to read from an HF dataset."""
    eval_limit: int = 0
    """Evaluate on at most this many held-out problems (0 = all; the embedded set has 300)."""
    system_prompt: str | None = None
    """System prompt explaining the TIR protocol; None uses the task's (embedded) or the generic one."""


@dataclass
class RolloutConfig:
    group_size: int = 8
    """G: trajectories sampled per problem (a group)."""
    problems_per_step: int = 8
    """Problems per training step; the batch has problems_per_step * group_size trajectories."""
    max_turns: int = 5
    """Turn cap per trajectory (SimpleTIR trains with 5)."""
    max_new_tokens_per_turn: int = 96
    """Token cap for one model message."""
    max_total_tokens: int = 512
    """Cap on prompt + all turns + observations."""
    temperature: float = 1.0
    """Sampling temperature; log-probs for the loss use the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    backend: Literal["engine", "hf", "vllm"] = "engine"
    """Generation backend. "engine": gtpo's own engine over the transformers model (continuous batching, a
    slot KV cache, CUDA-graph decode on GPU, asynchronous multi-turn rollout; CPU or GPU; docs/generation.md).
    "hf": the plain transformers sampling loop, turn by turn (the reference the engine is tested against).
    "vllm": a colocated vLLM engine (GPU, optional extra)."""
    engine_slots: int = 0
    """Engine: sequences decoded at once (each holds up to max_total_tokens of KV cache). 0 = the whole
    batch (problems_per_step x group_size), capped on a GPU so the cache takes at most a quarter of the
    free memory. More trajectories than slots wait in a queue."""
    engine_chunk: int = 0
    """Engine: decode steps between the host's looks at the sampled tokens (stop checks, slot refills).
    Larger wastes up to chunk-1 tokens per ended turn, smaller syncs more often. 0 = 2 on CPU, 16 on GPU."""
    engine_cuda_graphs: bool = True
    """Engine: replay each decode-step shape as a CUDA graph (GPU only; off = eager, for debugging)."""
    schedule: Literal["auto", "deterministic", "asap"] = "auto"
    """Engine: when a trajectory whose code ran re-enters generation. "asap": as soon as its output is back
    (fastest). "deterministic": exactly rejoin_steps engine steps after its code was sent, waiting for a
    late result, so a seed reproduces a run bit for bit. "auto": deterministic on CPU, asap on GPU."""
    rejoin_steps: int = 16
    """Engine, deterministic schedule: engine steps between sending a cell and reading its output."""
    vllm_gpu_memory_utilization: float = 0.4
    """vLLM backend: share of GPU memory its engine (weights + KV cache) may take beside the trainer."""
    sandbox_timeout_s: float = 5.0
    """Wall-time limit per code cell."""
    sandbox_memory_mb: int = 2048
    """Address-space limit per sandbox session."""
    sandbox_workers: int = 0
    """Concurrent sandbox executions; 0 = number of CPU cores."""
    filter_void: bool = False
    """SimpleTIR: leave out of the loss trajectories with a void turn (no code block and no final answer)."""
    filter_groups: bool = False
    """DAPO's dynamic sampling: leave out of the update groups whose trajectories all agree (filter_metric) and
    sample more problems until problems_per_step groups differ. Off by default: GTPO does not use it, and it
    makes a step's cost vary (docs/algorithms.md, section 9)."""
    filter_metric: Literal["accuracy", "score"] = "accuracy"
    """filter_groups: what must differ within a group. "accuracy" (DAPO, SimpleTIR): some right, some wrong.
    "score": the trajectory reward (format penalties and shaping included), which drops only groups with no
    signal at all; under GTPO format penalties keep almost every group (measured: 193 of 200 in 25 steps of the
    embedded task), so it seldom filters."""
    filter_max_extra_problems: int = 16
    """filter_groups: at most this many extra problems (x group_size trajectories) per step; a step that
    reaches the cap trains on the informative groups it has. 16 = SimpleTIR's 3x oversampling at the default 8."""
    overlong: Literal["none", "mask", "penalty"] = "none"
    """Trajectories near or at max_total_tokens. "mask": those cut by the budget get no loss (DAPO's overlong
    filtering); "penalty": DAPO's soft linear penalty in a buffer before the cap, added to the outcome reward;
    "none" (default, as GTPO): treated like any other."""
    overlong_buffer: float = 0.2
    """overlong="penalty": the buffer before max_total_tokens, as a fraction of it (DAPO: 4096 of 20480)."""
    overlong_penalty: float = 1.0
    """overlong="penalty": the penalty at the cap (DAPO's factor 1.0, the size of a correct answer here)."""
    eval_temperature: float = 1.0
    """Temperature for held-out evaluation: 1.0 scores the policy as it samples in training (so held-out
    accuracy tracks the training reward); 0 = greedy decoding, which reports only the policy's mode."""
    eval_samples: int = 1
    """k samples per held-out problem (avg@k, pass@k)."""


@dataclass
class AlgoConfig:
    algo: Literal["gtpo", "grpo"] = "gtpo"
    """GTPO (turn rewards, returns, shaping) or the GRPO baseline (one reward per trajectory)."""
    gamma: float = 0.9
    """Discount of turn returns (GTPO). 1.0 is the 'no discount' ablation."""
    adv_norm: Literal["group", "turn_index", "batch"] = "group"
    """Set over which GTPO returns are normalized: all turns of a group pooled, per turn position within the
    group, or all turns of the whole batch pooled (see docs/algorithms.md, section 4)."""
    scale_by_std: bool = True
    """Divide centered rewards/returns by the set's std (False: mean-centering only, as in Dr. GRPO)."""
    format_penalty: float = 0.1
    """Penalty on a turn whose tool call is invalid (0 = 'no format penalty' ablation)."""
    no_call_penalty: float = 0.1
    """Penalty on turn 1 when it makes no tool call."""
    invalid_statuses: tuple[str, ...] = ("error", "timeout", "memory", "killed")
    """Execution statuses that make a tool call invalid (an unparseable block always does)."""
    shaping: bool = True
    """Self-supervised reward shaping: failed trajectories earn code similarity to the group's successes."""
    shaping_alpha: float = 0.5
    """Scale of the shaped reward; < 1 so a near miss never outranks a correct answer."""
    similarity: str = "tfidf"
    """Code similarity for shaping: "tfidf" (offline) or "st:<sentence-transformers model>"."""
    clip_low: float = 0.2
    """PPO clip range below 1."""
    clip_high: float = 0.28
    """PPO clip range above 1 (clip-higher, as SimpleTIR/DAPO)."""
    dual_clip: float | None = None
    """Dual-clip constant c for negative advantages (SimpleTIR uses 3.0); None disables."""
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    """How token losses are aggregated."""
    kl_coef: float = 0.0
    """Coefficient of the k3 KL penalty to a frozen reference policy (0 = no reference model)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    is_correction: Literal["none", "token", "sequence"] = "token"
    """Truncated importance weights min(pi_train_old / pi_sampler, is_cap) on the policy loss, per token or one
    per trajectory, for the gap between the sampler's and the trainer's probabilities (bf16 or vLLM
    generation). Weights are 1 where the two agree; the gap is logged every step (is/mismatch_*)."""
    is_cap: float = 2.0
    """Cap C of the importance weights (TRL's TIS default 2.0; verl's rollout_is_threshold 2.0)."""


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """AdamW learning rate (the tiny default: 2e-4 peaked by step 30 and declined, 1e-4 rose through 60
    steps; real models use ~1e-6)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    warmup_steps: int = 2
    """Linear learning-rate warmup, then constant."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    micro_batch_tokens: int = 8192
    """Token budget of one forward/backward: the batch's trajectories are packed whole, without padding, into
    micro-batches of at most this many tokens (a longer trajectory gets one of its own); gradients accumulate
    over them. Activation memory grows with this, not with the batch (docs/training_speed.md)."""
    micro_batch_size: int = 0
    """Deprecated (micro_batch_tokens decides): if > 0, also caps the trajectories in one micro-batch."""
    update_epochs: int = 1
    """Optimizer steps per rollout batch (one pass over it each). Above 1, old log-probs are computed once
    before them; at 1 they equal the current ones and that extra forward pass is skipped."""
    nonfinite_stop: int = 3
    """A step whose loss or gradient is not finite (NaN/inf) is skipped with a warning, its weights unchanged;
    this many such steps in a row stop the run (exit 1), its last checkpoint intact."""


@dataclass
class TrainConfig:
    """Everything `gtpo train` needs. Defaults run the embedded default on a CPU in minutes."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 60
    """Training steps (one rollout batch and its update each)."""
    seed: int = 0
    """Seeds data order, sampling and initialization; the same seed reproduces a run."""
    output_dir: str = "runs/default"
    """Run directory: config, metrics.jsonl, checkpoints."""
    eval_every: int = 10
    """Evaluate every N steps (and at step 0 and the end); 0 = never."""
    save_every: int = 10
    """Checkpoint every N steps (and at the end); 0 = only at the end."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    resume: bool = False
    """Continue from the newest checkpoint in output_dir."""
    overwrite: bool = False
    """Start over in an output_dir that holds an earlier run, deleting its metrics and checkpoints. Without it
    (or --resume) such a directory is an error, so that no run is lost or mixed into another by accident."""
    loggers: tuple[Literal["jsonl", "tensorboard", "wandb"], ...] = ("jsonl",)
    """Metric sinks; JSONL is always written."""
    device: str = "auto"
    """"auto" (cuda if available), "cpu", "cuda", "cuda:1", ... Under torchrun: each rank's local GPU."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Data parallelism under torchrun: DDP (all weights on every rank) or FSDP2 (sharded; large models)."""
    dist_timeout_s: float = 1800.0
    """Under torchrun: how long a rank waits in a collective (gathering turn records, reducing gradients) for
    the others before it stops with an error. A rank that dies is noticed at once; this bounds one that hangs.
    Keep it above the longest gap between ranks' rollouts."""
    progress: bool = True
    """Show progress bars (the step-0 evaluation, then the steps); evaluation lines and the summary print
    either way."""
    export: Literal["merged", "adapter", "none"] = "merged"
    """At the end, write the final policy to output_dir/model as a Hugging Face folder (config, safetensors,
    tokenizer, chat template) that from_pretrained loads. With LoRA, "merged" folds the adapter into the
    weights and "adapter" saves only the peft adapter (for the base model); "none" writes nothing."""


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (saved in the run directory)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Overlay ``data`` on ``base`` (default: the defaults), refusing unknown fields by name."""
    return _overlay(base or TrainConfig(), data, prefix="")


def _overlay(obj: Any, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    updates = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config field '{prefix}{key}'. Known fields here: {known}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            updates[key] = _overlay(current, value, prefix=f"{prefix}{key}.")
        else:
            updates[key] = _typed(f"{prefix}{key}", value, hints[key])
    return dataclasses.replace(obj, **updates)


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's declared type, or a ConfigError naming the field and the type it needs.

    A preset is YAML, whose types need not be the dataclass's: a wrong one (``lr: abc``) must fail here with the
    field's name, not later as a ``TypeError`` deep in validation or training. ``1e-6`` (a string to YAML 1.1)
    and ``1`` for a float are accepted as the numbers they mean; a list for a tuple becomes the tuple."""
    converted = _convert(value, hint)
    if converted is _WRONG:
        raise ConfigError(
            f"invalid config field '{name}': expected {_type_name(hint)}, got {value!r}; fix it in the preset"
        )
    return converted


_WRONG = object()


def _convert(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            converted = _convert(value, arm)
            if converted is not _WRONG:
                return converted
        return _WRONG
    if hint is type(None):
        return None if value is None else _WRONG
    if origin is Literal:
        return value if value in args else _WRONG
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _WRONG
        arms = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(arms) != len(value):
            return _WRONG
        items = [_convert(v, a) for v, a in zip(value, arms, strict=True)]
        return _WRONG if any(i is _WRONG for i in items) else tuple(items)
    if hint is bool:
        return value if isinstance(value, bool) else _WRONG
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    if hint is float:
        if isinstance(value, bool):
            return _WRONG
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(value) if isinstance(value, str) else _WRONG
        except ValueError:
            return _WRONG
    if hint is str:
        return value if isinstance(value, str) else _WRONG
    return value


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def load_preset(name_or_path: str, base: TrainConfig | None = None) -> TrainConfig:
    """Load a YAML preset: a file path, or the name of a shipped preset (``gtpo/presets/NAME.yaml``).

    Only a *file* shadows a shipped name: ``--preset multistep`` run beside a folder named ``multistep`` (a
    comparison's output, say) still means the shipped preset.
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ConfigError(f"--preset {name_or_path!r}: no such file or shipped preset (shipped: {shipped})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--preset {where}: not valid YAML ({problem}); fix the file") from None
    try:
        return from_dict(data, base)
    except ConfigError as err:
        raise ConfigError(f"--preset {path}: {err}") from None


def validate(config: TrainConfig) -> TrainConfig:
    """Check values a type cannot express; raise ConfigError naming the field and the fix."""
    checks = [
        (config.steps >= 1, "steps", "must be >= 1"),
        (config.dist_timeout_s > 0, "dist_timeout_s", "must be > 0 seconds"),
        (config.rollout.group_size >= 2, "rollout.group_size", "must be >= 2 (advantages are relative)"),
        (config.rollout.problems_per_step >= 1, "rollout.problems_per_step", "must be >= 1"),
        (config.rollout.max_turns >= 1, "rollout.max_turns", "must be >= 1"),
        (config.rollout.max_new_tokens_per_turn >= 1, "rollout.max_new_tokens_per_turn", "must be >= 1"),
        (config.rollout.temperature > 0, "rollout.temperature", "must be > 0 for training"),
        (0 < config.rollout.top_p <= 1, "rollout.top_p", "must be in (0, 1]"),
        (config.rollout.eval_samples >= 1, "rollout.eval_samples", "must be >= 1"),
        (config.rollout.engine_slots >= 0, "rollout.engine_slots", "must be >= 0 (0 = the whole batch)"),
        (config.rollout.engine_chunk >= 0, "rollout.engine_chunk", "must be >= 0 (0 = automatic)"),
        (config.rollout.rejoin_steps >= 1, "rollout.rejoin_steps", "must be >= 1"),
        (0 < config.algo.gamma <= 1, "algo.gamma", "must be in (0, 1]"),
        (config.algo.format_penalty >= 0, "algo.format_penalty", "must be >= 0 (it is subtracted)"),
        (config.algo.no_call_penalty >= 0, "algo.no_call_penalty", "must be >= 0 (it is subtracted)"),
        (0 <= config.algo.shaping_alpha < 1, "algo.shaping_alpha", "must be in [0, 1) so shaping < success"),
        (0 <= config.algo.clip_low < 1, "algo.clip_low", "must be in [0, 1)"),
        (config.algo.clip_high >= 0, "algo.clip_high", "must be >= 0"),
        (config.algo.dual_clip is None or config.algo.dual_clip > 1, "algo.dual_clip", "must be > 1 or None"),
        (config.algo.kl_coef >= 0, "algo.kl_coef", "must be >= 0"),
        (config.algo.is_cap >= 1, "algo.is_cap", "must be >= 1 (weights of agreeing tokens stay 1)"),
        (config.rollout.filter_max_extra_problems >= 0, "rollout.filter_max_extra_problems", "must be >= 0"),
        (0 <= config.rollout.overlong_buffer <= 1, "rollout.overlong_buffer", "must be in [0, 1]"),
        (config.rollout.overlong_penalty >= 0, "rollout.overlong_penalty", "must be >= 0 (it is subtracted)"),
        (config.optim.lr > 0, "optim.lr", "must be > 0"),
        (config.optim.micro_batch_tokens >= 1, "optim.micro_batch_tokens", "must be >= 1 (e.g. 8192)"),
        (config.optim.micro_batch_size >= 0, "optim.micro_batch_size", "must be >= 0 (0 = no cap)"),
        (config.optim.update_epochs >= 1, "optim.update_epochs", "must be >= 1"),
        (config.optim.nonfinite_stop >= 1, "optim.nonfinite_stop", "must be >= 1"),
        (config.model.lora_rank >= 0, "model.lora_rank", "must be >= 0"),
    ]
    for ok, name, fix in checks:
        if not ok:
            raise ConfigError(f"invalid config field '{name}': {fix} (got {_get(config, name)!r})")
    unknown = set(config.algo.invalid_statuses) - {"error", "timeout", "memory", "killed"}
    if unknown:
        raise ConfigError(
            f"invalid config field 'algo.invalid_statuses': unknown status {sorted(unknown)}; "
            "choose from error, timeout, memory, killed"
        )
    return config


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config
