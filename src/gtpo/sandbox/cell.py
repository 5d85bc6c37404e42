"""Run one notebook cell inside a session process: capture output, show the last value, explain errors.

The text the model reads is built here: stdout and stderr in the order written, the ``repr`` of a final
bare expression (as a notebook shows it), and on failure a short traceback that keeps only the cell's own
frames (no host paths, no library internals). A time limit raises ``CellTimeout`` in the cell; one stuck
in C code is the pool's to kill. Standard library only: it runs in the zygote's children.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import io
import linecache
import os
import signal
import sys
import traceback
import types
from typing import Any

from gtpo.sandbox import isolation
from gtpo.sandbox.protocol import MAX_ERROR_CHARS

MAX_TRACEBACK_ENTRIES = 8
"""Frames (after collapsing repeats) kept in a traceback: the model needs the failing lines, not a stack."""
ALARM_REPEAT_S = 0.1
"""After the wall limit the alarm keeps firing, so code that swallows one CellTimeout gets another."""


class CellTimeout(BaseException):
    """A time limit passed. BaseException, so the model's ``except Exception:`` does not swallow it."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class OutputBudget:
    """Bytes a cell may still write through ``sys.stdout``/``sys.stderr``; what is past it is only counted."""

    def __init__(self) -> None:
        self.remaining_bytes = 0
        self.dropped_chars = 0

    def reset(self, max_bytes: int) -> None:
        self.remaining_bytes = max_bytes
        self.dropped_chars = 0


def _write_capped(fd: int, budget: OutputBudget, data: bytes) -> int:
    """Write what the budget allows of ``data`` to ``fd``; return the bytes written (the rest is dropped)."""
    data = data[: budget.remaining_bytes]
    written = 0
    try:
        while written < len(data):
            written += os.write(fd, data[written:])
    except OSError:
        pass  # descriptor closed or file-size limit: the rest counts as dropped
    budget.remaining_bytes -= written
    return written


class CappedBytes(io.RawIOBase):
    """``sys.stdout.buffer`` of a cell: bytes straight to the output descriptor, under the same budget."""

    def __init__(self, fd: int, budget: OutputBudget, name: str) -> None:
        super().__init__()
        self._fd = fd
        self._budget = budget
        self.name = name

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")  # bytes, bytearray, memoryview, array: what a real buffer takes
        written = _write_capped(self._fd, self._budget, bytes(view[: self._budget.remaining_bytes]))
        self._budget.dropped_chars += len(view) - written
        return len(view)


class CappedStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a cell: writes straight to the output descriptor, up to the budget.

    Unbuffered, so Python-level and C-level writes (a subprocess, ``os.write``) land in the order made;
    capped, so printing 100 MB costs a counter, not 100 MB of output (or an EFBIG error). It has what model
    code reaches for on the real streams: ``.buffer`` (bytes), ``fileno()``, ``flush()``, ``isatty()``.
    """

    def __init__(self, fd: int, budget: OutputBudget, name: str) -> None:
        super().__init__()
        self._fd = fd
        self._budget = budget
        self._name = name
        self._buffer = CappedBytes(fd, budget, name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def encoding(self) -> str:
        return "utf-8"

    @property
    def errors(self) -> str:
        return "replace"

    @property
    def buffer(self) -> CappedBytes:
        return self._buffer

    @property
    def line_buffering(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        return None  # every write already reached the descriptor

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        budget = self._budget
        # A char is at most 4 bytes, so slicing first bounds the encode cost of a huge string.
        data = s[: budget.remaining_bytes].encode("utf-8", "replace")
        written = _write_capped(self._fd, budget, data)
        kept_chars = len(data[:written].decode("utf-8", "ignore"))
        budget.dropped_chars += len(s) - kept_chars
        return len(s)


def fresh_namespace() -> dict[str, Any]:
    """A new ``__main__`` module's dict: the session's globals, so pickling user classes works."""
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    return module.__dict__


def compile_cell(code: str, filename: str) -> tuple[types.CodeType, types.CodeType | None]:
    """Compile the cell; split off a final bare expression so its value can be shown (not after ``;``)."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    tree = ast.parse(code, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
        last = ast.Expression(tree.body.pop().value)
    body = compile(tree, filename, "exec", dont_inherit=True)
    return body, (compile(last, filename, "eval", dont_inherit=True) if last is not None else None)


def exec_cell(code: str, filename: str, namespace: dict[str, Any], stdout: Any) -> None:
    """Run the cell's statements in ``namespace``; a final bare expression's repr goes to ``stdout``, as in a
    notebook. Shared with the warm-start traces, which must read exactly what a session shows."""
    body, last = compile_cell(code, filename)
    exec(body, namespace)
    if last is not None:
        value = eval(last, namespace)
        if value is not None:
            stdout.write(repr(value) + "\n")


def _scrub_host_paths(text: str) -> str:
    for prefix in sorted({sys.prefix, sys.base_prefix, sys.exec_prefix}, key=len, reverse=True):
        if len(prefix) > 1:
            text = text.replace(prefix, "<python>")
    return text


def short_traceback(exc: BaseException, last_line: str | None = None) -> str:
    """The cell's frames and the error line, as the model reads them; ``last_line`` replaces the message.

    Library frames are dropped (they carry host paths and rarely help the model); repeated frames of a
    recursion collapse into one "[Previous line repeated N more times]" line, and only the innermost
    ``MAX_TRACEBACK_ENTRIES`` are kept. The frames are walked once with plain attribute reads, and only the
    kept ones are looked up and formatted: traceback.extract_tb formats every frame, which took ~9 s for a
    recursion 10^5 deep and turned a RecursionError into a timeout (and a lost session).
    """
    runs, hidden = _cell_frame_runs(exc.__traceback__, MAX_TRACEBACK_ENTRIES)
    lines = []
    if runs:
        lines.append("Traceback (most recent call last):\n")
        if hidden:
            lines.append(f"  [... {hidden} earlier frames not shown ...]\n")
        for tb, count in runs:
            tb.tb_next = None  # format this frame alone (the chain is only read here, then dropped)
            lines.extend(traceback.extract_tb(tb).format())
            if count > 1:
                lines.append(f"  [Previous line repeated {count - 1} more times]\n")
    lines.extend([last_line] if last_line else traceback.format_exception_only(type(exc), exc))
    text = _scrub_host_paths("".join(lines))
    if len(text) > MAX_ERROR_CHARS:
        half = MAX_ERROR_CHARS // 2
        text = f"{text[:half]}\n[... {len(text) - 2 * half} characters of traceback omitted ...]\n{text[-half:]}"
    return text


def _cell_frame_runs(tb: types.TracebackType | None, keep: int) -> tuple[list[tuple[types.TracebackType, int]], int]:
    """The innermost ``keep`` runs of identical consecutive cell frames, as (first traceback entry, count),
    and how many cell frames before them are left out."""
    runs: collections.deque[list] = collections.deque()
    hidden = 0
    last_key = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.startswith("<cell "):
            key = (code, tb.tb_lasti)  # the same instruction; tb_lineno would decode the line table
            if key == last_key:
                runs[-1][1] += 1
            else:
                if len(runs) == keep:
                    hidden += runs.popleft()[1]
                runs.append([tb, 1])
                last_key = key
        tb = tb.tb_next
    return [(first, count) for first, count in runs], hidden


def report_unraisable(hook_args: Any) -> None:
    """``sys.unraisablehook`` of a session: one short line, without the host paths of the default hook."""
    where = getattr(hook_args.object, "__qualname__", None) or type(hook_args.object).__name__
    name = type(hook_args.exc_value).__name__ if hook_args.exc_value is not None else "error"
    sys.stderr.write(f"Exception ignored in {where}: {name}: {hook_args.exc_value}\n")


class CellRunner:
    """Executes cells one after another in one namespace (a session's state), under per-cell time limits."""

    def __init__(self, memory_mb: int, max_output_bytes: int, workdir: str, output_backup_fd: int) -> None:
        self.namespace = fresh_namespace()
        sys.unraisablehook = report_unraisable
        self._output_backup_fd = output_backup_fd
        self.cells_run = 0
        self._memory_mb = memory_mb
        self._max_output_bytes = max_output_bytes
        self._workdir = workdir
        self._budget = OutputBudget()
        self._armed = False

    def _on_time_limit(self, signum: int, frame: object) -> None:
        if self._armed:
            raise CellTimeout("cpu" if signum == signal.SIGXCPU else "wall")

    def _arm(self, wall_s: float, cpu_s: float) -> None:
        signal.signal(signal.SIGALRM, self._on_time_limit)
        signal.signal(signal.SIGXCPU, self._on_time_limit)
        self._armed = True
        isolation.set_cell_cpu_limit(cpu_s)
        signal.setitimer(signal.ITIMER_REAL, wall_s, ALARM_REPEAT_S)

    def _disarm(self) -> None:
        self._armed = False  # first: a signal arriving from here on is ignored
        signal.setitimer(signal.ITIMER_REAL, 0)
        isolation.set_cell_cpu_limit(None)

    def _prepare(self) -> None:
        """Undo what the previous cell may have broken: output descriptors, streams, working directory."""
        with contextlib.suppress(OSError):
            os.dup2(self._output_backup_fd, 1)
            os.dup2(self._output_backup_fd, 2)
            os.ftruncate(1, 0)
        self._budget.reset(self._max_output_bytes)
        sys.stdout = CappedStream(1, self._budget, "<stdout>")
        sys.stderr = CappedStream(2, self._budget, "<stderr>")
        try:  # the cell may have emptied, chmod-ed or left its directory; the mount point itself survives
            os.chmod(self._workdir, 0o700)
            os.chdir(self._workdir)
        except OSError:
            os.chdir("/")

    def run(self, code: str, wall_s: float, cpu_s: float) -> dict[str, Any]:
        """Run one cell; return ``{"status", "error", "dropped_chars"}`` (output is on descriptor 1)."""
        self.cells_run += 1
        self._prepare()
        stdout = sys.stdout
        status, error = "ok", ""
        try:
            try:
                self._arm(wall_s, cpu_s)
                exec_cell(code, f"<cell {self.cells_run}>", self.namespace, stdout)
            finally:
                self._disarm()
        except CellTimeout as e:
            status = "timeout"
            error = short_traceback(e, self._timeout_message(e.kind, wall_s, cpu_s))
        except MemoryError as e:
            status = "memory"
            error = short_traceback(e, f"MemoryError: the cell exceeded the {self._memory_mb} MB memory limit\n")
        except SystemExit as e:
            if e.code not in (None, 0):
                status, error = "error", short_traceback(e)
        except BaseException as e:  # the model's code may raise anything; all of it is a cell error
            status, error = "error", short_traceback(e)
        return {"status": status, "error": error, "dropped_chars": self._budget.dropped_chars}

    @staticmethod
    def _timeout_message(kind: str, wall_s: float, cpu_s: float) -> str:
        if kind == "cpu":
            return f"TimeoutError: the cell used more than its {cpu_s:g} s CPU time limit\n"
        return f"TimeoutError: the cell ran longer than its {wall_s:g} s time limit\n"
