"""``gtpo demo``: GTPO and GRPO credit assignment worked through for one group of four trajectories.

A first-run example that needs no model: the trajectories are written out by hand, and every number is
computed by the same functions the trainer uses (``gtpo.method.rewards``, ``gtpo.method.advantages``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gtpo.method.advantages import discounted_returns, grpo_advantages, gtpo_advantages
from gtpo.method.rewards import format_ok, grpo_rewards, shaped_accuracy, turn_rewards
from gtpo.method.similarity import tfidf_code_similarity

GAMMA = 0.9
QUESTION = "What is the largest root of x^2 - 5x + 6 = 0?  (answer: 3)"


@dataclass(frozen=True)
class DemoTrajectory:
    name: str
    events: list[str]
    """What each turn did, in words."""
    invalid_calls: list[bool]
    first_turn_has_call: bool
    code: str
    correct: bool


TRAJECTORIES = [
    DemoTrajectory(
        "A",
        ["call fails (SyntaxError)", "call fixed, prints [2, 3]", "answers 3: right"],
        [True, False, False],
        True,
        "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 5*x + 6, x)\n"
        "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 5*x + 6, x))",
        True,
    ),
    DemoTrajectory(
        "B",
        ["call ok (quadratic formula)", "answers 3: right"],
        [False, False],
        True,
        "import math\na, b, c = 1, -5, 6\nprint((-b + math.sqrt(b*b - 4*a*c)) / (2*a))",
        True,
    ),
    DemoTrajectory(
        "C",
        ["call ok, wrong equation", "answers 6: wrong"],
        [False, False],
        True,
        "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 5*x - 6, x))",
        False,
    ),
    DemoTrajectory("D", ["answers 2 with no call: wrong"], [False], False, "", False),
]


def main() -> None:
    """Print the worked example as a table."""
    trajs = TRAJECTORIES
    group_ids = [0] * len(trajs)
    correct = [t.correct for t in trajs]
    invalid = [t.invalid_calls for t in trajs]
    first_call = [t.first_turn_has_call for t in trajs]
    acc = shaped_accuracy(correct, [t.code for t in trajs], group_ids, alpha=0.5)
    rewards, mask = turn_rewards(acc, invalid, first_call, format_penalty=0.1, no_call_penalty=0.1)
    fmt, _ = turn_rewards([0.0] * len(trajs), invalid, first_call, format_penalty=0.1, no_call_penalty=0.1)
    returns = discounted_returns(rewards, mask, GAMMA)
    gtpo = gtpo_advantages(rewards, mask, torch.tensor(group_ids), GAMMA, norm="group")
    fmt_ok = format_ok(invalid, first_call)
    grpo_r = grpo_rewards(correct, fmt_ok)
    grpo = grpo_advantages(grpo_r, torch.tensor(group_ids))
    sim_c = tfidf_code_similarity([trajs[2].code], [trajs[0].code, trajs[1].code])[0].tolist()

    print(f"One group of {len(trajs)} trajectories for: {QUESTION}")
    print(
        f"Shaping: C failed, but its code resembles A's (TF-IDF similarity {sim_c[0]:.3f}) more than B's "
        f"({sim_c[1]:.3f}): C's acc = 0.5 * mean = {acc[2]:.3f}. D has no code: acc 0."
    )
    print(
        "Columns: acc = accuracy on the last turn (shaped for a failure), fmt = format penalty, "
        f"r = acc + fmt, R = discounted return (gamma {GAMMA}), A_gtpo = (R - group mean) / group std, "
        "r_grpo = min(correct, format ok) per trajectory, A_grpo = its group-normalized advantage."
    )
    header = f"{'traj':<5}{'turn':<5}{'what happened':<31}{'acc':>7}{'fmt':>7}{'r':>7}{'R':>8}{'A_gtpo':>8}"
    print()
    print(header + f"{'r_grpo':>8}{'A_grpo':>8}")
    print("-" * (len(header) + 16))
    for i, traj in enumerate(trajs):
        for j, event in enumerate(traj.events):
            last = j == len(traj.events) - 1
            acc_ij = acc[i] if last else 0.0
            row = (
                f"{traj.name if j == 0 else '':<5}{j + 1:<5}{event:<31}{acc_ij:>7.3f}"
                f"{float(fmt[i, j]):>7.2f}{float(rewards[i, j]):>7.3f}"
                f"{float(returns[i, j]):>8.3f}{float(gtpo[i, j]):>8.3f}"
            )
            grpo_cols = f"{float(grpo_r[i]):>8.0f}{float(grpo[i]):>8.3f}" if j == 0 else ""
            print(row + grpo_cols)
    print()
    print(
        "GRPO gives every token of a trajectory one advantage and scores A's right answer like D's wrong "
        "one (A had a failed call); GTPO credits each turn by what follows it: A's failed call gets less "
        "than the turns that fixed it, and C's near miss ranks above D, which also lost 0.1 for not calling "
        "the tool."
    )


if __name__ == "__main__":
    main()
