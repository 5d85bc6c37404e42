"""Generation throughput: gtpo's engine against the reference sampler and transformers, same prompts, one run.

Backends (each samples at temperature 1 from the same random prompts, ``--new`` tokens per row):
- ``engine``: ``gtpo.generation.engine.EngineSampler`` (continuous batching, slot KV cache, CUDA-graph decode on GPU),
  what ``--generation.backend engine`` (the default) trains with;
- ``hf``: ``gtpo.generation.hf.HFSampler``, the plain transformers loop (``--generation.backend hf``), under the
  trainer's autocast;
- ``generate``: transformers' ``model.generate`` with its KV cache, sampling, EOS suppressed
  (``min_new_tokens``), under the same autocast;
- ``transformers-cb`` (only with ``--transformers-cb``): transformers' continuous batching,
  ``model.generate_batch`` (paged attention, its own CUDA graphs) on a bf16 copy of the model, timed after a
  warm-up call.

"First call" is each backend's first call at the measured shape in a fresh process, the engine's start-up
(its copy of the model, its KV cache) included; the first backend named also pays the process's one-time
kernel set-up, so compare first calls with the order of ``--backends`` reversed too.

Tokens/s counts the tokens each backend returned (a sampler that stops a row early is not credited for tokens
it did not make). On a GPU the line "ceiling" is what the memory bandwidth allows at that batch: each decode
step reads all weights once and every row's keys/values.

    python benchmarks/generation.py --arch qwen2.5-1.5b --rows 64 256            # one GPU
    python benchmarks/generation.py --device cpu --rows 64 --new 64               # the shipped tiny model
    python benchmarks/generation.py --device cpu --model ~/.cache/gtpo/smollm2-135m-instruct \
        --rows 32 --prompt 48 --new 64 --backends engine,generate                # a real model folder
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from architectures import ARCHITECTURES, random_model, tiny_tokenizer

from gtpo.generation.engine import EngineOptions, EngineSampler
from gtpo.generation.hf import HFSampler
from gtpo.model.policy import load_policy
from gtpo.model.precision import autocast
from gtpo.tiny import DEFAULT_MODEL_DIR

BANDWIDTH = {"H200": 4.3e12, "H100": 3.0e12, "A100": 1.8e12}
"""Measured or nominal HBM bytes/s; only used to print the decode ceiling."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_backends(model, tokenizer, device, rows: int, max_len: int, names: list[str]) -> dict:
    """name -> function(prompts, new_tokens, seed) returning the number of generated tokens."""
    backends = {}
    if "engine" in names:
        built: list[EngineSampler] = []  # built by the first call, which so counts the engine's start-up

        def run_engine(prompts, new, seed):
            if not built:
                built.append(EngineSampler(model, tokenizer, EngineOptions(slots=rows, max_len=max_len, chunk=16)))
            samples = built[0].generate(prompts, [new] * len(prompts), temperature=1.0, seed=seed)
            return sum(len(s.token_ids) for s in samples)

        backends["engine"] = run_engine
    if "hf" in names:
        sampler = HFSampler(model, tokenizer)

        def run_hf(prompts, new, seed):
            with autocast("auto", device):
                samples = sampler.generate(prompts, [new] * len(prompts), temperature=1.0, seed=seed)
            return sum(len(s.token_ids) for s in samples)

        backends["hf"] = run_hf
    if "generate" in names:

        @torch.no_grad()
        def run_generate(prompts, new, seed):
            torch.manual_seed(seed)
            ids = torch.tensor(prompts, device=device)
            with autocast("auto", device):
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    pad_token_id=0,
                )
            return int((out.shape[1] - ids.shape[1]) * ids.shape[0])

        backends["generate"] = run_generate
    if "transformers-cb" in names:
        import copy

        from transformers import GenerationConfig

        # Its manager decodes in a thread of its own, where the caller's autocast does not reach: give it
        # bf16 weights on a GPU, as the engine has.
        cb_model = copy.deepcopy(model).to(torch.bfloat16) if device.type == "cuda" else model

        @torch.no_grad()
        def run_cb(prompts, new, seed):
            torch.manual_seed(seed)
            config = GenerationConfig(
                max_new_tokens=new, do_sample=True, temperature=1.0, top_k=0, eos_token_id=-1, pad_token_id=0
            )
            out = cb_model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
            return sum(len(o.generated_tokens) for o in out.values())

        backends["transformers-cb"] = run_cb
    return backends


def logprob_gap(model, tokenizer, device, prompts: list[list[int]], new: int) -> dict[str, float]:
    """Engine log-probs against the trainer's recomputation (``token_logprobs`` under the trainer's autocast)."""
    from gtpo.model.policy import token_logprobs

    sampler = EngineSampler(model, tokenizer, EngineOptions(slots=len(prompts), max_len=len(prompts[0]) + new))
    samples = sampler.generate(prompts, [new] * len(prompts), temperature=1.0, seed=123)
    gaps = []
    with torch.no_grad(), autocast("auto", device):
        for prompt, sample in zip(prompts, samples, strict=True):
            ids = torch.tensor([prompt + sample.token_ids], device=device)
            logp, _ = token_logprobs(model, ids, torch.ones_like(ids), 1.0)
            gaps.append((logp[0, len(prompt) :].float().cpu() - torch.tensor(sample.logprobs)).abs())
    gap = torch.cat(gaps)
    return {"max_abs": gap.max().item(), "mean_abs": gap.mean().item(), "tokens": gap.numel()}


def decode_step_times(model, tokenizer, device, rows: int, context: int, steps: int = 32) -> dict[str, float]:
    """Milliseconds per decode step of ``rows`` live slots at ``context`` tokens: CUDA-graph replay vs eager.

    Isolates the decode step (model, sampling, bookkeeping) from prefill and the host's per-chunk work, so
    that the end-to-end figure can be read against it.
    """
    times = {}
    for graphs in (True, False):
        options = EngineOptions(slots=rows, max_len=context + 2 * steps + 2, cuda_graphs=graphs, static_shapes=True)
        engine = EngineSampler(model, tokenizer, options).engine
        state = engine.state
        state.alive[:rows] = True
        state.remaining[:rows] = 10**6
        span = context + 2 * steps + 2
        for label, count in (("warm", 2), ("timed", steps)):
            state.pos[:rows] = context
            _sync(device)
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(count):
                    state.step.zero_()  # one chunk column, rewritten each step
                    engine.decoder.static_step(rows, span, False)
            _sync(device)
            if label == "timed":
                times["graph_ms" if graphs else "eager_ms"] = (time.perf_counter() - start) / count * 1000
        del engine
    return times


def ceiling(model, rows: int, context: int, device: torch.device) -> float | None:
    """Decode tokens/s the memory bandwidth allows: rows / (bf16 weights + rows' KV read per step)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    bandwidth = next((bw for key, bw in BANDWIDTH.items() if key in name), None)
    if bandwidth is None:
        return None
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    kv_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 2
    weights = sum(p.numel() for p in model.parameters()) * 2
    return rows / ((weights + rows * context * kv_per_token) / bandwidth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=None, help="random-weight shape")
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: the shipped tiny model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens per row")
    parser.add_argument("--new", type=int, default=128, help="new tokens per row")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", default="engine,hf,generate")
    parser.add_argument("--transformers-cb", action="store_true", help="also time model.generate_batch")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()
    device = torch.device(args.device)
    names = args.backends.split(",") + (["transformers-cb"] if args.transformers_cb else [])
    if args.arch:
        model, tokenizer = random_model(args.arch, device), tiny_tokenizer()
        label = args.arch
    else:
        folder = args.model.expanduser() if args.model else DEFAULT_MODEL_DIR
        model, tokenizer = load_policy(str(folder), device=device)
        model.eval()
        label = str(args.model) if args.model else "shipped tiny model"
    vocab_low = max(tokenizer.all_special_ids, default=2) + 1  # random prompts avoid the special tokens
    print(f"generation benchmark: {label} on {device}, prompts {args.prompt} tokens, {args.new} new tokens/row")
    results = []
    for rows in args.rows:
        generator = torch.Generator().manual_seed(rows)
        high = min(model.config.vocab_size, 30_000)
        prompts = torch.randint(vocab_low, high, (rows, args.prompt), generator=generator).tolist()
        backends = make_backends(model, tokenizer, device, rows, args.prompt + args.new, names)
        warm = {}
        for name, run in backends.items():  # warm-up at the measured shape (graph capture, kernels, caches)
            start = time.perf_counter()
            run(prompts, args.new, seed=0)
            _sync(device)
            warm[name] = time.perf_counter() - start
        speeds: dict[str, list[float]] = {name: [] for name in backends}
        for rep in range(args.repeats):
            for name, run in backends.items():
                _sync(device)
                start = time.perf_counter()
                tokens = run(prompts, args.new, seed=rep + 1)
                _sync(device)
                speeds[name].append(tokens / (time.perf_counter() - start))
        row = {"rows": rows, "tokens_per_s": {n: statistics.median(v) for n, v in speeds.items()}, "warmup_s": warm}
        row["ceiling_tokens_per_s"] = ceiling(model, rows, args.prompt + args.new // 2, device)
        results.append(row)
        print(f"\nrows {rows}:")
        for name, value in row["tokens_per_s"].items():
            print(f"  {name:16s} {value:10.0f} tokens/s   (first call {warm[name]:.1f} s)")
        tps = row["tokens_per_s"]
        for base in ("generate", "hf"):
            if "engine" in tps and base in tps:
                print(f"  engine / {base:9s} {tps['engine'] / tps[base]:6.2f}x")
        if row["ceiling_tokens_per_s"]:
            share = tps.get("engine", 0) / row["ceiling_tokens_per_s"]
            print(f"  ceiling          {row['ceiling_tokens_per_s']:10.0f} tokens/s (engine at {share:.0%})")
        del backends
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":
        rows = args.rows[-1]
        step = decode_step_times(model, tokenizer, device, rows, args.prompt + args.new // 2)
        print(
            f"\ndecode step alone, {rows} rows: CUDA graph {step['graph_ms']:.2f} ms "
            f"({rows / step['graph_ms'] * 1000:.0f} tokens/s), eager {step['eager_ms']:.2f} ms"
        )
        results.append({"rows": rows, "decode_step": step})
    gap = logprob_gap(model, tokenizer, device, prompts[:8], args.new)
    print(
        f"\nengine log-probs vs the trainer's recomputation ({gap['tokens']} tokens): "
        f"max |diff| {gap['max_abs']:.2e}, mean {gap['mean_abs']:.2e}"
    )
    if args.json:
        summary = {"model": label, "device": str(device), "results": results, "logprob_gap": gap}
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
