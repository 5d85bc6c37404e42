"""The ``gtpo train`` child processes of a parallel comparison, and Ctrl-C/SIGTERM passed on to them once.

A terminal's Ctrl-C goes to its whole process group. If the children shared the parent's group, each would
get it directly while the parent exited, and the parent's exit (which sends them SIGTERM so that no run
trains on orphaned) would be their second signal, the "exit at once" one: a checkpoint half written, the steps
since the last one lost. So each child gets its own session, and the parent passes each signal on itself,
exactly once per signal: the first makes every child finish its step, checkpoint and exit 128 + signal (as
``gtpo train`` does); a second makes them exit at once. No new run starts after the first.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from gtpo.run.checkpoint import checkpoint_step, latest_checkpoint
from gtpo.run.stop import SIGNALS, TrainingStopped, install_handlers, restore_handlers


class ChildRuns:
    """Starts the children (in their own sessions), and forwards signals to the live ones."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._live: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    @property
    def stop_requested(self) -> bool:
        return self.signum is not None

    def call(self, command: Sequence[str], run_dir: Path, **popen: Any) -> int:
        """Run ``command`` to its end and return its exit status; ``TrainingStopped`` if it stopped on a
        signal (exit status 128 + signal, its checkpoint kept) or a stop came before it could start."""
        with self._lock:
            if self.signum is not None:
                raise stopped(self.signum, run_dir)
            process = subprocess.Popen(command, start_new_session=True, **popen)
            self._live.add(process)
        try:
            code = process.wait()
        finally:
            with self._lock:
                self._live.discard(process)
        if code - 128 in SIGNALS:
            raise stopped(code - 128, run_dir)
        return code

    @contextlib.contextmanager
    def forwarding_signals(self) -> Iterator[ChildRuns]:
        """While active (main thread only, where handlers can be set), SIGINT and SIGTERM go to the children."""
        previous = install_handlers(self._forward)
        try:
            yield self
        finally:
            restore_handlers(previous)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        # The main thread only waits for the workers, so it never holds the lock when a signal lands.
        with self._lock:
            self.signum = self.signum or signum
            for process in self._live:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)


def stopped(signum: int, run_dir: Path) -> TrainingStopped:
    """The stop of the run in ``run_dir``, with its newest checkpoint (None when it has none)."""
    checkpoint = latest_checkpoint(run_dir)
    step = checkpoint_step(run_dir) or 0
    return TrainingStopped(signum, step, str(checkpoint) if checkpoint else None)
