"""Decode-step benchmark: one engine decode step of a model at several row counts, in operations and CPU time,
with the compact forward's weight-streamed products against every product as ``F.linear``, in the same run.

Run: ``python benchmarks/decode_step.py [--model DIR] [--rows 1,8,64] [--span 160] [--blocks 7] [--steps 50]``
(default: the shipped tiny model; ``--model ~/.cache/gtpo/smollm2-135m-instruct`` after ``gtpo prepare
smollm2-135m-instruct`` for a real one).

A decode step (``gtpo.generation.engine.decode.decode_step``) feeds each of R live slots one token at a key span of
``--span`` positions, runs the engine's forward, samples and records. Two engines over the same weights:

- ``default``: what ``gtpo train`` builds on a CPU (the compact forward; decode products of weights over
  ``compact.STREAMED_WEIGHT_BYTES`` as W·hᵀ);
- ``linear``: the same with every product as ``F.linear`` (h·Wᵀ), the form before weights were streamed. For a
  model whose weights are all under the size (the shipped tiny ones) the two are the same computation.

Printed per row count: the aten operations one step dispatches (counted, so exact), and each engine's wall time
per step (the minimum over ``--blocks`` blocks of ``--steps`` steps, the two engines' blocks alternating, so that
both see the same machine), then the ratio linear / default. On the tiny model both engines run the same
computation, so that ratio's distance from 1 is the measurement's noise.
"""

from __future__ import annotations

import argparse
import collections
import os
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gtpo.generation.engine import EngineOptions, EngineSampler
from gtpo.generation.engine import compact as compact_module
from gtpo.generation.engine.attention import slots_index
from gtpo.generation.engine.decode import decode_step
from gtpo.model.policy import load_policy
from gtpo.tiny import DEFAULT_MODEL_DIR


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def build(model, tokenizer, slots: int, max_len: int, streamed: bool) -> EngineSampler:
    saved = compact_module.STREAMED_WEIGHT_BYTES
    if not streamed:
        compact_module.STREAMED_WEIGHT_BYTES = 2**62
    try:
        return EngineSampler(model, tokenizer, EngineOptions(slots=slots, max_len=max_len, chunk=2))
    finally:
        compact_module.STREAMED_WEIGHT_BYTES = saved


def stepper(sampler: EngineSampler, rows: int, span: int):
    """A function running one decode step of slots 0..rows-1 at positions just under ``span`` (reset each time)."""
    engine = sampler.engine
    state, plan, forward = engine.state, engine.plan, engine.decoder.forward
    index = slots_index(list(range(rows)), state.tokens.device)
    state.alive.zero_()
    state.alive[:rows] = True
    state.remaining[:] = 10**9
    state.tokens[:rows] = 5
    position = span - 1

    def step() -> None:
        state.step.zero_()
        state.pos[:rows] = position
        decode_step(forward, plan, state, engine.decoder.spare_slot, index, span, False)

    return step


def seconds_per_step(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def decode_arguments(description: str, model: str, rows: str, span: int, blocks: int, steps: int) -> argparse.Namespace:
    """The command line both decode benchmarks take, with these defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=model)
    parser.add_argument("--rows", default=rows)
    parser.add_argument("--span", type=int, default=span)
    parser.add_argument("--blocks", type=int, default=blocks)
    parser.add_argument("--steps", type=int, default=steps)
    return parser.parse_args()


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, object, list[int], int, int]:
    """(model in eval mode, tokenizer, row counts, slots, max_len) for ``args``; gradients off."""
    rows_list = [int(r) for r in args.rows.split(",")]
    torch.set_grad_enabled(False)
    model, tokenizer = load_policy(os.path.expanduser(args.model))
    return model.eval(), tokenizer, rows_list, max(rows_list), args.span + 64


def best_times(steps: dict, blocks: int, per_block: int) -> dict[str, float]:
    """Each step function's shortest seconds per call over ``blocks`` blocks of ``per_block`` calls, after a
    warm-up (caches, allocator), the functions' blocks alternating so that all see the same machine."""
    for step in steps.values():
        for _ in range(3):
            step()
    best = {name: float("inf") for name in steps}
    for _ in range(blocks):
        for name, step in steps.items():
            best[name] = min(best[name], seconds_per_step(step, per_block))
    return best


def main() -> None:
    args = decode_arguments(__doc__.splitlines()[0], str(DEFAULT_MODEL_DIR), "1,8,64", 160, 7, 50)
    model, tokenizer, rows_list, slots, max_len = load_model(args)
    engines = {
        "default": build(model, tokenizer, slots, max_len, True),
        "linear": build(model, tokenizer, slots, max_len, False),
    }
    forward = engines["default"].engine.compact
    print(
        f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; torch threads "
        f"{torch.get_num_threads()}; compact forward {forward is not None}, weights streamed "
        f"{getattr(forward, 'streamed', False)}, head streamed {getattr(forward, 'streamed_head', False)}; "
        f"key span {args.span}; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'rows':>5} {'aten ops':>9} {'default ms':>11} {'linear ms':>10} {'linear/default':>15}")
    for rows in rows_list:
        steps = {name: stepper(sampler, rows, args.span) for name, sampler in engines.items()}
        best = best_times(steps, args.blocks, args.steps)
        with OpCounter() as counter:
            steps["default"]()
        ratio = best["linear"] / best["default"]
        print(
            f"{rows:5d} {sum(counter.counts.values()):9d} {best['default'] * 1e3:11.3f} {best['linear'] * 1e3:10.3f} "
            f"{ratio:15.2f}"
        )
    print(f"load average {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
