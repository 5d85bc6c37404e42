"""Rebuild the shipped tiny model: tokenizer, traces, supervised warm start, measurement, save.

``gtpo build-tiny --out DIR`` (or ``python -m gtpo.tiny.build``). The default writes the asset the package
ships (``DEFAULT_MODEL_DIR``). Traces are tokenized exactly as the rollout does it: prompt through the chat
template, each model segment and each tool output tokenized on its own, EOS after the final message; the loss
covers model segments and that EOS only.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from gtpo.policy import prompt_ids
from gtpo.tasks.arith import HELDOUT_PATH, SYSTEM_PROMPT, heldout_problems, write_heldout
from gtpo.tasks.traces import Trace, make_traces
from gtpo.tiny.model import new_model
from gtpo.tiny.tokenizer import build_tokenizer

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny"


def tokenize_trace(tokenizer: Any, trace: Trace) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of one trace, with the rollout's token boundaries."""
    ids = prompt_ids(tokenizer, SYSTEM_PROMPT, trace.question)
    mask = [0] * len(ids)
    for kind, text in trace.segments:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        mask += [1 if kind == "model" else 0] * len(piece)
    ids.append(tokenizer.eos_token_id)
    mask.append(1)
    return ids, mask


def corpus(traces: list[Trace]) -> list[str]:
    return [SYSTEM_PROMPT] + [t.question + "".join(text for _, text in t.segments) for t in traces]


def supervised_warm_start(
    model: torch.nn.Module, examples: list[tuple[list[int], list[int]]], steps: int, seed: int, pad_id: int
) -> float:
    """Plain masked next-token training; returns the mean loss of the last 50 steps."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    recent: list[float] = []
    for _ in range(steps):
        batch = rng.sample(examples, 32)
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, mask) in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            labels[row, : len(seq)] = torch.where(torch.tensor(mask) == 1, torch.tensor(seq), -100)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        recent = [*recent[-49:], loss.item()]
    model.eval()
    return sum(recent) / len(recent)


def measure(model: torch.nn.Module, tokenizer: Any, n: int = 96, temperature: float = 1.0) -> dict[str, float]:
    """Held-out accuracy and tool use of the warm-started model, through the real rollout and sandbox."""
    from gtpo.config import RolloutConfig
    from gtpo.generate import HFSampler
    from gtpo.rollout import rollout, rollout_metrics
    from gtpo.sandbox import SandboxPool

    limits = RolloutConfig()  # the embedded default's turn and length limits
    with SandboxPool() as pool:
        start = time.perf_counter()
        result = rollout(
            heldout_problems()[:n],
            1,
            HFSampler(model, tokenizer),
            tokenizer,
            pool,
            system_prompt=SYSTEM_PROMPT,
            max_turns=limits.max_turns,
            max_new_tokens_per_turn=limits.max_new_tokens_per_turn,
            max_total_tokens=limits.max_total_tokens,
            temperature=temperature,
            seed=0,
        )
        seconds = time.perf_counter() - start
    metrics = rollout_metrics(result.trajectories)
    generated = sum(sum(t.loss_mask) for t in result.trajectories)
    return {
        "heldout_accuracy": metrics["reward/accuracy"],
        "tool_call_rate": metrics["rollout/tool_call_rate"],
        "turns_mean": metrics["rollout/turns_mean"],
        "gen_tokens_per_s": generated / max(result.timings.generation_s, 1e-9),
        "rollout_s": seconds,
    }


def build(out: Path, steps: int, seed: int, traces: int, measure_n: int = 96) -> dict[str, Any]:
    torch.manual_seed(seed)
    if not HELDOUT_PATH.exists():
        write_heldout()
    trace_list = make_traces(traces, seed)
    tokenizer = build_tokenizer(corpus(trace_list))
    model = new_model(tokenizer, seed=seed)
    examples = [tokenize_trace(tokenizer, t) for t in trace_list]
    start = time.perf_counter()
    loss = supervised_warm_start(model, examples, steps, seed, tokenizer.pad_token_id)
    info: dict[str, Any] = {
        "steps": steps,
        "seed": seed,
        "traces": traces,
        "final_sft_loss": loss,
        "sft_seconds": time.perf_counter() - start,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    info.update({f"temp1_{k}": v for k, v in measure(model, tokenizer, n=measure_n).items()})
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gtpo build-tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="output directory (HF format)")
    parser.add_argument("--steps", type=int, default=3500, help="supervised steps (batch 32)")
    parser.add_argument("--traces", type=int, default=20000, help="number of generated traces")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = build(args.out, args.steps, args.seed, args.traces)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
