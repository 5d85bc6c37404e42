"""Which training problems leave room to generate: a prompt that fills the episode's token budget teaches nothing."""

from __future__ import annotations

from typing import Any

from gtpo.config import ConfigError
from gtpo.model.policy import prompt_ids
from gtpo.types import Problem


def fitting_prompts(
    problems: list[Problem], tokenizer: Any, system_prompt: str, max_total_tokens: int
) -> tuple[list[Problem], int]:
    """(the problems whose prompt leaves room to generate, how many do not); none fitting is a ConfigError.

    A prompt of ``max_total_tokens`` or more would be sampled as a trajectory cut by the budget before its first
    token: a length-cut failure that teaches nothing and takes a slot in every group it is drawn for. Only
    questions that could be that long are tokenized: a token holds at least one byte, so a question of fewer
    UTF-8 bytes than the budget left after the chat template cannot fill it."""
    room = max_total_tokens - len(prompt_ids(tokenizer, system_prompt, "")) - 8  # merges at the question's edges
    fitting = [
        p
        for p in problems
        if len(p.question.encode("utf-8")) < room
        or len(prompt_ids(tokenizer, system_prompt, p.question)) < max_total_tokens
    ]
    if not fitting:
        raise ConfigError(
            f"rollout.max_total_tokens: all {len(problems)} training prompts are at least "
            f"{max_total_tokens} tokens long; raise --rollout.max-total-tokens"
        )
    return fitting, len(problems) - len(fitting)
