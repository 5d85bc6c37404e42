"""Training steps of a preset against this machine's floor: the smollm2-135m preset by default.

Run: ``python benchmarks/preset_step.py [--preset smollm2-135m] [--steps 4] [--threads N] [gtpo train flags]``
(for example ``--model.name-or-path runs/smollm2-arith --rollout.temperature 1.0`` for the warm-started recipe).
``--linear-only`` runs every product of the engine's compact forward as ``F.linear`` (h·Wᵀ), the form used before
large weights were streamed as W·hᵀ: the same command with and without it, one after the other, is the comparison.

First the machine, in this process at its torch threads: fp32 matmul GFLOP/s (a 2048 x 2048 product) and memory
read GB/s (a sum over a 512 MB tensor), each the best of several tries, per busy thread-second (CPU time) and per
wall second.
Then ``--steps`` training steps of the preset (evaluation, checkpoints and the exported model off), the rollout and
the update of each in wall and CPU seconds (on a shared machine the wall clock counts the other processes' turns;
CPU seconds count this process's own work), beside its floor in CPU seconds:

- update >= 6 x parameters x trained tokens / matmul rate (forward and backward of every token);
- rollout >= decode steps x weight bytes / read rate (each decode step reads every weight once) + prefill tokens
  x 2 x parameters / matmul rate;

and the ratio of each to its floor (weight bytes are the policy's, float32 for the preset, whatever dtype the
engine samples in: ``generation.engine_dtype``, printed after setup; where the engine's copy is smaller, as in
bfloat16, the rollout against one read of that copy a decode step is printed too); the sampler/trainer gap of
each step (mean |log pi_trainer - log pi_sampler| over trained tokens, ``loss/is_mismatch_mean``); then the first
step against the median of the later ones, and the peak resident memory of this process (the sandbox runs in
processes of its own). The preset's model must be there (``gtpo prepare smollm2-135m-instruct``), or name another
with ``--model.name-or-path``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import tempfile
import time

import torch
import tyro

from gtpo.config import TrainConfig, load_preset
from gtpo.generation.engine import compact
from gtpo.trainer import Trainer


def best_of(fn, tries: int, clock=time.perf_counter) -> float:
    """The shortest time of ``tries`` calls of ``fn`` (after one warm-up call) on ``clock``."""
    fn()
    times = []
    for _ in range(tries):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def machine_rates(clock=time.perf_counter, tries: int = 5) -> tuple[float, float]:
    """(fp32 matmul FLOP/s of a 2048 x 2048 product, memory read bytes/s of a sum over 512 MB) on ``clock``; on
    the CPU-time clock a rate is per busy thread-second, what the machine gives a process it does not share."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    flops = 2 * 2048**3 / best_of(lambda: a @ b, tries, clock)
    big = torch.ones(128 * 2**20)  # 512 MB of float32
    bandwidth = big.numel() * 4 / best_of(big.sum, tries, clock)
    return flops, bandwidth


def timed(log: dict[str, float], name: str, fn):
    """``fn`` that adds its wall and CPU seconds to ``log[name + "_s"]`` and ``log[name + "_cpu_s"]``."""

    def run(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            log[f"{name}_s"] = log.get(f"{name}_s", 0.0) + time.perf_counter() - wall
            log[f"{name}_cpu_s"] = log.get(f"{name}_cpu_s", 0.0) + time.process_time() - cpu

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--head-block",
        type=int,
        default=None,
        help="vocabulary rows of the LM head per product (0: whole head); only where the head runs as F.linear: "
        "a head under STREAMED_WEIGHT_BYTES, or with --linear-only (SmolLM2's head is streamed otherwise)",
    )
    parser.add_argument(
        "--linear-only",
        action="store_true",
        help="every product in F.linear's h·Wᵀ form, also for weights larger than STREAMED_WEIGHT_BYTES",
    )
    args, flags = parser.parse_known_args()  # the rest: gtpo train's flags, over the preset
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.head_block is not None:
        compact.HEAD_BLOCK = args.head_block or 2**62
    if args.linear_only:
        compact.STREAMED_WEIGHT_BYTES = 2**62
    flops, bandwidth = machine_rates(time.process_time)
    wall_flops, wall_bandwidth = machine_rates()
    print(
        f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average "
        f"{os.getloadavg()[0]:.1f}; per busy thread-second (CPU time): fp32 matmul {flops / 1e9:.0f} GFLOP/s, "
        f"memory read {bandwidth / 1e9:.1f} GB/s; per wall second now: {wall_flops / 1e9:.0f} GFLOP/s, "
        f"{wall_bandwidth / 1e9:.1f} GB/s"
    )
    config = tyro.cli(TrainConfig, args=flags, default=load_preset(args.preset))
    with tempfile.TemporaryDirectory() as tmp:
        config = dataclasses.replace(
            config, output_dir=tmp, eval_every=0, save_every=0, progress=False, steps=args.steps, export="none"
        )
        start = time.perf_counter()
        trainer = Trainer(config)
        engine = getattr(trainer.sampler, "engine", None)
        sampling = f"engine in {str(engine.dtype).removeprefix('torch.')}" if engine else "no engine"
        print(f"setup (model, engine, sandbox): {time.perf_counter() - start:.1f} s; {sampling}")
        params = sum(p.numel() for p in trainer.policy.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in trainer.policy.parameters())
        engine_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters()) if engine else 0
        engine_reads: list[float] = []  # per step: the rollout's floor at the engine's own weight bytes
        log: dict[str, float] = {}
        trainer._collect_groups = timed(log, "rollout", trainer._collect_groups)
        trainer._update = timed(log, "update", trainer._update)
        rows = []
        try:
            for _ in range(args.steps):
                log.clear()
                before = dict(engine.stats) if engine is not None else {}
                metrics = trainer.train_step()
                trainer.step += 1
                after = engine.stats if engine is not None else {}
                decode = after.get("decode_steps", 0) - before.get("decode_steps", 0)
                prefill = after.get("prefill_tokens", 0) - before.get("prefill_tokens", 0)
                trained = metrics["perf/train_tokens_per_s"] * metrics["perf/update_s"]
                engine_reads.append(decode * engine_bytes / bandwidth + prefill * 2 * params / flops)
                rows.append(
                    {
                        **{k: log.get(k, 0.0) for k in ("rollout_s", "rollout_cpu_s", "update_s", "update_cpu_s")},
                        "rollout_floor_s": decode * weight_bytes / bandwidth + prefill * 2 * params / flops,
                        "update_floor_s": 6 * params * trained / flops,
                        "decode_steps": decode,
                        "trained_tokens": trained,
                        "is_mismatch": metrics.get("loss/is_mismatch_mean", float("nan")),
                    }
                )
        finally:
            trainer.close()
    print(
        f"\n{params / 1e6:.0f}M parameters, {weight_bytes / 1e6:.0f} MB of weights. Per step: wall and CPU seconds, "
        "the floor in CPU seconds, CPU / floor:"
    )
    keys = list(rows[0])
    print(f"{'step':>5s}" + "".join(f"{k:>16s}" for k in keys) + f"{'rollout/floor':>15s}{'update/floor':>14s}")
    for i, row in enumerate(rows, 1):
        ratios = (
            f"{row['rollout_cpu_s'] / row['rollout_floor_s']:15.2f}{row['update_cpu_s'] / row['update_floor_s']:14.2f}"
        )
        print(f"{i:5d}" + "".join(f"{row[k]:16.2f}" for k in keys) + ratios)
    cpu = [r["rollout_cpu_s"] + r["update_cpu_s"] for r in rows]
    floors = [r["rollout_floor_s"] + r["update_floor_s"] for r in rows]
    if len(rows) > 1:
        print(f"\nfirst step / median of the later ones (CPU seconds): {cpu[0] / statistics.median(cpu[1:]):.2f}")
    wall = statistics.median(r["rollout_s"] + r["update_s"] for r in rows)
    over = statistics.median(c / f for c, f in zip(cpu, floors, strict=True))
    if engine_bytes and engine_bytes != weight_bytes:
        own = statistics.median(r["rollout_cpu_s"] / f for r, f in zip(rows, engine_reads, strict=True))
        print(
            f"the engine's copy holds {engine_bytes / 1e6:.0f} MB of weights: against one read of those a decode step "
            f"the rollout is {own:.2f}x its floor (median over steps)"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    floor = statistics.median(floors)
    print(
        f"median step {statistics.median(cpu):.1f} CPU s (wall {wall:.1f} s), its floor {floor:.1f} s ({over:.2f}x); "
        f"peak resident memory {peak:.2f} GiB; load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
