"""The documented defaults, pinned: what `gtpo train` runs with no flags is what the docs say it runs.

Each default of docs/algorithms.md is read from the doc itself (the ``| `field` | default | from |`` rows of its
tables and the "GTPO (default)" row of section 8) and compared with the dataclass default, so a change to either
alone fails. Where a read-back would not notice a setting going astray on its way to the math, the effect is
checked too: the default credit on a hand-made batch equals the advantages computed by hand for pooled
per-group normalization, gamma 0.9, both 0.1 penalties and shaping at 0.5, and every ablation the comparison
runs changes that credit.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from gtpo.compare import VARIANTS, variant_config
from gtpo.config import TrainConfig
from gtpo.method.credit import bind_credit
from gtpo.method.similarity import get_similarity
from gtpo.types import Problem, Trajectory, Turn

ALGORITHMS = Path(__file__).resolve().parents[1] / "docs" / "algorithms.md"

DOCUMENTED_FIELDS = {
    # section 1, turn rewards
    "format_penalty", "no_call_penalty", "invalid_statuses",
    # section 2, shaping
    "shaping", "shaping_alpha", "similarity",
    # section 3, returns; section 4, normalization
    "gamma", "adv_norm", "scale_by_std",
    # section 7, the policy loss (clip_low / clip_high share a row: test_clip_range_is_as_documented)
    "dual_clip", "loss_agg", "kl_coef", "entropy_coef",
    # section 9, group filtering; section 10, over-long trajectories; section 11, importance correction
    "filter.groups", "filter.metric", "filter.max_extra_problems",
    "overlong.mode", "overlong.buffer", "overlong.penalty",
    "algo.is_correction", "algo.is_cap",
}  # fmt: skip
"""The settings whose defaults docs/algorithms.md tabulates now: a row lost from the doc fails too."""


def _value(text: str) -> Any:
    """A doc cell's value: `"group"` or `token` -> the string; True, False, None; a number -> float."""
    quoted = re.match(r'^`"?([^`"]+)"?`', text)
    if quoted:
        return quoted.group(1)
    word = text.split()[0].rstrip(",;:")
    return {"True": True, "False": False, "None": None}.get(word, word if not _is_number(word) else float(word))


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _documented() -> dict[str, Any]:
    """``field`` -> its documented default, from the rows of every table headed ``| field | default | from |``."""
    found, in_table = {}, False
    for line in ALGORITHMS.read_text().splitlines():
        if not line.startswith("|"):
            in_table = False
        elif line.startswith("| field | default | from |"):
            in_table = True
        row = re.match(r"^\| `([a-z_.]+)` \| ([^|]+) \|", line)
        if not (in_table and row):
            continue
        name, cell = row.group(1), row.group(2).strip()
        if name == "invalid_statuses":  # "error, timeout, memory, killed (an unclosed code block always counts)"
            found[name] = tuple(s.strip() for s in cell.split(" (")[0].split(","))
        else:
            found[name] = _value(cell)
    return found


def _default(name: str) -> Any:
    """The dataclass default of a documented name: ``section.field``, or a bare ``AlgoConfig`` field."""
    obj: Any = TrainConfig()
    for part in name.split(".") if "." in name else ("algo", name):
        obj = getattr(obj, part)
    return obj


def _same(documented: Any, default: Any) -> bool:
    if isinstance(documented, float) and not isinstance(default, bool):
        return isinstance(default, (int, float)) and float(default) == documented
    return documented == default


def test_every_tabulated_default_of_the_algorithms_doc_is_the_config_default():
    documented = _documented()
    assert set(documented) >= DOCUMENTED_FIELDS, sorted(DOCUMENTED_FIELDS - set(documented))
    wrong = {}
    for name, value in documented.items():  # rows added to the doc later are pinned too
        try:
            default = _default(name)
        except AttributeError:
            default = "no such setting"
        if not _same(value, default):
            wrong[name] = (value, default)
    assert not wrong, f"documented vs config default: {wrong}"


def test_the_gtpo_default_row_of_section_8_is_the_config_default():
    row = next(line for line in ALGORITHMS.read_text().splitlines() if line.startswith("| GTPO (default) |"))
    pairs = dict(pair.split("=") for pair in re.search(r"`([^`]+)`", row).group(1).split())
    assert set(pairs) >= {"algo", "gamma", "adv_norm", "scale_by_std", "format_penalty", "no_call_penalty"}
    for name, text in pairs.items():
        assert _same(_value(text), _default(name)), (name, text, _default(name))
    assert (pairs["algo"], pairs["adv_norm"], pairs["gamma"]) == ("gtpo", "group", "0.9")


def test_clip_range_is_as_documented():
    """Section 7: "`clip_low` / `clip_high` | 0.2 / 0.28 in the config" (SimpleTIR's clip-higher)."""
    match = re.search(r"\| `clip_low` / `clip_high` \| ([\d.]+) / ([\d.]+) in the config", ALGORITHMS.read_text())
    assert match is not None
    algo = TrainConfig().algo
    assert (algo.clip_low, algo.clip_high) == (float(match.group(1)), float(match.group(2))) == (0.2, 0.28)


def test_the_default_run_is_the_embedded_task_on_the_shipped_tiny_model():
    """README and docs/embedded_default.md ("The run"): GTPO on the shipped tiny model and the arithmetic task,
    60 steps of 8 problems x G = 8, up to 5 turns of 96 new tokens, lr 1e-4, all 300 held-out problems every 10
    steps at the training temperature 1.0."""
    config = TrainConfig()
    assert (config.model.name_or_path, config.data.train, config.data.eval) == ("tiny", "arith", "arith-heldout")
    assert config.data.eval_limit == 0  # all of them
    assert (config.steps, config.rollout.problems_per_step, config.rollout.group_size) == (60, 8, 8)
    assert (config.rollout.max_turns, config.rollout.max_new_tokens_per_turn, config.optim.lr) == (5, 96, 1e-4)
    assert (config.eval_every, config.eval.temperature, config.rollout.temperature) == (10, 1.0, 1.0)


# --- the effect: the default credit on one batch, by hand ---------------------------------------------------------

PROBLEM = Problem(id="p", question="q", answer="1")


def _turn(code: str | None = None, invalid: bool = False) -> Turn:
    return Turn(text="t", code=code, has_tool_call=code is not None, invalid_call=invalid)


def _traj(group: int, correct: bool, turns: list[Turn]) -> Trajectory:
    """A math-task record as the rollout leaves it: the last turn's reward is 1 if the answer is right."""
    turns[-1].reward = float(correct)
    return Trajectory(PROBLEM, group, turns, correct=correct)


def _batch() -> list[Trajectory]:
    return [
        _traj(0, True, [_turn("print(6 * 7)"), _turn()]),  # A
        _traj(0, False, [_turn("print(6 * 7)", invalid=True), _turn()]),  # B
        _traj(0, False, [_turn()]),  # C
        _traj(1, True, [_turn("print(2 ** 10)"), _turn()]),  # D
        _traj(1, False, [_turn()]),  # E
    ]


def _standardized(values: list[float]) -> list[float]:
    mean, std = statistics.fmean(values), statistics.pstdev(values)
    return [(v - mean) / (std + 1e-6) for v in values]


def _default_credit(config: TrainConfig) -> torch.Tensor:
    credit, _ = bind_credit(config, get_similarity(config.algo.similarity))
    batch = _batch()
    return credit(batch, [10] * len(batch)).turn_advantages


def test_the_default_credit_is_pooled_gtpo_with_discount_penalties_and_shaping_by_hand():
    """Turn rewards, gamma 0.9, penalties 0.1, shaping alpha 0.5 (sections 1-4):
    A right after a valid call: rewards 0, 1; returns 0.9, 1.
    B wrong after an invalid call of A's very code: similarity 1, so acc 0.5 x 1 = 0.5; rewards -0.1, 0.5;
      returns -0.1 + 0.9 x 0.5 = 0.35, 0.5.
    C wrong, no call on turn 1: reward -0.1 (no acc: no code to compare); return -0.1.
    D, E: group 1, like A and C. Each group's returns are standardized together (adv_norm "group"); per turn
    index (turn 0: 0.9, 0.35, -0.1; turn 1: 1, 0.5) or over the batch the numbers differ."""
    group0 = _standardized([0.9, 1.0, 0.35, 0.5, -0.1])
    group1 = _standardized([0.9, 1.0, -0.1])
    expected = torch.tensor([group0[0:2], group0[2:4], [group0[4], 0.0], group1[0:2], [group1[2], 0.0]])
    torch.testing.assert_close(_default_credit(TrainConfig()), expected, atol=1e-5, rtol=0)


CREDIT_VARIANTS = [name for name, overrides in VARIANTS.items() if set(overrides) <= {"algo"} and overrides]


@pytest.mark.parametrize("variant", CREDIT_VARIANTS)
def test_each_ablation_changes_the_default_credit(variant, tmp_path):
    """`gtpo compare` runs each variant against the default: one that changed nothing would report a difference
    of zero as a finding (a default moved to turn_index would make gtpo and gtpo-turnindex the same run)."""
    default = _default_credit(TrainConfig())
    changed = _default_credit(variant_config(TrainConfig(), variant, tmp_path))
    assert (changed - default).abs().max() > 0.05, variant


def test_the_compare_variants_are_distinct_runs(tmp_path):
    def settings(name: str) -> dict[str, Any]:
        config = variant_config(TrainConfig(), name, tmp_path / "x", seed=0)
        return dataclasses.asdict(dataclasses.replace(config, output_dir=""))

    resolved = {name: settings(name) for name in VARIANTS}
    twins = [(a, b) for a in VARIANTS for b in VARIANTS if a < b and resolved[a] == resolved[b]]
    assert not twins
