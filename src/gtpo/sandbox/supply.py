"""Where session processes come from: forked ahead of need, each with a uid of its own.

A fork from the zygote plus namespace setup costs ~15 ms here, which is the whole cost of a stateless
``run_once`` and of every trajectory's first cell. ``ProcessSupply`` keeps a few confined, idle processes
ready (forked by a background thread while the model generates), so ``take`` is usually instant. It also
hands out uids: RLIMIT_NPROC counts per uid, so two processes never share one while both are alive.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque

from gtpo.sandbox.launcher import SandboxError, Zygote
from gtpo.sandbox.session import SessionProcess

logger = logging.getLogger(__name__)

UID_RANGE = (1 << 30, (1 << 31) - 1)
"""Session uids are drawn from here, far above any distribution's users and the usual subuid ranges."""
UID_SPAN = 1 << 16
"""Uids one pool cycles through (from a random base, so two pools rarely share one)."""
RETRY_AFTER_FAILURE_S = 1.0


class UidAllocator:
    """One unprivileged uid per live session process, cycling through a random window of UID_SPAN."""

    def __init__(self) -> None:
        self._base = random.randrange(UID_RANGE[0], UID_RANGE[1] - UID_SPAN)
        self._next = 0
        self._in_use: set[int] = set()
        self._lock = threading.Lock()

    def allocate(self) -> int:
        with self._lock:
            if len(self._in_use) >= UID_SPAN:
                raise SandboxError(f"more than {UID_SPAN} live session processes; close finished sessions")
            while (uid := self._base + self._next % UID_SPAN) in self._in_use:
                self._next += 1
            self._next += 1
            self._in_use.add(uid)
            return uid

    def release(self, uid: int) -> None:
        with self._lock:
            self._in_use.discard(uid)


class ProcessSupply:
    """Hands out ready session processes and takes back finished ones; keeps ``spares`` forked ahead."""

    def __init__(self, zygote: Zygote, spares: int, drop_privileges: bool) -> None:
        self._zygote = zygote
        self._uids = UidAllocator() if drop_privileges else None
        self._target = spares
        self._ready: deque[SessionProcess] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._refill, name="gtpo-sandbox-spares", daemon=True)
        if spares > 0:
            self._thread.start()

    def spawn(self) -> SessionProcess:
        """Fork a new process now (raises ``SandboxError`` if the machinery fails)."""
        uid = self._uids.allocate() if self._uids else None
        try:
            return self._zygote.spawn(uid)
        except BaseException:
            if uid is not None and self._uids:
                self._uids.release(uid)
            raise

    def take(self) -> SessionProcess:
        """A ready process: a spare if one is alive and from the live zygote, else a fresh fork."""
        generation = self._zygote.check()
        with self._cond:
            if self._closed:
                raise SandboxError("the SandboxPool is closed")
            while self._ready:
                process = self._ready.popleft()
                self._cond.notify()
                if process.generation == generation and process.is_alive():
                    return process
                self.discard(process)
        return self.spawn()

    def discard(self, process: SessionProcess) -> None:
        """Kill and close a process and free its uid (uids cycle, so its dying processes clash with none)."""
        process.close()
        if process.uid is not None and self._uids:
            self._uids.release(process.uid)

    def _refill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._ready) >= self._target:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                process = self.spawn()
            except Exception as e:  # the zygote is in trouble; take() will spawn itself and raise if it must
                logger.warning("gtpo.sandbox: could not fork a spare session process: %s", e)
                time.sleep(RETRY_AFTER_FAILURE_S)
                continue
            with self._cond:
                if self._closed:
                    self.discard(process)
                    return
                self._ready.append(process)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            ready = list(self._ready)
            self._ready.clear()
            self._cond.notify_all()
        for process in ready:
            self.discard(process)
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
