"""Problems in: read question/answer rows from a local file or a Hugging Face dataset into ``Problem``s.

``load_problems`` reads any source with one question column and one answer column. ``load_benchmark``
reads the evaluation benchmarks in their published formats (``BENCHMARKS``: which dataset, split and columns,
and how the answer is normalized), from a local copy or from the Hub. Answers become the short strings that
``gtpo.data.grading`` compares: ``8.0`` -> ``"8"``, GSM8K's ``"...#### 1,200"`` -> ``"1200"``.

What this is not: prompt formatting (the rollout builds the chat) or batching/shuffling
(``gtpo.data.stream``). HF datasets need the optional extra ``data`` (``pip install 'gtpo[data]'``), as do
parquet files (pyarrow).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from gtpo.config import ConfigError
from gtpo.types import Problem

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
Located = tuple[str, Any]
"""(where, row): ``where`` names the row as a person finds it: ``file.jsonl:3`` (lines count from 1, as editors
show them) or ``file.parquet: row 3`` (rows count from 1 too)."""


class DataError(ConfigError):
    """A data source cannot be read as problems; the message names the file, the line or row, and the fix.

    A ``ConfigError`` (so ``gtpo`` prints it as one line and exits 2) and hence a ``ValueError``."""


_INTEGRAL_DECIMAL = re.compile(r"[+-]?\d+\.0*")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def answer_text(value: Any) -> str:
    """A reference answer as the short string graders compare.

    Numbers lose float noise (``8.0`` -> ``"8"``, ``0.5`` -> ``"0.5"``, never ``1e-07``), a one-element list
    becomes its element (some AMC/AIME copies store ``["27.0"]``), and a GSM8K solution is cut to the number
    after its ``####`` line (no real final answer contains ``####``).
    """
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or value is None or isinstance(value, (list, tuple, dict)):
        raise ValueError(f"reference answer {value!r} is not a number or a string")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _plain_decimal(Decimal(repr(value)))
    text = str(value).strip()
    if "####" in text:
        text = gsm8k_answer(text)
    if _INTEGRAL_DECIMAL.fullmatch(text):
        text = text.split(".")[0]
    return text


def gsm8k_answer(solution: str) -> str:
    """GSM8K's reference: the text after the last ``####``, thousands separators dropped (1,200 -> 1200)."""
    if "####" not in solution:
        raise ValueError(f"GSM8K answer has no '#### N' line: {solution[-80:]!r}")
    final = solution.rsplit("####", 1)[1].strip()
    return final.replace(",", "") if _THOUSANDS.fullmatch(final) else final


def _plain_decimal(number: Decimal) -> str:
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and how its rows map to a ``Problem``."""

    hf_name: str
    """Hugging Face dataset used when no local file is given."""
    split: str
    question_fields: tuple[str, ...]
    """Columns joined with a space to form the question (SVAMP splits it into Body + Question)."""
    answer_field: str
    id_field: str | None
    """Column with a stable id; the row index is used when absent."""
    hf_config: str | None = None
    normalize: Callable[[Any], str] = answer_text


BENCHMARKS: dict[str, BenchmarkSpec] = {
    # 30 problems of AIME 2024 I+II; answer is a string ("204").
    "aime24": BenchmarkSpec("HuggingFaceH4/aime_2024", "train", ("problem",), "answer", "id"),
    # 30 problems of AIME 2025 I+II in one test split.
    "aime25": BenchmarkSpec("math-ai/aime25", "test", ("problem",), "answer", "id"),
    # The 40 AMC 2023 problems used by Qwen2.5-Math evaluations; answers are floats (27.0).
    "amc23": BenchmarkSpec("math-ai/amc23", "test", ("question",), "answer", "id"),
    # The 500-problem MATH subset of "Let's Verify Step by Step"; answers are LaTeX (\frac{14}{3}).
    "math500": BenchmarkSpec("HuggingFaceH4/MATH-500", "test", ("problem",), "answer", "unique_id"),
    # 1,319 test problems; the answer column is a worked solution ending in "#### N".
    "gsm8k": BenchmarkSpec(
        "openai/gsm8k", "test", ("question",), "answer", None, hf_config="main", normalize=gsm8k_answer
    ),
    # 300 test problems of ChilleD's SVAMP split; Answer is a float (8.0).
    "svamp": BenchmarkSpec("ChilleD/SVAMP", "test", ("Body", "Question"), "Answer", "ID"),
}
"""Evaluation benchmarks by name. Each entry names the HF dataset it follows; a local JSONL/JSON/parquet file
in the same columns can stand in for it (``load_benchmark(name, path=...)``)."""


def load_problems(
    source: str,
    question_field: str = "question",
    answer_field: str = "answer",
    split: str = "train",
    limit: int | None = None,
    id_field: str | None = None,
) -> list[Problem]:
    """Problems from a ``.jsonl``/``.json``/``.parquet`` file or an HF dataset name (``owner/name``).

    Ids are ``<name>-<id_field value>`` or ``<name>-<row index>``, where name is the file stem or dataset
    name, so they are stable across epochs and runs. ``split`` applies to HF datasets only.
    """
    name = Path(source).stem if source.endswith(FILE_SUFFIXES) else source
    rows = _read_located(source, split=split, limit=limit)
    hint = {
        question_field: "set question_field (--data.question-field) to the column holding the question",
        answer_field: "set answer_field (--data.answer-field) to the column holding the answer",
    }
    if id_field is not None:
        hint[id_field] = "set id_field to an existing column, or leave it unset to number the rows"
    return _problems(rows, source, name, (question_field,), answer_field, id_field, answer_text, hint)


def load_benchmark(name: str, path: str | None = None, limit: int | None = None) -> list[Problem]:
    """A benchmark's problems from ``path`` (a local file in its columns) or its HF dataset otherwise."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(sorted(BENCHMARKS))}")
    spec = BENCHMARKS[name]
    source = path if path is not None else spec.hf_name
    rows = _read_located(source, split=spec.split, limit=limit, hf_config=spec.hf_config)
    columns = ", ".join((*spec.question_fields, spec.answer_field))
    fix = f"a {name} file needs the columns of {spec.hf_name} ({columns})"
    hint = {field: fix for field in (*spec.question_fields, spec.answer_field)}
    id_field = spec.id_field if rows and spec.id_field in rows[0][1] else None
    return _problems(rows, source, name, spec.question_fields, spec.answer_field, id_field, spec.normalize, hint)


def read_rows(
    source: str, split: str = "train", limit: int | None = None, hf_config: str | None = None
) -> list[dict[str, Any]]:
    """Rows (column -> value) of a local file, by suffix, or of an HF dataset split; at most ``limit``."""
    return [row for _, row in _read_located(source, split, limit, hf_config)]


def _read_located(
    source: str, split: str = "train", limit: int | None = None, hf_config: str | None = None
) -> list[Located]:
    """``read_rows`` with where each row came from; a file without rows is an error (nothing to train on)."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    path = Path(source)
    if source.endswith(FILE_SUFFIXES) or path.exists():
        if path.is_dir():
            raise DataError(f"{source} is a directory; give a .jsonl, .json or .parquet file")
        if not path.is_file():
            raise DataError(f"{source}: no such file; check the path (relative paths start from {Path.cwd()})")
        rows = _read_file(path)
        if not rows:
            raise DataError(
                f"{source}: the file has no rows; it needs one problem per row with a question and an answer"
            )
    else:
        rows = [(f"{source} ({split}): row {i}", row) for i, row in enumerate(_read_hf(source, split, hf_config), 1)]
    return rows if limit is None else rows[:limit]


def _read_file(path: Path) -> list[Located]:
    try:
        text = path.read_text(encoding="utf-8") if path.suffix != ".parquet" else ""
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from err
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror})") from err
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"{path}:{number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{path}:{number}: not valid JSON ({err.msg}, column {err.colno}); "
                        'each line must be one JSON object such as {"question": ..., "answer": ...}'
                    ) from err
    elif path.suffix == ".json":
        try:
            items = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno}); a file with one object per "
                "line needs the .jsonl suffix"
            ) from err
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(items).__name__}")
        rows = [(f"{path}: item {i}", row) for i, row in enumerate(items, start=1)]
    elif path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError("reading parquet needs pyarrow: pip install 'gtpo[data]'") from err
        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises its own error types for a damaged file
            raise DataError(f"{path}: not a readable parquet file ({err})") from err
        rows = [(f"{path}: row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]
    else:
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(FILE_SUFFIXES)}")
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(
                f"{where}: a JSON {type(row).__name__}, where an object with the question and answer is expected"
            )
    return rows


def _read_hf(name: str, split: str, config: str | None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"{name!r} is not a local file, and loading HF datasets needs the optional extra: pip install 'gtpo[data]'"
        ) from err
    return list(datasets.load_dataset(name, config, split=split))


def _problems(
    rows: Iterable[Located],
    source: str,
    name: str,
    question_fields: tuple[str, ...],
    answer_field: str,
    id_field: str | None,
    normalize: Callable[[Any], str],
    hint: Mapping[str, str],
) -> list[Problem]:
    problems: list[Problem] = []
    seen_ids: dict[str, str] = {}
    for index, (where, row) in enumerate(rows):
        for field in (*question_fields, answer_field, *([id_field] if id_field else [])):
            if field not in row:
                raise DataError(
                    f"{where}: no column {field!r}; this row has: {', '.join(sorted(row)) or 'nothing'}. "
                    f"Fix: {hint.get(field, 'add the column to every row')}"
                )
        question = " ".join(str(row[field]).strip() for field in question_fields)
        if not question:
            raise DataError(f"{where}: empty question in {', '.join(question_fields)}; every row needs one")
        if row[answer_field] is None:
            raise DataError(f"{where}: the answer ({answer_field!r}) is null; every row needs a reference answer")
        try:
            answer = normalize(row[answer_field])
        except ValueError as err:
            raise DataError(f"{where}, column {answer_field!r}: {err}") from err
        if not answer:
            raise DataError(f"{where}: empty answer in column {answer_field!r}; every row needs a reference answer")
        problem_id = f"{name}-{row[id_field] if id_field else index}"
        if problem_id in seen_ids:
            raise DataError(
                f"{where}: duplicate id {problem_id!r} (first at {seen_ids[problem_id]}); ids must be unique"
            )
        seen_ids[problem_id] = where
        problems.append(Problem(id=problem_id, question=question, answer=answer, source=name))
    return problems
