"""gtpo.data.grading: equivalent forms are equal, wrong and garbage answers are not, nothing hangs or raises."""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from gtpo.data import grading
from gtpo.data.grading import grade, grade_batch, normalize_answer


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("1/2", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}"),
        ("x=3", "3"),
        ("1,000,000", "1000000"),
        ("1000000", "1,000,000"),
        ("8.0", "8"),
        ("072", "72"),
        ("\\{1,2\\}", "\\{2,1\\}"),
        ("1,2,3", "\\{1,2,3\\}"),
        ("[2,5)", "[2, 5)"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("3\\sqrt{13}", "\\sqrt{117}"),
        ("x^2+2x+1", "(x+1)^2"),
        ("\\text{(C)}", "C"),
        ("90^\\circ", "90"),
        ("$\\frac{3}{4}$", "0.75"),
        (str(2**100), "2^{100}"),
    ],
)
def test_equivalent_forms_are_correct(prediction: str, reference: str) -> None:
    assert grade(prediction, reference)


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("2", "3"),
        ("-3", "3"),
        ("0.33", "\\frac{1}{3}"),
        ("(2,1)", "(1,2)"),
        ("\\{1,2\\}", "\\{1,2,3\\}"),
        ("x^2", "y^2"),
        ("1 2", "12"),
        ("9" * 50, "9" * 49),
    ],
)
def test_wrong_answers_are_wrong(prediction: str, reference: str) -> None:
    assert not grade(prediction, reference)


@pytest.mark.parametrize("prediction", [None, "", "   ", "$$", "abc", "}", "{", "\\frac{", "🙂", "\x00"])
def test_missing_or_garbage_answers_are_wrong(prediction: str | None) -> None:
    assert grade(prediction, "3") is False


def test_an_empty_reference_matches_nothing() -> None:
    assert grade("", "") is False
    assert grade("3", "") is False


@pytest.mark.parametrize(
    "prediction",
    [
        "9" * 100_000,  # fast path: two integers compare as strings, no int() of 100k digits
        "10^{10^{10^{10}}}",  # sympy would evaluate a tower of powers
        "100000000!",
        "(" * 900,  # deep nesting in the LaTeX parser
        "x" * 100_000,  # over MAX_SYMBOLIC_CHARS: exact match only
    ],
)
def test_pathological_answers_are_wrong_and_bounded(prediction: str) -> None:
    # No timed assertion: the test would hang (and the suite time out) if grading were unbounded.
    assert grade(prediction, "5", timeout_s=1.0) is False


def test_a_worker_that_misses_the_deadline_is_replaced() -> None:
    worker = grading._VerifyWorker()
    try:
        assert worker.verify([("\\frac{2}{4}", "0.5")], timeout_s=5.0) == [True]
        first_pid = worker._proc.pid if worker._proc else None
        # Make the worker's own timer fire long after the caller's deadline: only the kill can stop it.
        original = grading._SOFT_FRACTION
        grading._SOFT_FRACTION = 50.0
        try:
            assert worker.verify([("10^{10^{10^{10}}}", "3")], timeout_s=0.5) == [False]
        finally:
            grading._SOFT_FRACTION = original
        assert worker._proc is None  # killed
        assert worker.verify([("\\sqrt{4}", "2")], timeout_s=5.0) == [True]
        assert worker._proc is not None and worker._proc.pid != first_pid
    finally:
        worker.close()


def test_a_dead_worker_is_restarted() -> None:
    worker = grading._VerifyWorker()
    try:
        assert worker.verify([("1/2", "0.5")], timeout_s=5.0) == [True]
        assert worker._proc is not None
        os.kill(worker._proc.pid, signal.SIGKILL)
        worker._proc.wait()
        assert worker.verify([("1/4", "0.25")], timeout_s=5.0) == [True]
    finally:
        worker.close()


def test_a_worker_that_cannot_start_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = grading._VerifyWorker()
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(RuntimeError, match="math-verify"):
        worker.verify([("1/2", "0.5")], timeout_s=1.0)


def test_grading_from_worker_threads() -> None:
    # math-verify's signal.alarm timeouts raise ValueError outside the main thread; ours must not.
    pairs = [("\\frac{1}{2}", "0.5"), ("\\frac{1}{3}", "0.5"), ("x=4", "4"), ("\\sqrt{9}", "3")] * 4
    pairs.append(("10^{10^{10^{10}}}", "1"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda pair: grade(pair[0], pair[1], timeout_s=1.0), pairs))
    assert results == [True, False, True, True] * 4 + [False]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_share_the_parents_worker() -> None:
    assert grade("1/2", "0.5")  # not decided by the fast path: the parent's worker is running
    pid = os.fork()
    if pid == 0:  # child: must start from a clean slate, not write into the parent's pipes
        os._exit(0 if grading._WORKER._proc is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert grading._WORKER._proc is not None


def test_grade_batch_keeps_input_order_across_fast_and_slow_paths() -> None:
    predictions = ["72", "\\frac{1}{2}", None, "7", "\\sqrt{2}/2"]
    references = ["72", "0.5", "3", "8", "\\frac{\\sqrt2}{2}"]
    assert grade_batch(predictions, references) == [True, True, False, False, True]


def test_grade_batch_rejects_misaligned_lists() -> None:
    with pytest.raises(ValueError, match="one reference per prediction"):
        grade_batch(["1", "2"], ["1"])


def test_grade_rejects_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        grade("1", "1", timeout_s=0)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("  $\\dfrac{1}{2}$ ", "\\frac{1}{2}"),
        ("x = 3.", "x=3"),
        ("1,000", "1000"),
        ("1,2", "1,2"),  # a pair, not a thousands separator
        ("1 2", "1 2"),  # whitespace between two word characters is kept
        ("3\\,000", "3 000"),
    ],
)
def test_normalize_answer(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized
