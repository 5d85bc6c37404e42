"""Environment calls off the decoding thread: each on a daemon thread of its own, each with a deadline.

A call that raises or runs past its deadline becomes a ``Failure`` that ends its own trajectory ("env_error" /
"env_timeout"); the others go on. A call that hangs cannot be stopped (a Python thread cannot be killed): its
thread, a daemon, is abandoned and does not keep the process from exiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from gtpo.envs.base import StepResult


@dataclass
class Failure:
    """An environment call that raised or ran out of time: it ends its trajectory."""

    reason: str
    """"env_error" or "env_timeout"."""
    message: str


Outcome = StepResult | Failure


class EnvCalls:
    """Environment calls, each on a daemon thread of its own (one that hangs is abandoned, and cannot hold up
    the others or the process's exit), each with a deadline. A sandbox bounds its own concurrency."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def submit(self, fn: Callable[..., Any], *args: Any) -> tuple[Future, float]:
        future: Future = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as err:
                future.set_exception(err)

        threading.Thread(target=run, name="gtpo-env", daemon=True).start()
        return future, time.monotonic() + self.timeout_s

    @staticmethod
    def outcome(call: tuple[Future, float], what: str) -> Any:
        future, deadline = call
        try:
            return future.result(timeout=max(deadline - time.monotonic(), 0.0))
        except FutureTimeout:
            return Failure("env_timeout", f"{what} took longer than the step time limit")
        except (Exception, SystemExit) as err:  # the environment's own error: it ends this trajectory only
            return Failure("env_error", f"{what} raised {type(err).__name__}: {err}"[:2000])
