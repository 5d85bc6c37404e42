"""Rollout benchmark: trajectories/s, generated tokens/s, and where the time goes (generation, sandbox, grading).

Run: ``python benchmarks/rollout.py [--model DIR] [--problems 16] [--group 8] [--repeats 2]``

1. Full multi-turn rollouts of the embedded task's held-out problems with the shipped tiny model (or
   ``--model``): the real sampler, sandbox and grader, timed per stage by the rollout itself.
2. Baseline measured in the same run: transformers' own ``model.generate`` on the same first-turn prompts
   with the same token budget (one turn, no tool), against ``HFSampler`` on the same prompts. The ratio says
   what our sampling loop (left padding, fence-triggered stop checks) costs or saves against the reference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gtpo.config import RolloutConfig
from gtpo.generate import HFSampler
from gtpo.policy import load_policy, prompt_ids
from gtpo.rollout import rollout, rollout_metrics
from gtpo.sandbox import SandboxPool
from gtpo.tasks.arith import SYSTEM_PROMPT, heldout_problems
from gtpo.tiny.build import DEFAULT_MODEL_DIR


def full_rollouts(model, tokenizer, problems, group: int, repeats: int) -> dict[str, float]:
    sampler = HFSampler(model, tokenizer)
    limits = RolloutConfig()  # the embedded default's turn and length limits
    totals = {"wall_s": 0.0, "generation_s": 0.0, "sandbox_s": 0.0, "grading_s": 0.0, "tokens": 0, "traj": 0}
    last_metrics: dict[str, float] = {}
    with SandboxPool() as pool:
        for rep in range(repeats):
            start = time.perf_counter()
            result = rollout(
                problems,
                group,
                sampler,
                tokenizer,
                pool,
                system_prompt=SYSTEM_PROMPT,
                max_turns=limits.max_turns,
                max_new_tokens_per_turn=limits.max_new_tokens_per_turn,
                max_total_tokens=limits.max_total_tokens,
                temperature=1.0,
                seed=rep,
            )
            totals["wall_s"] += time.perf_counter() - start
            for key, value in result.timings.as_dict().items():
                totals[key] += value
            totals["tokens"] += sum(sum(t.loss_mask) for t in result.trajectories)
            totals["traj"] += len(result.trajectories)
            last_metrics = rollout_metrics(result.trajectories)
    wall = totals["wall_s"]
    return {
        "trajectories_per_s": totals["traj"] / wall,
        "gen_tokens_per_s": totals["tokens"] / wall,
        "share_generation": totals["generation_s"] / wall,
        "share_sandbox": totals["sandbox_s"] / wall,
        "share_grading": totals["grading_s"] / wall,
        "share_other": 1 - (totals["generation_s"] + totals["sandbox_s"] + totals["grading_s"]) / wall,
        "turns_mean": last_metrics.get("rollout/turns_mean", float("nan")),
        "accuracy": last_metrics.get("reward/accuracy", float("nan")),
    }


def sampler_vs_generate(model, tokenizer, problems, group: int, new_tokens: int, repeats: int) -> dict[str, float]:
    """Same prompts, same budget, sampling at temperature 1 with no early stop in either."""
    contexts = [prompt_ids(tokenizer, SYSTEM_PROMPT, p.question) for p in problems for _ in range(group)]
    sampler = HFSampler(model, tokenizer)
    sampler.eos_ids = set()  # generate the full budget, like the baseline below
    sampler._fence_tokens = set()
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, ctx in enumerate(contexts):
        ids[row, width - len(ctx) :] = torch.tensor(ctx)
        mask[row, width - len(ctx) :] = 1
    ours, theirs = [], []
    for rep in range(repeats):
        start = time.perf_counter()
        sampler.generate(contexts, [new_tokens] * len(contexts), temperature=1.0, seed=rep)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        theirs.append(time.perf_counter() - start)
        assert out.shape[1] == width + new_tokens
    tokens = len(contexts) * new_tokens
    return {
        "hf_sampler_tokens_per_s": tokens / statistics.median(ours),
        "model_generate_tokens_per_s": tokens / statistics.median(theirs),
        "ratio_ours_over_generate": statistics.median(theirs) / statistics.median(ours),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_policy(args.model)
    model.eval()
    problems = heldout_problems()[: args.problems]
    print(
        f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"{args.problems} problems x G={args.group}, torch threads {torch.get_num_threads()}"
    )
    full = full_rollouts(model, tokenizer, problems, args.group, args.repeats)
    print("\nfull multi-turn rollouts (sampler + sandbox + grading)")
    for key, value in full.items():
        print(f"  {key:24s} {value:10.3f}")
    base = sampler_vs_generate(model, tokenizer, problems, args.group, args.new_tokens, args.repeats)
    print(f"\nfirst turn, {args.new_tokens} tokens each: HFSampler vs transformers model.generate (same run)")
    for key, value in base.items():
        print(f"  {key:28s} {value:10.2f}")


if __name__ == "__main__":
    main()
