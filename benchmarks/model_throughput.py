"""Generation and training throughput of a real-sized model, with model FLOPs utilization (MFU).

The model is built from its architecture config with random weights (no download: GPU machines here have no
network), so this measures speed, never quality. It runs what gtpo's trainer runs, nothing faster:

- generation: ``model.generate`` with the KV cache, sampling, a fixed number of new tokens per row (EOS
  ignored, so every row decodes the same length). gtpo's ``HFSampler`` ran at 0.98x of ``model.generate`` on
  the tiny model (``benchmarks/rollout.py``); the vLLM backend is not measured here.
- training: the trainer's own update (``Trainer._update``) on a batch of random sequences: old log-probs
  (a no-grad forward), then per micro-batch ``token_logprobs`` -> ``clipped_policy_loss`` -> backward, then
  gradient clipping and the AdamW step; float32 master weights with bf16 autocast on GPUs that support it
  (gtpo's ``dtype="auto"``). The random model is saved with the shipped tiny tokenizer into a temporary
  directory so that the trainer loads it as it would any model.

MFU = achieved model FLOPs/s / the device's peak dense bf16 FLOPs/s. Model FLOPs per token count the matmuls
only (``flops_per_token``): 2 per weight of every linear layer and the LM head (the input embedding is a
lookup), plus causal attention; a training token costs the old-log-prob forward plus 3x forward (forward +
backward), with no credit for recomputed activations. Peak FLOPs come from ``--peak-tflops`` or the table
below; on a CPU, MFU is left out unless given.

    python benchmarks/model_throughput.py --arch qwen2.5-1.5b            # on a GPU
    python benchmarks/model_throughput.py --arch small --device cpu      # a CPU check of the script
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from gtpo.batch import TokenBatch
from gtpo.components import autocast
from gtpo.config import from_dict
from gtpo.tiny.build import DEFAULT_MODEL_DIR
from gtpo.trainer import Trainer

ARCHITECTURES: dict[str, dict] = {
    # Qwen2.5-1.5B / Qwen2.5-Math-1.5B (config.json of the released checkpoints).
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1e6,
        max_position_embeddings=32768,
    ),
    # Qwen2.5-7B / Qwen2.5-Math-7B.
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
        rope_theta=1e6,
        max_position_embeddings=32768,
    ),
    # The same layer types, small enough to check this script on a CPU in seconds.
    "small": dict(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1e6,
        max_position_embeddings=4096,
    ),
}

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
"""Dense bf16 peak per GPU (vendor datasheets, without sparsity), matched by substring of the device name."""


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def of(cls, config: Qwen2Config) -> Shape:
        return cls(
            config.num_hidden_layers,
            config.hidden_size,
            config.intermediate_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.vocab_size,
        )


def matmul_params(s: Shape) -> int:
    """Weights that take part in a matmul per token: q, k, v, o, the gated MLP, and the LM head."""
    head_dim = s.hidden // s.heads
    attention = s.hidden * s.hidden * 2 + s.hidden * s.kv_heads * head_dim * 2  # q, o + k, v
    mlp = 3 * s.hidden * s.intermediate  # gate, up, down
    return s.layers * (attention + mlp) + s.hidden * s.vocab


def flops_per_token(s: Shape, context: int, training: bool) -> float:
    """Model FLOPs for one token attending to ``context`` earlier tokens (on average).

    Forward: 2 per matmul weight, plus attention scores and values, 2 * 2 * hidden * context per layer.
    Training: 3x forward (the backward pass costs twice the forward).
    """
    forward = 2 * matmul_params(s) + 4 * s.layers * s.hidden * context
    return 3 * forward if training else forward


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(model, device, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> float:
    """Generated tokens/s (new tokens only), median over ``repeats`` after one warm-up."""
    vocab = model.config.vocab_size
    prompts = torch.randint(0, vocab, (batch, prompt_len), device=device)
    mask = torch.ones_like(prompts)
    rates = []
    for i in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad(), autocast("auto", device):
            out = model.generate(
                input_ids=prompts,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=0,
            )
        synchronize(device)
        if i:  # the first call warms up kernels and allocator
            rates.append((out.shape[1] - prompt_len) * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def build_trainer(model, args, out: Path) -> Trainer:
    """A gtpo Trainer around ``model`` (saved to ``out`` with the shipped tiny tokenizer, then loaded)."""
    model.save_pretrained(out / "model")
    AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR).save_pretrained(out / "model")
    config = from_dict(
        {
            "model": {"name_or_path": str(out / "model"), "gradient_checkpointing": args.gradient_checkpointing},
            "optim": {"micro_batch_size": args.micro_batch, "lr": 1e-6},
            "rollout": {"max_total_tokens": args.seq_len, "sandbox_workers": 1},
            "output_dir": str(out / "run"),
            "device": args.device,
            "progress": False,
        }
    )
    return Trainer(config)


def time_training(trainer: Trainer, batch: int, seq_len: int, repeats: int) -> float:
    """Trained tokens/s of the trainer's update (all positions count), median over ``repeats`` after a warm-up."""
    vocab = trainer.policy.config.vocab_size
    rates = []
    for i in range(repeats + 1):
        ids = torch.randint(0, vocab, (batch, seq_len))
        loss_mask = (torch.rand(batch, seq_len) < 0.5).long()  # model tokens vs tool output
        tokens = TokenBatch(ids, torch.ones_like(ids), loss_mask, loss_mask - 1, torch.zeros(batch, seq_len))
        advantages = torch.randn(batch, seq_len) * loss_mask
        synchronize(trainer.device)
        start = time.perf_counter()
        trainer._update(tokens, advantages, loss_mask.float())
        synchronize(trainer.device)
        if i:
            rates.append(batch * seq_len / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="qwen2.5-1.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gen-batch", type=int, default=64, help="rows decoded at once (e.g. 4 prompts x G=16)")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=16, help="sequences per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak (dense bf16) for MFU")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = Qwen2Config(**ARCHITECTURES[args.arch])
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    shape = Shape.of(config)
    peak = peak_flops(device, args.peak_tflops)
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.arch}: {params / 1e9:.3f}B parameters on {name}; peak {peak / 1e12 if peak else 'n/a'} TFLOP/s")

    def report(label: str, tokens_per_s: float, per_token: float) -> None:
        achieved = tokens_per_s * per_token
        mfu = f"{achieved / peak:.3f}" if peak else "n/a (give --peak-tflops)"
        print(f"{label:<11} {tokens_per_s:>12,.0f} tokens/s  {achieved / 1e12:>8.2f} TFLOP/s  MFU {mfu}")

    if not args.skip_generation:
        model.eval()
        rate = time_generation(model, device, args.gen_batch, args.prompt_len, args.new_tokens, args.repeats)
        report("generation", rate, flops_per_token(shape, args.prompt_len + args.new_tokens // 2, training=False))
    if not args.skip_training:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(model.cpu(), args, Path(tmp))
            try:
                rate = time_training(trainer, args.train_batch, args.seq_len, args.repeats)
            finally:
                trainer.close()
        per_token = flops_per_token(shape, args.seq_len // 2, training=True)
        report("training", rate, per_token + flops_per_token(shape, args.seq_len // 2, training=False))
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
