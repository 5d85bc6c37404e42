"""Per-turn look at trained policies: what each turn index does, and whether credit blames the right turn.

    python scripts/turn_credit.py runs/relay-cmp/{gtpo,grpo}/seed* [--problems 150] [--json F] [--plot F]

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
from gtpo.envs.python_tool import python_tool_envs
from gtpo.method.advantages import call_sign_agreement
from gtpo.method.credit import bind_credit, call_masks
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
                          tokenizer, python_tool_envs(sandbox, max_turns=spec.max_turns), spec, seed=seed)  # fmt: skip
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
    return call_sign_agreement(advantages, *call_masks(trajectories, advantages.shape[1]))


def summarize(per_seed: list[dict]) -> dict:
    """Mean over seeds of each per-turn figure (NaN where a seed never reached the turn), and each credit scheme's
    agreement as mean, min and max over seeds."""
    depth = max(len(r["turns"]) for r in per_seed)
    turns = []
    for k in range(depth):
        row = {"turn": k + 1}
        for field in ("reach", "call", "invalid", "ends right"):
            missing = 0.0 if field == "reach" else float("nan")  # a seed that never got this deep reached it 0 times
            values = [r["turns"][k][field] if len(r["turns"]) > k else missing for r in per_seed]
            values = [v for v in values if v == v]
            row[field] = sum(values) / len(values) if values else float("nan")
        turns.append(row)
    credit = {}
    for scheme in per_seed[0]["credit"]:
        shares = [r["credit"][scheme][0] for r in per_seed]
        turns_counted = sum(r["credit"][scheme][1] for r in per_seed)
        credit[scheme] = (sum(shares) / len(shares), min(shares), max(shares), turns_counted)
    accuracy = [r["accuracy"] for r in per_seed]
    return {"seeds": len(per_seed), "accuracy": sum(accuracy) / len(accuracy), "turns": turns, "credit": credit}


def print_summary(method: str, summary: dict) -> None:
    print(f"\n{method}: {summary['seeds']} seeds, accuracy {summary['accuracy']:.3f} (mean over seeds)")
    print("| turn | reach | call | invalid | ends right |\n|---|---|---|---|---|")
    for row in summary["turns"]:
        print(f"| {row['turn']} | {row['reach']:.3f} | {row['call']:.3f} | {row['invalid']:.3f} | "
              f"{row['ends right']:.3f} |")  # fmt: skip
    for scheme, (mean, low, high, n) in summary["credit"].items():
        print(f"advantage sign agrees with call validity under {scheme} credit: {mean:.3f} "
              f"(seeds {low:.3f}-{high:.3f}; {n} tool-call turns)")  # fmt: skip


def plot(summaries: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    schemes = list(next(iter(summaries.values()))["credit"])
    width = 0.8 / len(summaries)
    for i, (method, summary) in enumerate(summaries.items()):
        turns = summary["turns"]
        left.plot([r["turn"] for r in turns], [r["invalid"] for r in turns], marker="o", label=f"trained with {method}")
        means = [summary["credit"][s][0] for s in schemes]
        errors = [[m - summary["credit"][s][1] for s, m in zip(schemes, means, strict=True)],
                  [summary["credit"][s][2] - m for s, m in zip(schemes, means, strict=True)]]  # fmt: skip
        xs = [j + (i - (len(summaries) - 1) / 2) * width for j in range(len(schemes))]
        right.bar(xs, means, width, yerr=errors, capsize=3, label=f"policy trained with {method}")
    left.set(xlabel="turn", ylabel="invalid calls / tool call", title="invalid calls by turn (mean over seeds)")
    left.xaxis.get_major_locator().set_params(integer=True)
    left.legend()
    right.set_xticks(range(len(schemes)), [f"{s} credit" for s in schemes], fontsize=8)
    right.set(ylim=(0.4, 1), ylabel="share of tool-call turns", title="advantage sign agrees with call validity")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run directories; grouped by method (their parent's name)")
    parser.add_argument("--problems", type=int, default=150)
    parser.add_argument("--seed", type=int, default=12_345)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write each run's figures here; alone, read them")
    args = parser.parse_args()
    if args.runs:
        results = {}
        for run in args.runs:
            config, name, trajectories = rollouts(run, args.problems, args.seed)
            credit = {scheme: agreement(config, trajectories, *s) for scheme, s in CREDITS.items()}
            accuracy = sum(t.correct for t in trajectories) / len(trajectories)
            results[str(run)] = {"method": run.parent.name, "turns": by_turn(trajectories), "credit": credit,
                                 "accuracy": accuracy, "trajectories": len(trajectories)}  # fmt: skip
            print(f"{run} ({name}): {len(trajectories)} trajectories, accuracy {accuracy:.3f}; agreement "
                  + ", ".join(f"{k} {v[0]:.3f}" for k, v in credit.items()), flush=True)  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    elif args.json:
        results = json.loads(args.json.read_text())
    else:
        parser.error("name run directories, or --json FILE written by an earlier run")
    methods: dict[str, list[dict]] = {}
    for result in results.values():
        methods.setdefault(result["method"], []).append(result)
    summaries = {method: summarize(per_seed) for method, per_seed in methods.items()}
    for method, summary in summaries.items():
        print_summary(method, summary)
    if args.plot:
        plot(summaries, args.plot)


if __name__ == "__main__":
    main()
