"""``SandboxPool``: stateful Python sessions for the model's code cells, run concurrently and confined.

One session per trajectory: names defined in one cell exist in the next (notebook semantics), until the
trajectory closes its session. A session's process is forked from the zygote at its first cell and forked
again, with a notice in the output, if a cell kills it. Cells run on a bounded thread pool; a batch returns
results in input order, and calls to the same session within a batch run in order.

The caller never gets an exception for what the model's code did, only an ``ExecResult`` status; it gets
``ValueError`` for its own mistakes (unknown session, wrong types) and ``SandboxError`` if the machinery
itself fails. What is protected and what is not: ``docs/sandbox.md``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import threading
import uuid
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gtpo.sandbox.launcher import SandboxError, Zygote
from gtpo.sandbox.limits import SandboxLimits
from gtpo.sandbox.session import RESTARTED, SessionProcess
from gtpo.sandbox.supply import ProcessSupply
from gtpo.types import ExecResult

logger = logging.getLogger(__name__)

DEFAULT_PRELOAD = ("math", "fractions", "itertools", "sympy", "numpy")
_MISSING = {
    "privileges": "cannot drop privileges (not root): the model's code runs as your own user, so it can "
    "read and write your files, and its process limit counts your own processes",
    "network": "NO NETWORK ISOLATION: no network namespace could be created (needs root or CAP_SYS_ADMIN); "
    "the model's code can reach the network",
    "filesystem": "NO FILESYSTEM ISOLATION: no mount namespace (needs root or CAP_SYS_ADMIN); the working "
    "directory is a host temp directory, /tmp is the host's and / is not read-only",
    "processes": "no PID namespace: the model's code sees host processes, and a process it detaches may "
    "outlive its session",
    "ipc": "no IPC namespace: SysV shared memory and message queues made by the model's code are the host's "
    "and outlive its session",
}


@dataclass
class _Session:
    process: SessionProcess | None = None
    used_wall_s: float = 0.0
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class _PoolState:
    """What shutdown needs, kept apart from the pool so ``weakref.finalize`` can run it at exit."""

    def __init__(self, zygote: Zygote, supply: ProcessSupply, executor: ThreadPoolExecutor) -> None:
        self.zygote = zygote
        self.supply = supply
        self.executor = executor
        self.sessions: dict[str, _Session] = {}
        self.lock = threading.Lock()
        self.closed = False

    def shutdown(self) -> None:
        with self.lock:
            self.closed = True
            sessions = list(self.sessions.values())
            self.sessions.clear()
        self.supply.close()
        for session in sessions:
            session.closed = True
            if session.process is not None:
                session.process.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        for session in sessions:
            if session.process is not None:
                session.process.wait_dead(2.0)
                self.supply.discard(session.process)
                session.process = None
        self.zygote.close()


class SandboxPool:
    """Confined, stateful Python sessions with a batch API; implements ``gtpo.types.CodeExecutor``."""

    def __init__(
        self,
        limits: SandboxLimits = SandboxLimits(),  # noqa: B008  (frozen, so sharing the default is safe)
        max_workers: int | None = None,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        spare_processes: int | None = None,
    ) -> None:
        """``max_workers``: cells running at once (None: CPU count). ``preload``: modules the zygote imports
        once for every session. ``spare_processes``: idle session processes kept forked ahead (None: as many
        as ``max_workers``; 0: fork on demand)."""
        if not isinstance(limits, SandboxLimits):
            raise TypeError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
        for name, value in (("max_workers", max_workers), ("spare_processes", spare_processes)):
            low = 1 if name == "max_workers" else 0
            if value is not None and not (isinstance(value, int) and value >= low):
                raise ValueError(f"{name} must be an integer >= {low} or None (the default), got {value!r}")
        if isinstance(preload, str) or not all(isinstance(m, str) for m in preload):
            raise ValueError(f"preload must be a sequence of module names, got {preload!r}")
        self.limits = limits
        self.max_workers = max_workers or os.cpu_count() or 1
        _raise_open_file_limit()
        zygote = Zygote(limits, tuple(preload))
        zygote.start()
        for name, error in zygote.preload_failures.items():
            warnings.warn(f"gtpo.sandbox: could not preload {name!r} ({error})", RuntimeWarning, stacklevel=2)
        spares = self.max_workers if spare_processes is None else spare_processes
        supply = ProcessSupply(zygote, spares, drop_privileges=os.geteuid() == 0)
        executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="gtpo-sandbox")
        self._state = _PoolState(zygote, supply, executor)
        self._finalizer = weakref.finalize(self, self._state.shutdown)
        self.isolation = self._probe_isolation()

    def _probe_isolation(self) -> dict:
        """Ask one session process which mechanisms this machine grants; warn for each one missing."""
        process = self._state.supply.spawn()
        report = dict(process.isolation)
        self._state.supply.discard(process)
        wanted = ["privileges", "filesystem", "processes", "ipc"] + ([] if self.limits.network else ["network"])
        for name in wanted:
            if not report.get(name):
                logger.warning("gtpo.sandbox: %s", _MISSING[name])
                warnings.warn(f"gtpo.sandbox: {_MISSING[name]}", RuntimeWarning, stacklevel=3)
        for problem in report.get("problems", []):
            warnings.warn(f"gtpo.sandbox: {problem}", RuntimeWarning, stacklevel=3)
        return report

    # --- sessions ---------------------------------------------------------------------------------------

    def open_session(self) -> str:
        """A new, empty session; its process starts at its first cell (so unused sessions cost nothing)."""
        with self._state.lock:
            if self._state.closed:
                raise SandboxError("the SandboxPool is closed")
            session_id = uuid.uuid4().hex
            self._state.sessions[session_id] = _Session()
        return session_id

    def close_session(self, session_id: str) -> None:
        """End a session and kill its process. Closing an unknown or closed session does nothing."""
        with self._state.lock:
            session = self._state.sessions.pop(session_id, None)
            if session is None:
                return
        session.closed = True
        if session.process is not None:
            session.process.kill()
        if session.lock.acquire(blocking=False):  # else the thread running its cell discards the process
            try:
                self._discard_process(session)
            finally:
                session.lock.release()

    def _get(self, session_id: str) -> _Session:
        with self._state.lock:
            if self._state.closed:
                raise SandboxError("the SandboxPool is closed")
            session = self._state.sessions.get(session_id)
        if session is None:
            raise ValueError(f"unknown session_id {session_id!r}: open it with open_session() (or it was closed)")
        return session

    def _discard_process(self, session: _Session) -> None:
        if session.process is not None:
            self._state.supply.discard(session.process)
            session.process = None

    # --- running code -----------------------------------------------------------------------------------

    def run(self, session_id: str, code: str) -> ExecResult:
        """Run one cell in a session; the status says how it went, the output is what the model reads."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        session = self._get(session_id)
        with session.lock:
            if session.closed:  # closed by another thread while this one waited for the lock
                raise ValueError(f"session_id {session_id!r} was closed")
            remaining = self.limits.session_wall_time_s - session.used_wall_s
            if remaining <= 0:
                message = (
                    f"TimeoutError: this session used its total time budget of "
                    f"{self.limits.session_wall_time_s:g} s; no more code can run in it\n"
                )
                return ExecResult(status="timeout", output=message, wall_time_s=0.0)
            notice = self._ensure_process(session)
            assert session.process is not None
            wall_s = min(self.limits.wall_time_s, remaining)
            result, alive = session.process.execute(code, wall_s, self.limits.cpu_time_s, self.limits.max_output_chars)
            session.used_wall_s += result.wall_time_s
            if session.closed or not alive:
                self._discard_process(session)
        if notice:
            result = ExecResult(result.status, notice + result.output, result.wall_time_s, session_restarted=True)
        return result

    def _ensure_process(self, session: _Session) -> str:
        """Start the session's process if it has none; return a notice if an earlier one died idle."""
        notice = ""
        process = session.process
        if process is not None and (process.generation != self._state.zygote.check() or not process.is_alive()):
            self._discard_process(session)  # died idle, or is dying with an earlier zygote
            notice = f"[the session's process had died while idle; {RESTARTED}]\n"
        if session.process is None:
            session.process = self._state.supply.take()
        return notice

    def run_once(self, code: str) -> ExecResult:
        """Stateless one-shot: a fresh session for this cell only."""
        session_id = self.open_session()
        try:
            return self.run(session_id, code)
        finally:
            self.close_session(session_id)

    def run_batch(self, calls: list[tuple[str, str]]) -> list[ExecResult]:
        """Run ``(session_id, code)`` pairs concurrently (at most ``max_workers`` at once); input order.

        Calls to the same session run one after another in their input order (a notebook runs cells in
        order); different sessions run in parallel.
        """
        order: dict[str, list[int]] = {}
        for i, call in enumerate(calls):
            if not (isinstance(call, tuple) and len(call) == 2 and all(isinstance(x, str) for x in call)):
                raise ValueError(f"calls[{i}] must be a (session_id, code) tuple of str, got {call!r}")
            self._get(call[0])
            order.setdefault(call[0], []).append(i)
        futures = {
            sid: self._state.executor.submit(self._run_in_order, sid, [calls[i][1] for i in indices])
            for sid, indices in order.items()
        }
        results: list[ExecResult | None] = [None] * len(calls)
        for sid, indices in order.items():
            for i, result in zip(indices, futures[sid].result(), strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def _run_in_order(self, session_id: str, codes: list[str]) -> list[ExecResult]:
        return [self.run(session_id, code) for code in codes]

    async def arun_batch(self, calls: list[tuple[str, str]]) -> list[ExecResult]:
        """``run_batch`` for an asyncio rollout: runs in a worker thread, so the event loop stays free."""
        return await asyncio.to_thread(self.run_batch, calls)

    # --- raw processes ----------------------------------------------------------------------------------

    def lease_process(self) -> SessionProcess:
        """A confined session process outside any session, for a caller that drives cells itself (the
        hidden-test harness: per-cell time limits, messages during a cell). Give it back with
        ``release_process``; ``close()`` does not know about it."""
        with self._state.lock:
            if self._state.closed:
                raise SandboxError("the SandboxPool is closed")
        return self._state.supply.take()

    def release_process(self, process: SessionProcess) -> None:
        """Kill a leased process and free its uid; once per process (its descriptors are closed then)."""
        self._state.supply.discard(process)

    # --- lifetime ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every session and the zygote, and wait for them (also run at interpreter exit)."""
        self._finalizer()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raise_open_file_limit() -> None:
    """Each live session holds three descriptors in this process; lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            logger.info("could not raise RLIMIT_NOFILE from %d", soft)
