"""Read gtpo's per-turn records out of a verl multi-turn response: code, tool-call validity, final answer.

verl's tool agent loop has the model call tools in its chat template's function-call format (``hermes``:
``<tool_call>{"name": ..., "arguments": {"code": ...}}</tool_call>``) and appends each tool's reply as a tool
message, which is masked out of the loss. So a turn's text is the decoded run of model tokens, and the tool
output it got is the decoded run of masked tokens after it. gtpo's own ```` ```python ```` protocol is read
too (``gtpo.tools.extract_code``), so an agent loop that keeps it needs no other parser.

A call is invalid (GTPO's format penalty) when it cannot be parsed, or when its output text shows a failed
execution. The status is read from the text, since that is all a verl reward function sees: the messages of
gtpo's sandbox (time and memory limits, a dead process), a Python error line or traceback, and verl's own
replies for calls that never reached a tool (bad JSON, unknown tool). A program that prints an error line
of its own is read as an error too; that is the price of reading text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from typing import Any

from gtpo.tools import DEFAULT_INVALID_STATUSES, extract_boxed, extract_code, is_invalid_call
from gtpo.types import ExecStatus, Turn

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_STATUS_MARKERS: tuple[tuple[str, ExecStatus], ...] = (
    ("TimeoutError: the cell", "timeout"),
    ("TimeoutError: this session used its total time budget", "timeout"),
    ("MemoryError: the cell exceeded", "memory"),
    ("The sandbox process died", "killed"),
    # verl's ToolAgentLoop answers these itself when a call never reaches a tool
    ("Invalid JSON in arguments for", "error"),
    ("Unknown function '", "error"),
    ("Error executing tool '", "error"),
    ("Traceback (most recent call last):", "error"),
)
_ERROR_LINE = re.compile(r"^\s*[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)(?::|$)", re.MULTILINE)


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


def exec_status_from_output(text: str) -> ExecStatus | None:
    """The execution status a tool reply shows: None for no reply, else one of ``gtpo.types.ExecStatus``."""
    if not text.strip():
        return None
    for marker, status in _STATUS_MARKERS:
        if marker in text:
            return status
    return "error" if _ERROR_LINE.search(text) else "ok"


def build_turns(
    segments: Sequence[tuple[str, str]], invalid_statuses: Collection[str] = DEFAULT_INVALID_STATUSES
) -> list[Turn]:
    """gtpo ``Turn`` records from ``(model_text, tool_output_text)`` pairs, one pair per model turn."""
    turns = []
    for text, output in segments:
        code, has_call, parse_error = parse_call(text)
        status = exec_status_from_output(output) if has_call else None
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
