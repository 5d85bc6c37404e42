"""Rollout benchmark: whole multi-turn rollouts with the real sandbox, the default sampler against the frozen reference.

Run: ``python benchmarks/rollout.py [--model DIR] [--problems 8] [--group 8] [--repeats 3] [--busy]``

The shipped tiny model (or ``--model``) rolls out the embedded task's problems with the embedded default's turn
and length limits, its real sandbox and grader, with these samplers in the same run, interleaved:

- ``reference``: the plain transformers loop of 2026-11-29, frozen in ``benchmarks/reference_sampler.py``, turn by
  turn (all active trajectories generate, then all their code runs): the baseline every ratio is against;
- ``hf``: today's ``HFSampler`` (``--generation.backend hf``), turn by turn;
- ``default``: what ``gtpo train`` builds with its default settings on this device (``build_sampler``), with the
  default schedule;
- ``engine asap``: the engine streaming with the "asap" schedule (re-entry as soon as a cell's output is back);
- ``engine, hf forward``: the engine as by default, but running transformers' modeling code instead of its compact
  forward (its path on CUDA and for architectures the compact forward does not implement).

Printed per sampler (medians over repeats): trajectories/s, generated tokens/s, the CPU seconds of this process
per rollout, the share of wall time in which the generator sat idle waiting for the sandbox, turns and accuracy;
then each one's trajectories/s over the reference's, and the load average before and after. ``--busy`` keeps one
core busy with a spinning process for the whole run (what a shared 2-core machine looks like).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import torch
from reference_sampler import ReferenceSampler

from gtpo.components import build_sampler
from gtpo.config import RolloutConfig, TrainConfig
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
    start, cpu = time.perf_counter(), time.process_time()
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
            temperature=limits.temperature,
            schedule=schedule,
        ),
        seed=seed,
    )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    metrics = rollout_metrics(result.trajectories)
    return {
        "trajectories_per_s": len(result.trajectories) / wall,
        "gen_tokens_per_s": sum(sum(t.loss_mask) for t in result.trajectories) / wall,
        "wall_s": wall,
        "cpu_s": cpu,
        "idle_for_sandbox": result.timings.env_s / wall,
        "turns_mean": metrics["rollout/turns_mean"],
        "accuracy": metrics["reward/accuracy"],
    }


def samplers(model, tokenizer, problems: int, group: int) -> dict[str, tuple[object, str]]:
    """name -> (sampler, schedule); ``default`` is what ``gtpo train`` builds with its default settings, and the
    engine rows take the default engine's options but for the one thing they vary."""
    config = TrainConfig()
    config.rollout.problems_per_step, config.rollout.group_size = problems, group
    default = build_sampler(config, model, tokenizer)
    rows = problems * group
    options = getattr(default, "engine", None)
    options = options.options if options is not None else EngineOptions(slots=rows, max_len=512, chunk=2)
    return {
        "reference": (ReferenceSampler(model, tokenizer), "auto"),
        "hf": (HFSampler(model, tokenizer), "auto"),
        "default": (default, config.generation.schedule),
        "engine asap": (EngineSampler(model, tokenizer, options), "asap"),
        "engine, hf forward": (EngineSampler(model, tokenizer, replace(options, compact=False)), "deterministic"),
    }


def spinner() -> subprocess.Popen:
    """A process that keeps one core busy until it is killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="keep one core busy with a spinning process")
    args = parser.parse_args()
    model, tokenizer = load_policy(args.model)
    model.eval()
    problems = heldout_problems()[: args.problems]
    backends = samplers(model, tokenizer, args.problems, args.group)
    default = backends["default"][0]
    default_name = type(default).__name__
    if hasattr(default, "engine"):
        default_name += f" (compact forward: {default.engine.compact is not None})"
    print(
        f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"{args.problems} problems x G={args.group}, torch threads {torch.get_num_threads()}, "
        f"default sampler {default_name}"
    )
    busy = spinner() if args.busy else None
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in backends}
    try:
        with SandboxPool() as pool, torch.no_grad():
            for sampler, schedule in backends.values():  # warm-up: sandbox processes, kernels
                one_rollout(sampler, tokenizer, problems[:2], 2, pool, seed=0, schedule=schedule)
            for rep in range(args.repeats):
                for name, (sampler, schedule) in backends.items():
                    runs[name].append(one_rollout(sampler, tokenizer, problems, args.group, pool, rep + 1, schedule))
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    keys = list(next(iter(medians.values())))
    print(f"\n{'sampler':20s}" + "".join(f"{k:>20s}" for k in keys))
    for name, values in medians.items():
        print(f"{name:20s}" + "".join(f"{values[k]:20.3f}" for k in keys))
    base = medians["reference"]
    print()
    for name in backends:
        if name != "reference":
            speed = medians[name]["trajectories_per_s"] / base["trajectories_per_s"]
            cpu = base["cpu_s"] / medians[name]["cpu_s"]
            print(f"{name} / reference: {speed:.2f}x trajectories/s, {cpu:.2f}x less CPU time per rollout")
    print(
        f"\nload average (1 min) {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; "
        f"second core {'busy (a spinning process)' if busy else 'not kept busy by this benchmark'}"
    )


if __name__ == "__main__":
    main()
