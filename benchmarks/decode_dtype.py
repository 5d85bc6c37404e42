"""Decode-step benchmark by precision: one engine decode step of a model in float32 and in bfloat16, in one run.

Run: ``python benchmarks/decode_dtype.py [--model DIR] [--rows 1,8] [--span 400] [--blocks 5] [--steps 30]``
(default: SmolLM2-135M-Instruct as ``gtpo prepare smollm2-135m-instruct`` builds it; ``--model`` another folder).

Four engines over the same weights, each with the compact forward (``gtpo.generation.engine.compact``):

- ``float32``: what ``gtpo train`` builds with ``--generation.engine-dtype float32`` (for a model whose weights
  are streamed, decode steps of 2+ rows on packed weights: ``PACK_STREAMED_FLOAT32``);
- ``float32 unpacked``: the same without packed weights (decode products as W·hᵀ where weights are streamed,
  the form before; else ``F.linear``);
- ``bf16``: the same in bfloat16, products on weights in oneDNN's packed layout (``PACKED_DTYPES``): what "auto"
  builds on a CPU with native bf16 products for a model above ``BF16_MIN_WEIGHT_BYTES``;
- ``bf16 plain``: bfloat16 with every product as ``F.linear`` on the plain weights (``packed_weights`` off).

Printed per row count: each engine's wall time per decode step (the minimum over ``--blocks`` blocks of ``--steps``
steps, the engines' blocks alternating so that all see the same machine) and its speed-up over ``float32
unpacked`` (that engine's time over its own); first, whether
this CPU multiplies bf16 natively (``native_bf16_cpu``). Where it does not, bf16 is expected to be slower: the
rule that picks the dtype leaves such CPUs in float32.
"""

from __future__ import annotations

import os

import torch
from decode_step import best_times, decode_arguments, load_model, stepper

from gtpo.generation.engine import EngineOptions, EngineSampler
from gtpo.generation.engine.weights import native_bf16_cpu
from gtpo.prepare import gtpo_home


def build(model, tokenizer, rows: int, max_len: int, dtype: torch.dtype, packed: bool) -> EngineSampler:
    options = EngineOptions(slots=rows, max_len=max_len, chunk=2, dtype=dtype, packed_weights=packed)
    return EngineSampler(model, tokenizer, options)


def main() -> None:
    model_dir = str(gtpo_home() / "smollm2-135m-instruct")
    args = decode_arguments(__doc__.splitlines()[0], model_dir, "1,8", 400, 5, 30)
    model, tokenizer, rows_list, slots, max_len = load_model(args)
    engines = {
        "float32": build(model, tokenizer, slots, max_len, torch.float32, True),
        "float32 unpacked": build(model, tokenizer, slots, max_len, torch.float32, False),
        "bf16": build(model, tokenizer, slots, max_len, torch.bfloat16, True),
        "bf16 plain": build(model, tokenizer, slots, max_len, torch.bfloat16, False),
    }
    for name, sampler in engines.items():
        if sampler.engine.compact is None:
            raise SystemExit(f"{name}: the compact forward was not built for this model; nothing to compare")
    print(
        f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; torch threads "
        f"{torch.get_num_threads()}; native bf16 products {native_bf16_cpu()}; key span {args.span}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    base = "float32 unpacked"
    others = [name for name in engines if name != base]
    print(
        f"{'rows':>5}" + "".join(f"{name + ' ms':>20}" for name in engines) + "".join(f"{'x ' + n:>14}" for n in others)
    )
    for rows in rows_list:
        steps = {name: stepper(sampler, rows, args.span) for name, sampler in engines.items()}
        best = best_times(steps, args.blocks, args.steps)
        ratios = "".join(f"{best[base] / best[name]:14.2f}" for name in others)
        print(f"{rows:5d}" + "".join(f"{best[name] * 1e3:20.1f}" for name in engines) + ratios)
    print(f"load average {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
