"""Answer grading: is a model's final answer (the ``\\boxed{}`` content) equal to the reference?

Two stages. A fast path decides the common cases in microseconds without sympy: equal strings after light
normalization, and two plain integers (``72`` vs ``0072``, ``1,000,000`` vs ``1000000``). Everything else goes
to math-verify (sympy equivalence: ``1/2 == \\frac{1}{2} == 0.5``, ``x=3 == 3``, sets, intervals, matrices).

math-verify runs in a persistent worker *process*, never in the caller's process, for two reasons found by
reading its source and trying it:

- its timeouts use ``signal.alarm``, which only works in the main thread: called from a rollout thread with
  timeouts on, ``parse``/``verify`` raise ``ValueError``; with timeouts off, nothing bounds them;
- sympy can stall in C code (``10^{10^{10^{10}}}``, ``100000000!``), where no signal is delivered, so only
  killing a process bounds the time.

The worker bounds each answer with a float interval timer (and a memory limit); the caller enforces a hard
deadline of ``timeout_s`` and kills the worker if it is missed, so ``grade`` returns in bounded time from any
thread. Pitfalls handled here: math-verify finds nothing in bare LaTeX (``parse("\\frac12") == []``), so both
answers are wrapped in ``\\boxed{}``; ``verify`` is asymmetric, the reference goes first.

What this is not: an answer extractor (``gtpo.tools.extract_boxed`` gives the ``\\boxed{}`` content) or a
reward (``gtpo.method.credit`` turns correctness into rewards). POSIX only (pipes are polled with ``select``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

MAX_SYMBOLIC_CHARS = 1000
"""Answers longer than this are graded by the fast path only: no benchmark answer is that long, and sympy
can take seconds to parse such strings (``'x' * 5000`` took 4 s)."""

WORKER_MEMORY_BYTES = 2 * 1024**3
"""Address-space limit of the math-verify worker: an answer like ``10^{10^{10}}`` fails with MemoryError
instead of swapping the machine."""

_STARTUP_TIMEOUT_S = 120.0
_SOFT_FRACTION = 0.8
"""The worker's own timer fires at this fraction of ``timeout_s``, before the caller's hard deadline, so an
ordinary slow answer costs no worker restart."""

_INT = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SPACING_COMMANDS = re.compile(r"\\[!,;:]|\\ ")
_SPACE_NEXT_TO_SYMBOL = re.compile(r"(?<=\W)\s+|\s+(?=\W)")


def normalize_answer(text: str) -> str:
    """Light, meaning-preserving normalization for the exact-match fast path.

    Strips surrounding ``$``, LaTeX spacing commands, whitespace next to symbols (kept between two word
    characters, so ``1 2`` does not become ``12``), a trailing period, ``\\dfrac``/``\\tfrac`` -> ``\\frac``,
    and thousands separators in a plain number (``1,000,000`` -> ``1000000``; ``1,2`` is left alone).
    """
    s = text.strip().strip("$").strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _SPACING_COMMANDS.sub(" ", s)
    s = _SPACE_NEXT_TO_SYMBOL.sub("", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s


def _canonical_int(s: str) -> str:
    """``+007`` -> ``7``, ``-0`` -> ``0``: string form, so a 100,000-digit answer costs no int conversion."""
    sign = "-" if s.startswith("-") else ""
    digits = s.lstrip("+-").lstrip("0") or "0"
    return digits if digits == "0" else sign + digits


def _fast_verdict(pred: str, ref: str) -> bool | None:
    """True/False when the answer is decided without sympy, None when math-verify must look."""
    if pred == ref:
        return True
    if _INT.fullmatch(pred) and _INT.fullmatch(ref):
        return _canonical_int(pred) == _canonical_int(ref)
    if _DECIMAL.fullmatch(pred) and _DECIMAL.fullmatch(ref):
        try:
            if Decimal(pred) == Decimal(ref):
                return True  # 8.0 == 8; unequal decimals go on to math-verify, which rounds floats
        except InvalidOperation:
            return None
    return None


def grade(prediction: str | None, reference: str, timeout_s: float = 5.0) -> bool:
    """Whether ``prediction`` is mathematically equal to ``reference``; never raises on any answer.

    None, empty, unparseable, over-long or too-slow answers are wrong (False). Returns within about
    ``timeout_s`` of reaching the math-verify worker (callers in other threads queue behind it); the first
    call that needs math-verify also waits for the worker to start (about a second).
    """
    return grade_batch([prediction], [reference], timeout_s)[0]


def grade_batch(predictions: Sequence[str | None], references: Sequence[str], timeout_s: float = 5.0) -> list[bool]:
    """``grade`` for aligned lists: fast path for all, then one worker session for the rest (input order)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"grade_batch got {len(predictions)} predictions and {len(references)} references; "
            "pass one reference per prediction"
        )
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    results: list[bool] = [False] * len(predictions)
    pending: list[tuple[int, str, str]] = []
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        if pred is None or ref is None:
            continue
        pred_n, ref_n = normalize_answer(str(pred)), normalize_answer(str(ref))
        if not pred_n or not ref_n:
            continue
        verdict = _fast_verdict(pred_n, ref_n)
        if verdict is not None:
            results[i] = verdict
        elif len(pred_n) <= MAX_SYMBOLIC_CHARS and len(ref_n) <= MAX_SYMBOLIC_CHARS:
            pending.append((i, str(pred).strip(), str(ref).strip()))
    if pending:
        verdicts = _WORKER.verify([(p, r) for _, p, r in pending], timeout_s)
        for (i, _, _), ok in zip(pending, verdicts, strict=True):
            results[i] = ok
    return results


class _VerifyWorker:
    """One math-verify child process, shared by all threads of this process (calls are serialized).

    Protocol: the child writes ``R`` when ready; then for each JSON line ``{"p", "r", "t"}`` on its stdin it
    writes one byte, ``1`` (equal) or ``0``. A missing byte by the deadline, or EOF, means the child is
    stuck or dead: it is killed, the answer is False, and the next call starts a fresh child.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def verify(self, pairs: Sequence[tuple[str, str]], timeout_s: float) -> list[bool]:
        with self._lock:
            return [self._ask(pred, ref, timeout_s) for pred, ref in pairs]

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _after_fork_in_child(self) -> None:
        """A forked child must not share the parent's pipes or a lock held at fork time."""
        self._lock = threading.Lock()
        self._proc = None

    def _ask(self, pred: str, ref: str, timeout_s: float) -> bool:
        proc = self._started()
        assert proc.stdin is not None and proc.stdout is not None
        request = json.dumps({"p": pred, "r": ref, "t": timeout_s * _SOFT_FRACTION}) + "\n"
        try:
            proc.stdin.write(request.encode())
            proc.stdin.flush()
        except OSError:
            self._kill()
            return False
        reply = _read_byte(proc.stdout.fileno(), time.monotonic() + timeout_s)
        if reply in (b"0", b"1"):
            return reply == b"1"
        self._kill()  # deadline missed (stuck in C code) or the child died (e.g. GMP abort on huge numbers)
        return False

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        package_root = Path(__file__).resolve().parents[2]
        proc = subprocess.Popen(
            [sys.executable, "-c", "from gtpo.data.grading import serve_worker; serve_worker()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=package_root,  # `-c` puts the cwd first on sys.path: the child imports this very package
            start_new_session=True,  # Ctrl-C in a terminal goes to the trainer, not to the grader
            bufsize=0,
        )
        assert proc.stdout is not None
        ready = _read_byte(proc.stdout.fileno(), time.monotonic() + _STARTUP_TIMEOUT_S)
        if ready != b"R":
            proc.kill()
            proc.wait()
            raise RuntimeError(
                "the math-verify grading worker did not start; check that `math-verify` is installed "
                f"(`{sys.executable} -c 'import math_verify'`)"
            )
        self._proc = proc
        return proc

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()


def _read_byte(fd: int, deadline: float) -> bytes | None:
    """One byte from ``fd``, b"" on EOF, None if nothing arrived by ``deadline`` (time.monotonic)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            readable, _, _ = select.select([fd], [], [], remaining)
        except InterruptedError:
            continue
        if readable:
            return os.read(fd, 1)


_WORKER = _VerifyWorker()
atexit.register(_WORKER.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKER._after_fork_in_child)


# ---- the worker process -----------------------------------------------------------------------------


class _Expired(BaseException):
    """Raised by the worker's timer. A BaseException, so math-verify's ``except Exception`` cannot swallow
    it and go on to the next candidate pair on an expired budget."""


def _on_timer(signum: int, frame: object) -> None:
    raise _Expired


def serve_worker() -> None:
    """Entry point of the grading worker process (started by ``grade``; not for direct use).

    Reads requests from stdin until EOF, so it exits when its parent does.
    """
    import logging

    from math_verify import parse, verify

    # Timeouts are ours (the timer below), so math-verify's own are off; silence its per-answer warnings.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)

    @lru_cache(maxsize=4096)
    def parse_reference(ref: str) -> list[object]:
        return parse(f"\\boxed{{{ref}}}", parsing_timeout=None)  # type: ignore[arg-type]

    @lru_cache(maxsize=65536)
    def equal(pred: str, ref: str) -> bool:
        target = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)  # type: ignore[arg-type]
        return bool(target) and verify(parse_reference(ref), target, timeout_seconds=None)

    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass  # no address-space limit on this platform; the caller's deadline still bounds time
    signal.signal(signal.SIGALRM, _on_timer)
    # Replies go to a private copy of fd 1; anything a library prints goes to stderr, not into the protocol.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out.write(b"R")
    for line in sys.stdin.buffer:
        ok = False
        try:
            try:
                request = json.loads(line)
                signal.setitimer(signal.ITIMER_REAL, max(float(request["t"]), 1e-3))
                ok = equal(str(request["p"]), str(request["r"]))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except (Exception, _Expired):
            ok = False
        out.write(b"1" if ok else b"0")
