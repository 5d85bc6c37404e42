"""gtpo.data.load: local files become Problems, benchmark answers are normalized, bad input gets a clear error."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from gtpo.data.load import BENCHMARKS, DataError, answer_text, gsm8k_answer, load_benchmark, load_problems
from gtpo.types import Problem

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_load_problems_from_jsonl(tmp_path: Path) -> None:
    source = _write_jsonl(
        tmp_path / "train.jsonl", [{"question": "1+1?", "answer": 2}, {"question": "2+2?", "answer": "4"}]
    )
    assert load_problems(source) == [
        Problem(id="train-0", question="1+1?", answer="2", source="train"),
        Problem(id="train-1", question="2+2?", answer="4", source="train"),
    ]


def test_load_problems_from_json_list_with_custom_fields_and_ids(tmp_path: Path) -> None:
    rows = [{"q": "What is 3*3?", "a": 9.0, "uid": "p9"}, {"q": "Half of 1?", "a": 0.5, "uid": "p5"}]
    source = tmp_path / "set.json"
    source.write_text(json.dumps(rows), encoding="utf-8")
    problems = load_problems(str(source), question_field="q", answer_field="a", id_field="uid")
    assert [(p.id, p.answer) for p in problems] == [("set-p9", "9"), ("set-p5", "0.5")]


def test_load_problems_from_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "x?", "answer": "\\frac{1}{2}"}]), path)
    assert load_problems(str(path)) == [Problem(id="rows-0", question="x?", answer="\\frac{1}{2}", source="rows")]


def test_limit_keeps_the_first_rows(tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "d.jsonl", [{"question": f"q{i}", "answer": i} for i in range(5)])
    assert [p.answer for p in load_problems(source, limit=2)] == ["0", "1"]
    assert load_problems(source, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        load_problems(source, limit=-1)


def test_missing_question_field_names_field_columns_and_flag(tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "d.jsonl", [{"problem": "1+1?", "answer": "2"}])
    with pytest.raises(ValueError) as err:
        load_problems(source)
    message = str(err.value)
    assert "'question'" in message and "answer, problem" in message and "--data.question-field" in message


def test_missing_answer_field_names_the_answer_flag(tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "d.jsonl", [{"question": "1+1?", "solution": "2"}])
    with pytest.raises(ValueError, match=r"'answer'.*question, solution.*--data\.answer-field"):
        load_problems(source)


def test_missing_id_field_is_reported(tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "1"}])
    with pytest.raises(ValueError, match=r"'uid'.*id_field"):
        load_problems(source, id_field="uid")


def test_bad_rows_are_reported_with_their_position(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"question": "q", "answer": "1"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_problems(str(bad_json))
    empty_answer = _write_jsonl(tmp_path / "e.jsonl", [{"question": "q", "answer": "  "}])
    with pytest.raises(DataError, match=r"e\.jsonl:1: empty answer in column 'answer'"):
        load_problems(empty_answer)
    duplicate = _write_jsonl(tmp_path / "dup.jsonl", [{"question": "a", "answer": 1, "k": 1}] * 2)
    with pytest.raises(ValueError, match="duplicate id"):
        load_problems(duplicate, id_field="k")
    not_a_list = tmp_path / "obj.json"
    not_a_list.write_text('{"question": "q"}', encoding="utf-8")
    with pytest.raises(ValueError, match="JSON list of objects"):
        load_problems(str(not_a_list))
    lines_in_json = tmp_path / "lines.json"
    lines_in_json.write_text('{"question": "q", "answer": 1}\n{"question": "r", "answer": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"needs the \.jsonl suffix"):
        load_problems(str(lines_in_json))


def test_a_missing_file_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file; check the path"):
        load_problems(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="is a directory"):
        load_problems(str(tmp_path))


def test_positions_count_lines_from_one_in_every_message(tmp_path: Path) -> None:
    """A JSON error and a missing answer on the same file name the same numbering: the editor's line numbers."""
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"question": "q1", "answer": 1}\n\n{"question": "q2"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"mixed\.jsonl:3: no column 'answer'; this row has: question\. Fix: set"):
        load_problems(str(path))
    path.write_text('{"question": "q1", "answer": 1}\n\n{"question": "q2", answer: 2}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"mixed\.jsonl:3: not valid JSON \(.*column 20\); each line must be one"):
        load_problems(str(path))
    path.write_text('{"question": "q1", "answer": null}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"mixed\.jsonl:1: the answer \('answer'\) is null"):
        load_problems(str(path))
    items = tmp_path / "items.json"
    items.write_text(json.dumps([{"question": "a", "answer": 1}, {"question": "b"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"items\.json: item 2: no column 'answer'"):
        load_problems(str(items))


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("empty.json", "[]")])
def test_a_file_without_rows_is_an_error(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"{name}: the file has no rows; it needs one problem per row"):
        load_problems(str(path))


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"question": "caf\u00e9", "answer": 1}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.jsonl: not UTF-8 text \(byte 17"):
        load_problems(str(path))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (8.0, "8"),
        (2.5, "2.5"),
        (-4.0, "-4"),
        (1e-7, "0.0000001"),
        (72, "72"),
        (["27.0"], "27"),
        ("27.0", "27"),
        ("  \\frac{1}{2} ", "\\frac{1}{2}"),
        ("He has 6+6=<<6+6=12>>12.\n#### 12", "12"),
    ],
)
def test_answer_text(value: object, text: str) -> None:
    assert answer_text(value) == text


def test_answer_text_rejects_non_answers() -> None:
    for value in (None, True, [1, 2], {"a": 1}):
        with pytest.raises(ValueError, match="not a number or a string"):
            answer_text(value)


def test_gsm8k_answer_drops_thousands_separators_and_requires_the_marker() -> None:
    assert gsm8k_answer("Total 1,800.\n#### 1,800") == "1800"
    with pytest.raises(ValueError, match="####"):
        gsm8k_answer("no marker here")


def test_every_benchmark_has_a_fixture() -> None:
    assert sorted(BENCHMARKS) == sorted(p.stem for p in FIXTURES.glob("*.jsonl"))


@pytest.mark.parametrize(
    ("name", "ids", "answers"),
    [
        ("aime24", ["aime24-60", "aime24-61", "aime24-62"], ["001", "16", "400"]),
        ("aime25", ["aime25-0", "aime25-1", "aime25-2"], ["9", "120", "13"]),
        ("amc23", ["amc23-0", "amc23-1", "amc23-2"], ["3", "24", "-4"]),
        (
            "math500",
            ["math500-test/prealgebra/1.json", "math500-test/algebra/7.json", "math500-test/algebra/9.json"],
            ["\\frac{1}{2}", "\\sqrt{2}", "[2,5)"],
        ),
        ("gsm8k", ["gsm8k-0", "gsm8k-1", "gsm8k-2"], ["72", "1800", "7"]),
        ("svamp", ["svamp-chal-1", "svamp-chal-2", "svamp-chal-3"], ["8", "30", "2.5"]),
    ],
)
def test_load_benchmark_fixture(name: str, ids: list[str], answers: list[str]) -> None:
    problems = load_benchmark(name, path=str(FIXTURES / f"{name}.jsonl"))
    assert [p.id for p in problems] == ids
    assert [p.answer for p in problems] == answers
    assert all(p.source == name and p.question for p in problems)


def test_svamp_question_is_body_then_question() -> None:
    first = load_benchmark("svamp", path=str(FIXTURES / "svamp.jsonl"), limit=1)
    assert [p.question for p in first] == [
        "Mia had 12 stickers. She gave 4 stickers to her brother How many stickers does Mia have now?"
    ]


def test_load_benchmark_from_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [json.loads(line) for line in (FIXTURES / "amc23.jsonl").read_text().splitlines()]
    path = tmp_path / "amc23.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert [p.answer for p in load_benchmark("amc23", path=str(path))] == ["3", "24", "-4"]


def test_benchmark_file_in_the_wrong_format_names_the_expected_columns() -> None:
    with pytest.raises(
        DataError, match=r"gsm8k\.jsonl:1: no column 'problem'.*HuggingFaceH4/MATH-500 \(problem, answer\)"
    ):
        load_benchmark("math500", path=str(FIXTURES / "gsm8k.jsonl"))


def test_unknown_benchmark_lists_the_known_names() -> None:
    with pytest.raises(ValueError, match="aime24, aime25, amc23, gsm8k, math500, svamp"):
        load_benchmark("mmlu")


def test_hf_datasets_without_the_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match=r"gtpo\[data\]"):
        load_problems("owner/some-dataset")


def test_hf_names_go_to_load_dataset_with_config_and_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, str | None, str]] = []

    def load_dataset(name: str, config: str | None = None, *, split: str) -> list[dict]:
        calls.append((name, config, split))
        return [{"question": "Ann has 2 pens and buys 3. How many?", "answer": "2+3=5\n#### 5"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert [p.answer for p in load_benchmark("gsm8k")] == ["5"]
    assert [p.id for p in load_problems("owner/train-set", split="validation")] == ["owner/train-set-0"]
    assert calls == [("openai/gsm8k", "main", "test"), ("owner/train-set", None, "validation")]
