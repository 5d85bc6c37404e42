"""Per-turn look at trained policies: what each turn index does, and whether credit blames the right turn.

    python scripts/turn_credit.py runs/relay-cmp/gtpo/seed0 runs/relay-cmp/grpo/seed0 [--problems 150] [--plot F]

For each run's newest checkpoint, rolls out ``--problems`` held-out problems x the run's group size at its
training temperature (its own sampler, sandbox and episode rules), then reports by turn index:

- ``reach``: share of trajectories that have this turn; ``call``: share of those turns that call the tool;
  ``invalid``: share of the tool calls that are invalid; ``ends right``: accuracy of the trajectories whose
  last turn is this one;
- credit agreement: on the *same* trajectories, the advantage each turn gets under GTPO's turn credit (returns
  normalized over the group's turns pooled, the default, or per turn index) and under GRPO's trajectory credit
  (``gtpo.method.credit.assign_credit`` with the run's other settings), and how often
  its sign agrees with the call's validity (a valid call should not be pushed down, an invalid one should not
  be pushed up), counted over tool-call turns with a non-zero advantage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from gtpo import components
from gtpo.config import from_dict
from gtpo.data.problems import load_eval_problems
from gtpo.method.credit import bind_credit
from gtpo.method.similarity import get_similarity
from gtpo.rollout.episode import rollout
from gtpo.rollout.spec import episode_spec
from gtpo.run.export import load_checkpoint_policy, resolve_checkpoint
from gtpo.tasks import system_prompt_for


def rollouts(run: Path, problems: int, seed: int):
    config = from_dict(json.loads((run / "config.json").read_text()))
    policy, tokenizer, name = load_checkpoint_policy(resolve_checkpoint(run), torch.device("cpu"))
    spec = episode_spec(config, system_prompt_for(config.data))
    held = load_eval_problems(dataclasses.replace(config.data, eval_limit=problems))
    sandbox = components.build_sandbox(config.sandbox)
    try:
        with torch.no_grad():
            out = rollout(held, config.rollout.group_size, components.build_sampler(config, policy, tokenizer),
                          tokenizer, sandbox, spec, seed=seed)  # fmt: skip
    finally:
        sandbox.close()
    return config, name, out.trajectories


def by_turn(trajectories) -> list[dict[str, float]]:
    rows = []
    for k in range(max(len(t.turns) for t in trajectories)):
        reached = [t for t in trajectories if len(t.turns) > k]
        calls = [t.turns[k] for t in reached if t.turns[k].has_tool_call]
        ending = [t for t in reached if len(t.turns) == k + 1]
        rows.append({
            "turn": k + 1,
            "reach": len(reached) / len(trajectories),
            "call": len(calls) / len(reached),
            "invalid": sum(turn.invalid_call for turn in calls) / len(calls) if calls else float("nan"),
            "ends right": sum(t.correct for t in ending) / len(ending) if ending else float("nan"),
        })  # fmt: skip
    return rows


CREDITS = {"gtpo": ("gtpo", "group"), "gtpo, turn_index norm": ("gtpo", "turn_index"), "grpo": ("grpo", "group")}
"""Credit schemes compared on the same trajectories: (algo.algo, algo.adv_norm)."""


def agreement(config, trajectories, algo: str, adv_norm: str) -> tuple[float, int]:
    settings = dataclasses.replace(config, algo=dataclasses.replace(config.algo, algo=algo, adv_norm=adv_norm))
    uses_shaping = settings.algo.shaping and algo == "gtpo"
    credit, _ = bind_credit(settings, get_similarity(settings.algo.similarity) if uses_shaping else None)
    advantages = credit(trajectories, [len(t.input_ids) for t in trajectories]).turn_advantages
    right = total = 0
    for i, t in enumerate(trajectories):
        for k, turn in enumerate(t.turns):
            a = float(advantages[i, k])
            if turn.has_tool_call and a != 0.0:
                total += 1
                right += (a > 0) != turn.invalid_call
    return right / max(total, 1), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--problems", type=int, default=150)
    parser.add_argument("--seed", type=int, default=12_345)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    for run in args.runs:
        config, name, trajectories = rollouts(run, args.problems, args.seed)
        turns = by_turn(trajectories)
        credit = {name: agreement(config, trajectories, *scheme) for name, scheme in CREDITS.items()}
        accuracy = sum(t.correct for t in trajectories) / len(trajectories)
        results[str(run)] = (turns, credit)
        print(f"\n{run} ({name}, trained with {config.algo.algo}): {len(trajectories)} trajectories, "
              f"accuracy {accuracy:.3f}")  # fmt: skip
        print("| turn | reach | call | invalid | ends right |\n|---|---|---|---|---|")
        for row in turns:
            print(f"| {row['turn']} | {row['reach']:.3f} | {row['call']:.3f} | {row['invalid']:.3f} | "
                  f"{row['ends right']:.3f} |")  # fmt: skip
        for algo, (share, n) in credit.items():
            print(f"advantage sign agrees with call validity under {algo} credit: {share:.3f} of {n} tool-call turns")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
        for run, (turns, credit) in results.items():
            label = Path(run).parent.name + "/" + Path(run).name
            left.plot([r["turn"] for r in turns], [r["invalid"] for r in turns], marker="o", label=label)
            right.bar([f"{label}\n{algo} credit" for algo in credit], [credit[a][0] for a in credit])
        left.set(xlabel="turn", ylabel="invalid calls / tool call", title="invalid calls by turn")
        left.legend()
        right.set(ylim=(0, 1), ylabel="share", title="advantage sign agrees with call validity")
        right.tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
