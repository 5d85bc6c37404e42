"""The TIR text protocol: find code blocks and final answers in model text, format tool output.

The format follows SimpleTIR and ToRL: the model writes a fenced ```` ```python ```` block, generation stops
when the block closes, the sandbox runs it, and its output is appended as a fenced ```` ```output ```` block.
The final answer goes in ``\\boxed{...}``. This module is pure string handling: no sandbox, no tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from gtpo.types import ExecStatus

OUTPUT_TEMPLATE = "\n```output\n{output}\n```\n"

DEFAULT_INVALID_STATUSES: frozenset[str] = frozenset({"error", "timeout", "memory", "killed"})
"""Execution statuses that make a tool call invalid by default (parse errors always count)."""

_CLOSED_BLOCK = re.compile(r"```python[ \t]*\r?\n(.*?)\r?\n?```", re.DOTALL)
"""A fenced python block: trailing spaces after the tag and CRLF line ends are tolerated."""


def has_closed_code_block(text: str) -> bool:
    """True once ``text`` contains a complete python block: the generation stop condition for a turn."""
    return _CLOSED_BLOCK.search(text) is not None


def extract_code(text: str) -> tuple[str | None, bool, bool]:
    """Return ``(code, has_tool_call, parse_error)`` for one turn's text.

    ``code`` is the last complete python block (a turn normally has one, as generation stops at its close).
    A block that is opened and never closed is a tool call that cannot be parsed: ``parse_error`` is True.
    """
    blocks = _CLOSED_BLOCK.findall(text)
    if blocks:
        return blocks[-1], True, False
    if "```python" in text:
        return None, True, True
    return None, False, False


def format_tool_output(output: str) -> str:
    """The observation appended after a code block, as the model is trained to read it."""
    return OUTPUT_TEMPLATE.format(output=output.rstrip("\n"))


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), with nested braces.

    None if absent, unclosed or empty: an empty box (often the model echoing the instruction "put your answer
    in \\boxed{}") is not an answer. Escaped braces ``\\{`` ``\\}`` (set notation) are content, not nesting.
    """
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    j = i
    while j < len(text):
        char = text[j]
        if char == "\\":
            j += 2  # a backslash escapes the next character: \{ \} \\ are not braces
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip() or None
        j += 1
    return None


def is_invalid_call(
    has_tool_call: bool,
    parse_error: bool,
    exec_status: ExecStatus | None,
    invalid_statuses: Collection[str] = DEFAULT_INVALID_STATUSES,
) -> bool:
    """Whether a turn's tool call is invalid, the trigger of the GTPO format penalty.

    The paper does not define "invalid" [PAPER.md: ?]; we count an unparseable block always, and an
    execution whose status is in ``invalid_statuses`` (default: error, timeout, memory, killed).
    A turn without a tool call is not invalid (the first-turn no-call penalty is separate).
    """
    if not has_tool_call:
        return False
    if parse_error:
        return True
    return exec_status is not None and exec_status in invalid_statuses
