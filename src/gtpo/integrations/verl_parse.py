"""Read gtpo's per-turn records out of a verl multi-turn response: code, tool-call validity, final answer.

verl's tool agent loop has the model call tools in its chat template's function-call format (``hermes``:
``<tool_call>{"name": ..., "arguments": {"code": ...}}</tool_call>``) and appends each tool's reply as a tool
message, which is masked out of the loss. So a turn's text is the decoded run of model tokens, and the tool
output it got is the decoded run of masked tokens after it. gtpo's own ```` ```python ```` protocol is read
too (``gtpo.tools.extract_code``), so an agent loop that keeps it needs no other parser.

A call is invalid (GTPO's format penalty) when it cannot be parsed, or when its execution failed. The
execution status is data, not text: ``SandboxTool`` records each call's status with the calling turn
(``verl_tool.TOOL_CALLS_KEY`` in the trajectory's ``extra_fields``), so a program that prints an error-looking
line is not mistaken for a failure. A turn whose call got a reply (a later turn exists) but no status was
answered by verl itself without reaching the sandbox (unknown tool, arguments that are not JSON, a tool
exception): such a call could not be routed and counts as unparseable. A last turn with a call and no status
never ran (the loop stopped at its turn or length cap): like gtpo's own rollout, it is invalid only if it
cannot be parsed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from typing import Any

from gtpo.tools import DEFAULT_INVALID_STATUSES, extract_boxed, extract_code, is_invalid_call
from gtpo.types import ExecStatus, Turn

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
TOOL_CALLS_KEY = "gtpo_tool_calls"
"""``extra_fields`` key where ``SandboxTool`` records ``[[turn, status], ...]``: one entry per call it answered,
in order; ``turn`` is the 0-based index of the model turn that made the call."""


def parse_call(text: str) -> tuple[str | None, bool, bool]:
    """``(code, has_tool_call, parse_error)`` for one model turn, like ``gtpo.tools.extract_code``.

    A ``<tool_call>`` block must hold JSON with a string ``arguments.code`` (or ``arguments`` as a JSON
    string holding it); the last complete call wins. Code wrapped in a python fence is unwrapped.
    Without a ``<tool_call>`` tag, gtpo's ```` ```python ```` blocks are read.
    """
    if "<tool_call>" not in text:
        return extract_code(text)
    blocks = _TOOL_CALL.findall(text)
    if not blocks:
        return None, True, True  # opened, never closed
    code = _code_argument(blocks[-1])
    if code is None:
        return None, True, True
    fenced, _, _ = extract_code(code)
    return (fenced if fenced is not None else code), True, False


def _code_argument(block: str) -> str | None:
    try:
        call = json.loads(block)
        arguments: Any = call.get("arguments", call.get("parameters"))
        if isinstance(arguments, str):
            arguments = json.loads(arguments)
    except (json.JSONDecodeError, AttributeError):
        return None
    code = arguments.get("code") if isinstance(arguments, dict) else None
    return code if isinstance(code, str) else None


def statuses_by_turn(calls: Sequence[Sequence[Any]] | None) -> dict[int, list[ExecStatus]]:
    """``{turn: [status, ...]}`` from the ``[[turn, status], ...]`` records ``SandboxTool`` leaves."""
    by_turn: dict[int, list[ExecStatus]] = {}
    for turn, status in calls or []:
        by_turn.setdefault(int(turn), []).append(status)
    return by_turn


def build_turns(
    segments: Sequence[tuple[str, str]],
    statuses: dict[int, list[ExecStatus]],
    invalid_statuses: Collection[str] = DEFAULT_INVALID_STATUSES,
) -> list[Turn]:
    """gtpo ``Turn`` records from ``(model_text, tool_output_text)`` pairs, one pair per model turn, and the
    sandbox statuses of each turn's calls (``statuses_by_turn``); a turn with several calls takes the first
    that failed, else "ok"."""
    turns = []
    for j, (text, output) in enumerate(segments):
        code, has_call, parse_error = parse_call(text)
        status: ExecStatus | None = None
        if has_call and statuses.get(j):
            status = next((s for s in statuses[j] if s != "ok"), "ok")
        elif has_call and j + 1 < len(segments):
            parse_error = True  # answered by the loop without reaching the sandbox: could not be routed
        turns.append(
            Turn(
                text=text,
                code=code,
                has_tool_call=has_call,
                parse_error=parse_error,
                exec_status=status,
                tool_output=output or None,
                invalid_call=is_invalid_call(has_call, parse_error, status, invalid_statuses),
                final_answer=extract_boxed(text),
            )
        )
    return turns


def decode_segments(
    response_ids: Sequence[int], spans: Sequence[tuple[int, int]], tokenizer: Any
) -> list[tuple[str, str]]:
    """``(model_text, tool_output_text)`` per turn: the turn's tokens and the masked tokens up to the next
    turn (or the end). Special tokens are kept, since some templates' ``<tool_call>`` tags are special."""
    segments = []
    for j, (start, end) in enumerate(spans):
        following = spans[j + 1][0] if j + 1 < len(spans) else len(response_ids)
        text = tokenizer.decode(list(response_ids[start:end]), skip_special_tokens=False)
        output = tokenizer.decode(list(response_ids[end:following]), skip_special_tokens=False)
        segments.append((text, output))
    return segments
