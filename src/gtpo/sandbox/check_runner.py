"""The two sandboxed halves of a hidden-test run: the candidate's side and the runner's side.

``gtpo.sandbox.hidden_tests`` (in the trainer) leases two confined session processes and drives them with
cells that call into this module:

* the **candidate** process runs the solution, then one cell per call: ``serve_call`` decodes the arguments,
  calls the entry point and sends back its return value as plain data (``gtpo.sandbox.plain_data``), or the
  name of the builtin exception it raised. It never receives the tests, the expected values or the setup.
* the **runner** process runs ``run_check``: the setup (HumanEval's prompt), the tests' module, then
  ``check(candidate)`` with a proxy whose calls go to the trainer, which forwards them to the candidate
  process. Each top-level statement of check's body runs on its own, so one failing ``assert`` does not hide
  the next, and its outcome is reported as it ends.

Both sides talk to the trainer over their session socket with messages sent during the cell (see
``SessionProcess.execute``). The candidate's code shares a process with ``serve_call`` and may replace or
forge anything there; that only changes what it returns, which the runner checks. What this is not: a
place where pass/fail is decided from anything the candidate's process says about itself. Standard library
only: it is preloaded into the sandbox's processes.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import socket
from typing import Any

from gtpo.sandbox import plain_data, protocol
from gtpo.sandbox.cell import CellTimeout

SESSION_FD = 3
"""A session process's socket to the pool (``gtpo.sandbox.zygote.SESSION_FD``)."""
MAX_TEXT = 300
"""Characters kept of an exception message that travels."""
REPORT = "__gtpo_report__"
STOP = "__gtpo_stop__"


class CandidateFailure(BaseException):
    """A call that did not return plain data (time limit, crash, a lying object, ...); its message completes
    "the call ..." ("ran past its 3 s time limit").

    A BaseException, so a test's ``except Exception:`` cannot turn a failed call into a pass."""


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _send(message: dict[str, Any]) -> None:
    with socket.socket(fileno=os.dup(SESSION_FD)) as sock:
        protocol.send_message(sock, message)


# --- the candidate's side -------------------------------------------------------------------------------


def report_ready(namespace: dict[str, Any], entry_point: str) -> None:
    """Say whether the solution defined a callable ``entry_point``."""
    function = namespace.get(entry_point)
    if function is None:
        _send({"ready": False, "why": f"the solution defines no function named {entry_point!r}"})
    elif not callable(function):
        _send({"ready": False, "why": f"{entry_point!r} is a {type(function).__name__}, not a function"})
    else:
        _send({"ready": True})


def serve_call(namespace: dict[str, Any], entry_point: str, call_json: str) -> None:
    """Call ``entry_point`` on the decoded arguments; send ``value``, ``raised`` or ``unplain`` back.

    A time limit (``CellTimeout``) is not caught: the cell ends with status "timeout", which the trainer
    reads from the session, not from anything sent here.
    """
    args, kwargs = plain_data.decode(json.loads(call_json))
    try:
        value = namespace[entry_point](*args, **kwargs)
    except CellTimeout:
        raise
    except BaseException as e:  # the candidate's own error, SystemExit and KeyboardInterrupt included
        _send({"raised": _builtin_exception_name(e), "message": _short(_safe_str(e))})
        return
    try:
        data = plain_data.encode(value)
    except plain_data.NotPlainData as e:
        _send({"unplain": _short(str(e))})
        return
    _send({"value": data})


def _builtin_exception_name(error: BaseException) -> str:
    """The first builtin class in the error's MRO (a custom ``class E(ValueError)`` travels as ValueError)."""
    for kind in type(error).__mro__:
        if getattr(builtins, kind.__name__, None) is kind:
            return kind.__name__
    return "BaseException"


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)
    except CellTimeout:
        raise
    except BaseException:
        return "<unprintable message>"


# --- the runner's side ----------------------------------------------------------------------------------


class _Channel:
    """The runner's socket to the trainer: reports and calls, one message at a time."""

    def __init__(self) -> None:
        self._sock = socket.socket(fileno=os.dup(SESSION_FD))

    def send(self, message: dict[str, Any]) -> None:
        protocol.send_message(self._sock, message)

    def ask(self, message: dict[str, Any]) -> Any:
        self.send(message)
        return protocol.recv_message(self._sock)  # no deadline here: the cell's own time limit bounds it

    def close(self) -> None:
        self._sock.close()


def check_statements(tests: str) -> tuple[ast.Module, ast.FunctionDef]:
    """Parse the tests' module and find its top-level ``def check(candidate)``; ValueError if there is none."""
    module = ast.parse(tests, "<tests>")
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks:
        raise ValueError("the tests define no top-level function check(candidate)")
    check = checks[-1]
    if not check.args.args and not check.args.posonlyargs:
        raise ValueError("the tests' check() takes no argument; it must be check(candidate)")
    return module, check


def is_test(statement: ast.stmt) -> bool:
    """A statement of check's body is a test if it asserts something (outside functions it defines)."""
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
    stack: list[ast.AST] = [] if isinstance(statement, definitions) else [statement]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Assert):
            return True
        stack.extend(c for c in ast.iter_child_nodes(node) if not isinstance(c, definitions))
    return False


def _wrap_steps(check: ast.FunctionDef) -> None:
    """Run each top-level statement of check's body on its own and report how it ended."""
    body: list[ast.stmt] = []
    for index, statement in enumerate(check.body):
        if isinstance(statement, (ast.Global, ast.Nonlocal)):
            body.append(statement)
            continue
        template = ast.parse(
            f"try:\n    pass\nexcept {STOP}:\n    raise\nexcept BaseException as __gtpo_error__:\n"
            f"    {REPORT}({index}, __gtpo_error__)\nelse:\n    {REPORT}({index}, None)\n"
        ).body[0]
        assert isinstance(template, ast.Try)
        template.body = [statement]
        body.append(ast.copy_location(template, statement))
    check.body = body
    ast.fix_missing_locations(check)


def _describe(error: BaseException | None) -> str | None:
    """How a step failed, without the test's own message (it may hold expected values)."""
    if error is None:
        return None
    if isinstance(error, CandidateFailure):
        return f"the call {error}"
    if getattr(error, "__gtpo_candidate__", False):
        return f"the call raised {type(error).__name__}: {error}"
    return type(error).__name__


def _proxy(channel: _Channel, name: str) -> Any:
    def candidate(*args: Any, **kwargs: Any) -> Any:
        try:
            call = plain_data.encode([list(args), kwargs])
        except plain_data.NotPlainData as e:
            raise CandidateFailure(f"was not made: an argument is not plain data: {e}") from None
        answer = channel.ask({"call": call})
        if "value" in answer:
            return plain_data.decode(answer["value"])
        if "raised" in answer:
            raise _candidate_error(answer["raised"], answer["message"])
        raise CandidateFailure(answer["failure"])

    candidate.__name__ = candidate.__qualname__ = name
    return candidate


def _candidate_error(name: str, message: str) -> BaseException:
    """The builtin exception the candidate raised, rebuilt from its name (an ``except ValueError:`` in a test
    sees it); a non-Exception one (SystemExit, KeyboardInterrupt) is a ``CandidateFailure``."""
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            error = kind(message)
        except Exception:  # e.g. UnicodeDecodeError needs five arguments
            return CandidateFailure(f"raised {name}: {message}")
        error.__gtpo_candidate__ = True  # type: ignore[attr-defined]
        return error
    return CandidateFailure(f"raised {name}: {message}")


def run_check(setup: str, tests: str, entry_point: str) -> None:
    """In the runner process: load the setup and the tests, run check(proxy) step by step, report each step.

    Messages to the trainer: ``{"setup_error"}`` if the setup or the tests' module fails before any call,
    ``{"step": i, "error": None | text}`` per statement of check's body, ``{"done": True}`` at the end.
    """
    channel = _Channel()
    try:
        namespace: dict[str, Any] = {"__name__": "hidden_tests", STOP: CellTimeout}
        try:
            if setup:
                exec(compile(setup, "<setup>", "exec"), namespace)
            module, check = check_statements(tests)
            _wrap_steps(check)
            exec(compile(module, "<tests>", "exec"), namespace)
        except CellTimeout:
            raise
        except BaseException as e:
            channel.send({"setup_error": _short(f"{type(e).__name__}: {_safe_str(e)}")})
            return

        def report(index: int, error: BaseException | None) -> None:
            channel.send({"step": index, "error": _describe(error)})

        namespace[REPORT] = report
        proxy = _proxy(channel, entry_point)
        namespace[entry_point] = proxy  # tests (and helpers in the setup) that call it by name get the proxy
        namespace[check.name](proxy)
        channel.send({"done": True})
    finally:
        channel.close()
