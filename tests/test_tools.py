"""gtpo.tools: code blocks, tool output and \\boxed answers in model text."""

from __future__ import annotations

import pytest

from gtpo.tools import (
    DEFAULT_INVALID_STATUSES,
    extract_boxed,
    extract_code,
    format_tool_output,
    has_closed_code_block,
    is_invalid_call,
)

# ---- extract_code / has_closed_code_block ------------------------------------------------------------


def test_complete_block() -> None:
    text = "Let me compute.\n```python\nx = 6 * 7\nprint(x)\n```"
    assert extract_code(text) == ("x = 6 * 7\nprint(x)", True, False)
    assert has_closed_code_block(text)


def test_unclosed_block_is_a_parse_error() -> None:
    text = "Let me compute.\n```python\nx = 6 * 7\nprint(x)"
    assert extract_code(text) == (None, True, True)
    assert not has_closed_code_block(text)


def test_bare_open_tag_is_a_parse_error() -> None:
    assert extract_code("I will now write ```python") == (None, True, True)


def test_no_block_is_no_tool_call() -> None:
    text = "The answer is \\boxed{42}."
    assert extract_code(text) == (None, False, False)
    assert not has_closed_code_block(text)


def test_other_languages_are_not_tool_calls() -> None:
    text = "```bash\nls\n```\n```\nplain\n```"
    assert extract_code(text) == (None, False, False)
    assert not has_closed_code_block(text)


def test_multiple_blocks_take_the_last_complete_one() -> None:
    text = "```python\na = 1\n```\nthen\n```python\nb = 2\n```\nand\n```python\nc = 3"
    assert extract_code(text) == ("b = 2", True, False)


def test_tag_with_trailing_spaces() -> None:
    text = "```python   \t\nprint('hi')\n```"
    assert extract_code(text) == ("print('hi')", True, False)
    assert has_closed_code_block(text)


def test_crlf_line_endings() -> None:
    text = "```python\r\nprint(1)\r\n```"
    assert extract_code(text) == ("print(1)", True, False)


def test_closing_fence_right_after_code() -> None:
    assert extract_code("```python\nprint(1)```") == ("print(1)", True, False)


def test_blank_lines_inside_code_are_kept() -> None:
    code = "def f():\n    return 1\n\n\nprint(f())"
    assert extract_code(f"```python\n{code}\n```")[0] == code


# ---- format_tool_output ------------------------------------------------------------------------------


def test_format_tool_output() -> None:
    assert format_tool_output("42\n") == "\n```output\n42\n```\n"
    assert format_tool_output("a\nb\n\n\n") == "\n```output\na\nb\n```\n"
    assert format_tool_output("") == "\n```output\n\n```\n"


def test_format_tool_output_keeps_braces_and_inner_newlines() -> None:
    assert format_tool_output("{'x': 1}\n\nend") == "\n```output\n{'x': 1}\n\nend\n```\n"


def test_a_turn_with_its_observation_still_parses() -> None:
    turn = "```python\nprint(6 * 7)\n```" + format_tool_output("42")
    assert extract_code(turn) == ("print(6 * 7)", True, False)


# ---- extract_boxed -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("\\fbox{7}", "7"),
        ("\\boxed{3} and finally \\fbox{4}", "4"),
        ("\\boxed{ 5 }", "5"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{\\left\\{ x \\mid x > 0 \\right.}", "\\left\\{ x \\mid x > 0 \\right."),
        ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ],
)
def test_extract_boxed(text: str, answer: str) -> None:
    assert extract_boxed(text) == answer


@pytest.mark.parametrize(
    "text",
    [
        "no answer",
        "\\boxed{\\frac{1}{2}",  # unclosed
        "\\boxed{1} then \\boxed{2",  # the last box is unclosed
        "put your final answer in \\boxed{}",  # empty box echoed from the instructions
        "\\boxed{   }",
    ],
)
def test_extract_boxed_none(text: str) -> None:
    assert extract_boxed(text) is None


# ---- is_invalid_call ---------------------------------------------------------------------------------


def test_no_tool_call_is_never_invalid() -> None:
    assert not is_invalid_call(False, False, None)
    assert not is_invalid_call(False, True, "error")


def test_parse_error_is_always_invalid() -> None:
    assert is_invalid_call(True, True, None)
    assert is_invalid_call(True, True, "ok", invalid_statuses=frozenset())


@pytest.mark.parametrize("status", ["error", "timeout", "memory", "killed"])
def test_default_invalid_statuses(status: str) -> None:
    assert status in DEFAULT_INVALID_STATUSES
    assert is_invalid_call(True, False, status)  # type: ignore[arg-type]


def test_ok_call_is_valid_and_unexecuted_call_is_not_invalid() -> None:
    assert not is_invalid_call(True, False, "ok")
    assert not is_invalid_call(True, False, None)


def test_custom_invalid_statuses() -> None:
    only_errors = {"error"}
    assert is_invalid_call(True, False, "error", invalid_statuses=only_errors)
    assert not is_invalid_call(True, False, "timeout", invalid_statuses=only_errors)
    assert not is_invalid_call(True, False, "error", invalid_statuses=())
    assert is_invalid_call(True, False, "ok", invalid_statuses=["ok"])
