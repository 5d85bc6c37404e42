"""Warn, once and in words, when the last few steps gave the policy nothing to learn from.

A dataset whose answers sit in another field, a prompt that never asks for ``\\boxed{}``, or a token budget
that cuts every turn still "trains": every step runs, the loss is logged, and nothing improves. These checks
read the step metrics the trainer logs anyway (``rollout/...``, ``reward/accuracy``) over a window of steps;
each problem is reported once per run, with what to check. They never stop a run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Literal

Protocol = Literal["math", "code", "env"]
"""How episodes end, which decides what a healthy step looks like. ``math``: python blocks and a final
``\\boxed{}`` answer. ``code``: python blocks, then a message without one submits the function to the hidden
tests (no boxed answer). ``env``: an environment's game or task ends episodes itself (no blocks, no answers)."""

WINDOW = 5
"""Steps a condition must hold for before it is reported: one step can be bad luck, five in a row are not."""
VOID_SHARE = 0.5
"""Mean share of trajectories with a void turn (neither code nor an answer) above which the window warns."""


def _fmt_steps(first: int, last: int) -> str:
    return f"step {first}" if first == last else f"steps {first}-{last}"


def diagnose(window: list[tuple[int, Mapping[str, float]]], protocol: Protocol = "math") -> dict[str, str]:
    """The problems that hold on every step of ``window`` ((step, metrics) pairs): key -> the warning.

    Keys, most specific first: ``no_turns`` (every prompt fills the token budget), ``no_answer`` (no trajectory
    gave a final answer), ``zero_accuracy`` (answers, none right), ``all_correct``, ``no_variance`` (every group
    all right or all wrong), ``void`` (most trajectories have a void turn). A more specific problem hides the
    ones it implies. Only the ``math`` protocol has ``\\boxed{}`` answers (``no_answer``); ``env`` has no code
    blocks either (``void``).
    """
    answers, blocks = protocol == "math", protocol in ("math", "code")
    if not window:
        return {}
    steps = _fmt_steps(window[0][0], window[-1][0])

    def every(key: str, test) -> bool:
        return all(key in m and m[key] is not None and test(m[key]) for _, m in window)

    def mean(key: str) -> float:
        values = [m[key] for _, m in window if m.get(key) is not None]
        return sum(values) / len(values) if values else 0.0

    found: dict[str, str] = {}
    if every("rollout/turns_mean", lambda v: v == 0):
        found["no_turns"] = (
            f"no trajectory took a turn in {steps}: every prompt (the system prompt and the first observation) "
            "fills rollout.max_total_tokens before the model writes a token. Raise --rollout.max-total-tokens."
        )
    elif answers and every("rollout/finish_answer", lambda v: v == 0):
        found["no_answer"] = (
            f"no trajectory gave a final \\boxed{{}} answer in {steps}, so none can be right and rewards carry "
            "no accuracy signal. Check that the system prompt asks for \\boxed{} (data.system_prompt) and that "
            "the budget leaves room for it (rollout.max_turns, rollout.max_new_tokens_per_turn, "
            "rollout.max_total_tokens)."
        )
    elif every("reward/accuracy", lambda v: v == 0):
        found["zero_accuracy"] = (
            f"accuracy was 0 on every step of {steps}: answers were given but none matched a reference. Check "
            "that data.answer_field holds the final answers (not worked solutions) in the form the model writes "
            "them, and that the problems are within the model's reach."
            if answers
            else f"no submitted function passed the hidden tests in {steps}: only partial credit (a source's "
            "?reward=fraction) and format penalties teach. Check that the problems are within the model's "
            "reach; samples.jsonl shows each call's output and the hidden tests' result."
            if protocol == "code"
            else f"no episode succeeded in {steps}: only the environment's step rewards and format penalties "
            "teach. Check that the system prompt says how to act (data.system_prompt) and that the task is within "
            "the model's reach; samples.jsonl shows each turn's observation and reward."
        )
    elif every("reward/accuracy", lambda v: v == 1):
        found["all_correct"] = (
            f"every trajectory was right in {steps}: there is nothing left to learn on these problems. Use "
            "harder data or a smaller model."
        )
    elif every("rollout/zero_variance_group_frac", lambda v: v == 1):
        found["no_variance"] = (
            f"in {steps} every group's samples were all right or all wrong, so outcome advantages are 0 and "
            "only format penalties teach. The problems are too easy or too hard for this model at this "
            "temperature; check the data, or raise rollout.group_size."
        )
    void = mean("rollout/void_rate")
    if blocks and void > VOID_SHARE:
        cut = mean("rollout/finish_length")
        contract = "python-block / \\boxed{}" if answers else "python-block / submission"
        found["void"] = (
            f"{void:.0%} of trajectories in {steps} had a void turn (neither a code block nor an answer), which "
            f"the loss learns little from. {cut:.0%} ended at the token budget: check "
            "rollout.max_new_tokens_per_turn and rollout.max_total_tokens, and that the prompt explains the "
            f"{contract} protocol (filter.void leaves such trajectories out of the loss)."
        )
    return found


class SignalWatch:
    """Feeds each step's metrics to ``diagnose`` over the last ``window`` steps; returns new warnings only."""

    def __init__(self, window: int = WINDOW, protocol: Protocol = "math") -> None:
        self.window: deque[tuple[int, Mapping[str, float]]] = deque(maxlen=max(window, 1))
        self.protocol = protocol
        self.reported: set[str] = set()

    def observe(self, step: int, metrics: Mapping[str, float]) -> list[str]:
        self.window.append((step, metrics))
        if len(self.window) < self.window.maxlen:  # type: ignore[operator]
            return []
        new = {k: v for k, v in diagnose(list(self.window), self.protocol).items() if k not in self.reported}
        self.reported.update(new)
        return list(new.values())
