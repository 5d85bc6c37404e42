"""Ctrl-C and SIGTERM during training: the first asks the loop to stop at the next step boundary, the second
exits at once.

A scheduler sends SIGTERM (and SIGKILL a grace period later) and a person presses Ctrl-C; either way the steps
since the last checkpoint should not be lost. So the first signal only sets a flag: the trainer finishes the
step it is in (or abandons an evaluation in progress), writes a checkpoint and raises ``TrainingStopped``, which
the CLI turns into a resume hint and exit code 128 + signal (130 for SIGINT, 143 for SIGTERM). A second signal
means "now": it exits with the same code without cleaning up (checkpoints are atomic, so the last complete one
stays usable). Handlers can only be installed from the main thread; elsewhere the signals keep their defaults.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class TrainingStopped(Exception):
    """Training stopped early on a signal; ``checkpoint`` is where it can resume from (None: nothing saved)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum
        where = f"checkpoint at step {step}: {checkpoint}" if checkpoint else "no step finished, nothing saved"
        super().__init__(f"stopped by {NAMES.get(signum, f'signal {signum}')} ({where})")


class StopRequests:
    """Context manager: while active, SIGINT/SIGTERM set ``signum`` instead of killing; a second one exits."""

    def __init__(self, notice: Any = None) -> None:
        """``notice(text)`` tells the person what happens now (default: print to stderr)."""
        self.signum: int | None = None
        self._notice = notice or _to_stderr
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            _exit_now(signum, self._notice)
        name = NAMES.get(signum, f"signal {signum}")
        self.signum = signum
        self._notice(
            f"{name}: finishing this step, then writing a checkpoint and stopping ({name} again to exit at once)"
        )

    def __enter__(self) -> StopRequests:
        self._previous = install_handlers(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        restore_handlers(self._previous)
        self._previous = {}


def install_handlers(handler: Any) -> dict[int, Any]:
    """``handler`` for SIGINT and SIGTERM; returns the handlers it replaced, for ``restore_handlers``. Off the
    main thread Python cannot set handlers: nothing changes there and the signals keep their defaults."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in SIGNALS}


def restore_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def exit_on_next_signal(notice: Any = None) -> None:
    """After a stop, while the command reports it and cleans up: a further signal exits at once, as a second
    one does during training (otherwise Python's default turns it into a traceback).

    Only for a command about to exit: the handlers are never restored, so a library caller (a notebook) must
    not use it."""
    say = notice or _to_stderr
    install_handlers(lambda received, frame: _exit_now(received, say))


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _exit_now(signum: int, notice: Any) -> None:
    notice(f"{NAMES.get(signum, f'signal {signum}')} again: exiting now; the last complete checkpoint is kept")
    os._exit(128 + signum)
