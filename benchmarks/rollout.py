"""Rollout benchmark: whole multi-turn rollouts with the real sandbox, engine against the reference sampler.

Run: ``python benchmarks/rollout.py [--model DIR] [--problems 8] [--group 8] [--repeats 3]``

The shipped tiny model (or ``--model``) rolls out the embedded task's problems with the embedded default's
turn and length limits, its real sandbox and grader, with two backends in the same run, interleaved:

- ``hf``: ``HFSampler`` turn by turn (all active trajectories generate, then all their code runs);
- ``engine``: ``EngineSampler`` streaming (a trajectory's code runs while the others decode; its next turn
  re-enters at once, KV cache kept) under each ``schedule``.

Printed per backend (medians over repeats): trajectories/s, generated tokens/s, the share of wall time in
which the generator sat idle waiting for the sandbox, and the engine's speed-up over ``hf``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gtpo.config import RolloutConfig
from gtpo.envs.python_tool import python_tool_envs
from gtpo.generation.engine import EngineOptions, EngineSampler
from gtpo.generation.hf import HFSampler
from gtpo.model.policy import load_policy
from gtpo.rollout.episode import rollout
from gtpo.rollout.metrics import rollout_metrics
from gtpo.rollout.spec import EpisodeSpec
from gtpo.sandbox import SandboxPool
from gtpo.tasks.arith import SYSTEM_PROMPT, heldout_problems
from gtpo.tiny import DEFAULT_MODEL_DIR


def one_rollout(sampler, tokenizer, problems, group: int, pool, seed: int, schedule: str) -> dict[str, float]:
    limits = RolloutConfig()  # the embedded default's turn and length limits
    start = time.perf_counter()
    result = rollout(
        problems,
        group,
        sampler,
        tokenizer,
        python_tool_envs(pool, max_turns=limits.max_turns),
        EpisodeSpec(
            system_prompt=SYSTEM_PROMPT,
            max_turns=limits.max_turns,
            max_new_tokens_per_turn=limits.max_new_tokens_per_turn,
            max_total_tokens=limits.max_total_tokens,
            temperature=1.0,
            schedule=schedule,
        ),
        seed=seed,
    )
    wall = time.perf_counter() - start
    metrics = rollout_metrics(result.trajectories)
    return {
        "wall_s": wall,
        "trajectories_per_s": len(result.trajectories) / wall,
        "gen_tokens_per_s": sum(sum(t.loss_mask) for t in result.trajectories) / wall,
        "idle_for_sandbox": result.timings.env_s / wall,
        "turns_mean": metrics["rollout/turns_mean"],
        "accuracy": metrics["reward/accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = load_policy(args.model)
    model.eval()
    problems = heldout_problems()[: args.problems]
    rows = args.problems * args.group
    backends = {
        "hf": (HFSampler(model, tokenizer), "auto"),
        "engine (deterministic)": (
            EngineSampler(model, tokenizer, EngineOptions(slots=rows, max_len=512)),
            "deterministic",
        ),
        "engine (asap)": (EngineSampler(model, tokenizer, EngineOptions(slots=rows, max_len=512)), "asap"),
    }
    print(
        f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"{args.problems} problems x G={args.group}, torch threads {torch.get_num_threads()}"
    )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in backends}
    with SandboxPool() as pool, torch.no_grad():
        for sampler, schedule in backends.values():  # warm-up: sandbox processes, kernels
            one_rollout(sampler, tokenizer, problems[:2], 2, pool, seed=0, schedule=schedule)
        for rep in range(args.repeats):
            for name, (sampler, schedule) in backends.items():
                runs[name].append(one_rollout(sampler, tokenizer, problems, args.group, pool, rep + 1, schedule))
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    keys = list(next(iter(medians.values())))
    print(f"\n{'backend':24s}" + "".join(f"{k:>20s}" for k in keys))
    for name, values in medians.items():
        print(f"{name:24s}" + "".join(f"{values[k]:20.3f}" for k in keys))
    base = medians["hf"]["trajectories_per_s"]
    for name in backends:
        if name != "hf":
            print(f"{name} / hf: {medians[name]['trajectories_per_s'] / base:.2f}x trajectories/s")


if __name__ == "__main__":
    main()
