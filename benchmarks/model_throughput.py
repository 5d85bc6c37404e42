"""Training-update throughput of a real-sized model: gtpo's update against a plain transformers loop, with MFU.

The model is built from its architecture config with random weights (``architectures.py``; no download), so
this measures speed and memory, never quality. One run, interleaved, on the same tokens:

- ``gtpo``: the trainer's update (``gtpo.training.update.PolicyUpdate``, what ``Trainer._update`` runs) with the
  trainer's settings: packed micro-batches of ``--micro-batch-tokens``, chunked LM-head log-probs on the loss
  tokens, one optimizer step (no old-log-prob pass), the trainer's autocast (bf16 on GPUs), fused AdamW;
- ``plain``: the loop a transformers user writes: ``--plain-rows`` trajectories per micro-batch, right-padded
  to the longest, ``model(..., labels=...)`` (labels -100 off the loss tokens), the same autocast, float32 master
  weights, the same fused AdamW, one step.

The batch is ragged like multi-turn tool use: ``--trajectories`` of a 200-400 token prompt, then turns of a model
message (log-uniform 30-1500 tokens, trained) and a tool output (20-400 tokens, not trained), cut at a length
drawn log-uniformly from ``--min-len`` to ``--max-len``. Tokens/s counts real (non-pad) tokens.

MFU = model FLOPs / time / the device's dense bf16 peak. Model FLOPs of an update (``update_flops``), the same
count for both methods: forward + backward (3x a forward) of the decoder on every real token, with causal
attention within each trajectory, plus the LM head on the tokens the loss scores; no credit for padding or
recomputation. So the two MFUs differ exactly as the two speeds do.

``--compile``: after those, the MLPs and norms are compiled (``gtpo.model.policy.compile_layers``, what
``--model.compile`` does) and gtpo's update is timed again (the warm-up round pays the compilation).

``--memory-check``: one more gtpo update on ``--trajectories`` trajectories all of ``--max-len`` tokens (the
worst case), reporting its peak against 80 GiB (an H100-80GB).

    python benchmarks/model_throughput.py --arch qwen2.5-1.5b --memory-check        # one GPU, ~2-3 minutes
    python benchmarks/model_throughput.py --dry-run                                 # a CPU check, small shapes

Generation is timed by benchmarks/generation.py (gtpo's engine, the reference sampler, model.generate).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass

import torch
from architectures import ARCHITECTURES, random_model
from transformers import Qwen2Config

from gtpo.config import from_dict
from gtpo.distributed import DistContext
from gtpo.model.policy import compile_layers
from gtpo.model.precision import autocast
from gtpo.training.batch import TokenBatch
from gtpo.training.update import PolicyUpdate, build_optimizer

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
"""Dense bf16 peak per GPU (vendor datasheets, without sparsity), matched by substring of the device name."""

MEMORY_LIMIT_GIB = 80.0
"""An H100-80GB: the memory check passes if the peak stays under this."""


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


def update_flops(s: Shape, lengths: list[int], scored: int) -> float:
    """Model FLOPs of one update: 3x the forward of the decoder over every trajectory (each token attends to
    the ``t`` tokens up to itself: 4 * hidden * t per layer) plus the LM head on the ``scored`` loss tokens."""
    decoder = matmul_params(s) - s.hidden * s.vocab
    forward = sum(2 * decoder * n + 4 * s.layers * s.hidden * n * (n + 1) / 2 for n in lengths)
    forward += 2 * s.hidden * s.vocab * scored
    return 3 * forward


def multi_turn_lengths(count: int, min_len: int, max_len: int, seed: int) -> list[list[tuple[int, bool]]]:
    """Per trajectory, its spans as (tokens, trained): a prompt, then model message / tool output turns."""
    gen = torch.Generator().manual_seed(seed)

    def log_uniform(lo: int, hi: int) -> int:
        u = torch.rand((), generator=gen).item()
        return round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))

    trajectories = []
    for _ in range(count):
        target = log_uniform(min_len, max_len)
        spans = [(min(int(torch.randint(200, 401, (), generator=gen)), target // 2), False)]
        total = spans[0][0]
        while total < target:
            for tokens, trained in ((log_uniform(30, 1500), True), (log_uniform(20, 400), False)):
                tokens = min(tokens, target - total)
                if tokens > 0:
                    spans.append((tokens, trained))
                    total += tokens
        trajectories.append(spans)
    return trajectories


def ragged_batch(vocab: int, spans: list[list[tuple[int, bool]]], seed: int) -> tuple[TokenBatch, torch.Tensor]:
    """Right-padded [B, T] tensors of the given spans (random ids) and random advantages on the loss tokens."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [sum(n for n, _ in s) for s in spans]
    rows, width = len(spans), max(lengths)
    ids = torch.randint(1, vocab, (rows, width), generator=gen)
    attention = torch.zeros(rows, width, dtype=torch.long)
    loss_mask = torch.zeros(rows, width, dtype=torch.long)
    for r, trajectory in enumerate(spans):
        attention[r, : lengths[r]] = 1
        start = 0
        for tokens, trained in trajectory:
            loss_mask[r, start : start + tokens] = int(trained)
            start += tokens
    ids = ids * attention
    advantages = torch.randn(rows, width, generator=gen) * loss_mask
    return TokenBatch(ids, attention, loss_mask, loss_mask - 1, torch.zeros(rows, width)), advantages


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


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


class GtpoUpdate:
    """The trainer's update, built as the Trainer builds it (single process)."""

    def __init__(self, model, optimizer, scheduler, device, micro_batch_tokens: int, checkpointing: bool) -> None:
        config = from_dict(
            {
                "model": {"gradient_checkpointing": checkpointing},
                "optim": {"micro_batch_tokens": micro_batch_tokens, "lr": 1e-6},
                "rollout": {"max_total_tokens": 8192},
                "device": str(device),
            }
        )
        self.update = PolicyUpdate(config, model, optimizer, scheduler, ctx=DistContext(), device=device)

    def __call__(self, batch: TokenBatch, advantages: torch.Tensor) -> None:
        self.update(batch, advantages, batch.loss_mask.float())


def plain_update(model, optimizer, batch: TokenBatch, rows: int, device: torch.device) -> None:
    """A plain transformers step: padded micro-batches of ``rows`` trajectories, ``labels=`` loss (token mean over
    the whole batch), the trainer's autocast, gradient clipping, AdamW."""
    total = batch.loss_mask[:, 1:].sum().item()
    for lo in range(0, batch.input_ids.shape[0], rows):
        part = batch[lo : lo + rows]
        width = int(part.attention_mask.sum(1).max())
        ids = part.input_ids[:, :width].to(device)
        labels = torch.where(part.loss_mask[:, :width] > 0, part.input_ids[:, :width], -100).to(device)
        with autocast("auto", device):
            out = model(input_ids=ids, attention_mask=part.attention_mask[:, :width].to(device), labels=labels)
        # transformers averages over this micro-batch's labelled tokens; reweight to the whole batch's mean
        (out.loss * (labels[:, 1:] != -100).sum() / total).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(methods: dict, repeats: int, device: torch.device) -> dict[str, tuple[float, float | None]]:
    """Median seconds per call and peak memory of each method, interleaved, after one warm-up round."""
    times: dict[str, list[float]] = {k: [] for k in methods}
    peaks: dict[str, float | None] = {}
    for i in range(repeats + 1):  # the first round warms up kernels, the allocator (and compilation)
        for key, run in methods.items():
            reset_peak(device)
            seconds = timed(run, device)
            peaks[key] = peak_gib(device)
            if i:
                times[key].append(seconds)
    return {k: (statistics.median(v), peaks[k]) for k, v in times.items()}


def timed(run, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="qwen2.5-1.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trajectories", type=int, default=64, help="trajectories per update (one step)")
    parser.add_argument("--min-len", type=int, default=300)
    parser.add_argument("--max-len", type=int, default=8000)
    parser.add_argument("--micro-batch-tokens", type=int, default=8192, help="gtpo's token budget per micro-batch")
    parser.add_argument("--plain-rows", type=int, default=2, help="trajectories per micro-batch of the plain loop")
    parser.add_argument("--repeats", type=int, default=2, help="timed updates per method (after one warm-up)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--memory-check", action="store_true", help="also time 64 x max-len tokens, report peak")
    parser.add_argument("--compile", action="store_true", help="then also time gtpo with compiled MLPs and norms")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak (dense bf16) for MFU")
    parser.add_argument("--dry-run", action="store_true", help="small shapes on a CPU: checks the script")
    args = parser.parse_args()
    if args.dry_run:
        args.arch, args.device = "small", "cpu"
        args.trajectories, args.min_len, args.max_len, args.micro_batch_tokens = 4, 64, 400, 600
        args.repeats = 1

    device = torch.device(args.device)
    model = random_model(args.arch, device)
    shape = Shape.of(model.config)
    peak = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.arch}: {params / 1e9:.3f}B parameters on {name}; peak {peak / 1e12 if peak else 'n/a'} TFLOP/s")

    spans = multi_turn_lengths(args.trajectories, args.min_len, args.max_len, seed=0)
    batch, advantages = ragged_batch(shape.vocab, spans, seed=0)
    lengths = batch.attention_mask.sum(1).tolist()
    real = sum(lengths)
    scored = int(batch.loss_mask[:, 1:].sum())
    flops = update_flops(shape, lengths, scored)
    padded_plain = sum(
        max(lengths[lo : lo + args.plain_rows]) * len(lengths[lo : lo + args.plain_rows])
        for lo in range(0, len(lengths), args.plain_rows)
    )
    print(
        f"batch: {len(lengths)} trajectories, {real:,} real tokens (min {min(lengths)}, median "
        f"{int(statistics.median(lengths))}, max {max(lengths)}), {scored:,} loss tokens; the plain loop pads "
        f"to {padded_plain:,} tokens ({args.plain_rows} per micro-batch)"
    )

    optimizer, scheduler = build_optimizer(model, from_dict({"optim": {"lr": 1e-6}}).optim, device)
    gtpo = GtpoUpdate(model, optimizer, scheduler, device, args.micro_batch_tokens, args.gradient_checkpointing)
    plain_rows = [args.plain_rows]  # halved if the padded loop runs out of memory

    def run_plain() -> None:
        while True:
            try:
                return plain_update(model, optimizer, batch, plain_rows[0], device)
            except torch.OutOfMemoryError:
                if plain_rows[0] == 1:
                    raise
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                plain_rows[0] //= 2
                print(f"plain: out of memory, retrying with {plain_rows[0]} trajectories per micro-batch")

    def report(label: str, seconds: float, peak_mem: float | None) -> float:
        rate = real / seconds
        mfu = f"{flops / seconds / peak:.3f}" if peak else "n/a (give --peak-tflops)"
        mem = f"{peak_mem:.1f} GiB" if peak_mem is not None else "n/a"
        print(
            f"{label:<12} {rate:>10,.0f} real tokens/s  {flops / seconds / 1e12:>7.2f} TFLOP/s  MFU {mfu}  "
            f"{seconds:.2f} s/update  peak {mem}",
            flush=True,
        )
        return rate

    methods = {"gtpo": lambda: gtpo(batch, advantages)}
    if not args.skip_plain:
        methods["plain"] = run_plain
    rates = {k: report(k, *result) for k, result in measure(methods, args.repeats, device).items()}
    if "plain" in rates:
        print(f"ratio gtpo / plain ({plain_rows[0]} per micro-batch): {rates['gtpo'] / rates['plain']:.2f}x tokens/s")

    if args.memory_check:
        long = [[(min(300, args.max_len), False), (max(args.max_len - 300, 0), True)]] * args.trajectories
        big, big_adv = ragged_batch(shape.vocab, long, seed=1)
        reset_peak(device)
        seconds = timed(lambda: gtpo(big, big_adv), device)
        memory = peak_gib(device)
        verdict = "n/a on CPU" if memory is None else ("fits" if memory < MEMORY_LIMIT_GIB else "does NOT fit")
        shown = "n/a" if memory is None else f"{memory:.1f}"
        print(
            f"memory check: {args.trajectories} x {args.max_len} tokens ({args.trajectories * args.max_len:,}) in "
            f"{seconds:.1f} s, peak {shown} GiB: {verdict} in {MEMORY_LIMIT_GIB:.0f} GiB",
            flush=True,
        )

    if args.compile:
        count = compile_layers(model)  # last: the plain loop shares the model
        print(f"compiling {count} modules (MLPs and norms); the warm-up update pays for it", flush=True)
        seconds, mem = measure({"compiled": lambda: gtpo(batch, advantages)}, args.repeats, device)["compiled"]
        rate = report("gtpo+compile", seconds, mem)
        if "plain" in rates:
            print(f"ratio gtpo+compile / plain: {rate / rates['plain']:.2f}x tokens/s")


if __name__ == "__main__":
    main()
