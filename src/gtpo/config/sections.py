"""The settings of a run, one dataclass per concern, each field with its docstring (what ``--help`` shows).

The defaults ARE the embedded default run (`gtpo train` with no arguments): the shipped tiny model on the
built-in arithmetic task, sized to finish in minutes on a laptop CPU. Every default lives here and nowhere
else; code that needs one reads it from these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    """The batch and the episode: how many trajectories, how long, sampled how."""

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
    step_timeout_s: float = 60.0
    """An environment call (reset or step) that takes longer ends its trajectory ("env_timeout") and the batch goes
    on. The math task's sandbox has its own per-cell limit (sandbox.timeout_s); this bounds any environment."""


@dataclass
class GenerationConfig:
    """Which backend generates, and how the engine schedules."""

    backend: Literal["engine", "hf", "vllm"] = "engine"
    """Generation backend. "engine": gtpo's own engine over the transformers model (continuous batching, a
    slot KV cache, CUDA-graph decode on GPU, asynchronous multi-turn rollout; CPU or GPU; docs/generation.md).
    "hf": the plain transformers sampling loop, turn by turn (the reference the engine is tested against).
    "vllm": a colocated vLLM engine (GPU, optional extra)."""
    engine_slots: int = 0
    """Engine: sequences decoded at once (each holds up to rollout.max_total_tokens of KV cache). 0 = the whole
    batch (problems_per_step x group_size), capped on a GPU so the cache takes at most a quarter of the
    free memory. More trajectories than slots wait in a queue."""
    engine_chunk: int = 0
    """Engine: decode steps between the host's looks at the sampled tokens (stop checks, slot refills).
    Larger wastes up to chunk-1 tokens per ended turn, smaller syncs more often. 0 = 2 on CPU, 16 on GPU."""
    engine_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Engine: dtype of its weight copy and KV cache. "auto": bfloat16 on CUDA, and on a CPU that multiplies
    bfloat16 natively (AVX512-BF16 or AMX) for a model of more than 64 MB of weights (there a decode step reads
    its weights from memory and computes few-row products: bf16 halves the bytes, 1.2-1.35x faster a step);
    the policy's dtype otherwise (the shipped tiny models stay float32: their tokens are the model's own bits).
    The sampler/trainer gap of bf16 is logged (loss/is_mismatch_*) and weighed (algo.is_correction)."""
    engine_packed_weights: bool = True
    """Engine on a CPU: multiply by copies of the weights packed in oneDNN's layout where that is faster (every
    product in bf16; decode steps of 2+ rows in float32 for models beyond the caches): SmolLM2's decode step 1.3x
    (float32, 8 rows) to 1.6x (bf16 against float32 unpacked), for one more copy of the weights in the engine's dtype
    (SmolLM2: 0.27 GB in bf16, 0.54 GB in float32). False: no copy (for a large model on a CPU short of memory)."""
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


@dataclass
class SandboxConfig:
    """Limits of the sandbox that runs the model's code."""

    timeout_s: float = 5.0
    """Wall-time limit per code cell."""
    memory_mb: int = 2048
    """Address-space limit per sandbox session."""
    workers: int = 0
    """Concurrent sandbox executions; 0 = number of CPU cores."""


@dataclass
class AlgoConfig:
    algo: Literal["gtpo", "grpo"] = "gtpo"
    """GTPO (turn rewards, returns, shaping) or the GRPO baseline (one reward per trajectory)."""
    gamma: float = 0.9
    """Discount of turn returns (GTPO). 1.0 is the 'no discount' ablation."""
    adv_norm: Literal["group", "turn_index", "batch", "turn_index_carry", "a2tgpo"] = "group"
    """How GTPO returns become advantages: normalized over all turns of a group pooled, per turn position within
    the group, over all turns of the whole batch pooled, or per turn position with stopped trajectories holding
    their last return in every later position (turn_index_carry: no set depends on who went on); or "a2tgpo":
    turn rewards normalized per turn position, accumulated and divided by sqrt(terms) (docs/algorithms.md,
    section 4)."""
    scale_by_std: bool = True
    """Divide centered rewards/returns by the set's std (False: mean-centering only, as in Dr. GRPO)."""
    traj_adv_weight: float = 0.0
    """GTPO only: w in [0, 1] mixes each turn's advantage with its trajectory's, (1 - w) * A_turn + w * A_traj,
    A_traj the group-normalized sum of turn rewards (0 = the paper's turn credit; MT-GRPO's A_outcome + A_turn
    is twice w = 0.5). docs/algorithms.md, section 4."""
    format_penalty: float = 0.1
    """Penalty on a turn whose tool call is invalid (0 = 'no format penalty' ablation)."""
    no_call_penalty: float = 0.1
    """Penalty on turn 1 when it makes no tool call."""
    invalid_statuses: tuple[str, ...] = ("error", "timeout", "memory", "killed")
    """Execution statuses that make a tool call invalid (an unparseable block always does)."""
    episode_return: Literal["sum", "last"] = "sum"
    """GRPO's trajectory reward from an environment's step rewards: their sum (the episode's return) or the last
    step's reward. The math task rewards only its last step, so both agree there. A trajectory with a format
    violation (an invalid action, or no tool call on turn 1 where the environment offers a tool) scores at most
    0, the paper's min(acc, fmt) for 0/1 outcomes."""
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
    generation). Weights are 1 where the two agree; the gap is logged every step (loss/is_mismatch_*)."""
    is_cap: float = 2.0
    """Cap C of the importance weights (TRL's TIS default 2.0; verl's rollout_is_threshold 2.0)."""


@dataclass
class FilterConfig:
    """What is left out of the update (SimpleTIR's void turns, DAPO's dynamic sampling)."""

    void: bool = False
    """SimpleTIR: leave out of the loss trajectories with a void turn (no code block and no final answer)."""
    groups: bool = False
    """DAPO's dynamic sampling: leave out of the update groups whose trajectories all agree (filter.metric) and
    sample more problems until rollout.problems_per_step groups differ. Off by default: GTPO does not use it,
    and it makes a step's cost vary (docs/algorithms.md, section 9)."""
    metric: Literal["accuracy", "score"] = "accuracy"
    """filter.groups: what must differ within a group. "accuracy" (DAPO, SimpleTIR): some right, some wrong.
    "score": the trajectory reward (format penalties and shaping included), which drops only groups with no
    signal at all; under GTPO format penalties keep almost every group (measured: 193 of 200 in 25 steps of the
    embedded task), so it seldom filters."""
    max_extra_problems: int = 16
    """filter.groups: at most this many extra problems (x group_size trajectories) per step; a step that
    reaches the cap trains on the informative groups it has. 16 = SimpleTIR's 3x oversampling at the default 8."""


@dataclass
class OverlongConfig:
    """Trajectories near or at rollout.max_total_tokens."""

    mode: Literal["none", "mask", "penalty"] = "none"
    """"mask": those cut by the budget get no loss (DAPO's overlong filtering); "penalty": DAPO's soft linear
    penalty in a buffer before the cap, added to the outcome reward; "none" (default, as GTPO): treated like any
    other."""
    buffer: float = 0.2
    """mode "penalty": the buffer before the cap, as a fraction of it (DAPO: 4096 of 20480)."""
    penalty: float = 1.0
    """mode "penalty": the penalty at the cap (DAPO's factor 1.0, the size of a correct answer here)."""


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
    micro_batch_tokens: int = 0
    """Token budget of one forward/backward: the batch's trajectories are packed whole, without padding, into
    micro-batches of at most this many tokens (a longer trajectory gets one of its own); gradients accumulate
    over them. Activation memory grows with this, not with the batch (docs/training_speed.md). 0 = measured:
    the most tokens, up to 8192, whose activations saved for the backward fit optim.activation_gb."""
    activation_gb: float = 2.0
    """With micro_batch_tokens 0: GiB of activations one micro-batch may keep for its backward (measured on
    the model at start; SmolLM2-135M keeps ~1.3 MiB a token in float32, so 2 GiB is ~1,500 tokens). Peak memory
    adds the weights, gradients and AdamW state (16 bytes a parameter) and the generation engine's copy."""
    update_epochs: int = 1
    """Optimizer steps per rollout batch (one pass over it each). Above 1, old log-probs are computed once
    before them; at 1 they equal the current ones and that extra forward pass is skipped."""
    nonfinite_stop: int = 3
    """A step whose loss or gradient is not finite (NaN/inf) is skipped with a warning, its weights unchanged;
    this many such steps in a row stop the run (exit 1), its last checkpoint intact."""


@dataclass
class EvaluationConfig:
    """How held-out problems are sampled (which ones: data.eval, data.eval_limit; when: eval_every)."""

    temperature: float = 1.0
    """Temperature for held-out evaluation: 1.0 scores the policy as it samples in training (so held-out
    accuracy tracks the training reward); 0 = greedy decoding, which reports only the policy's mode."""
    samples: int = 1
    """k samples per held-out problem (avg@k, pass@k)."""


@dataclass
class TrainConfig:
    """Everything `gtpo train` needs. Defaults run the embedded default on a CPU in minutes."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvaluationConfig = field(default_factory=EvaluationConfig)
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
