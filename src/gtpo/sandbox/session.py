"""Pool side of one running session process: send a cell, wait with a deadline, read its output, kill it.

The session process runs the model's code in-process, so everything it sends back is untrusted: replies are
validated, a silent or garbled process is killed, and the output is read by the pool itself from a memfd the
pool created (so a cell killed at its deadline still shows what it printed). Nothing here raises because of
what the cell did; ``execute`` always returns an ``ExecResult``.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any

from gtpo.sandbox import protocol
from gtpo.types import ExecResult

HARD_KILL_GRACE_S = 0.5
"""How long past its wall limit a cell may take to stop by itself (the in-process TimeoutError) before the
pool kills the process: covers code stuck in C, e.g. ``10**10**10``, or code that ignores the signal."""
RESTARTED = "the session was restarted, so names defined in earlier cells are gone"
"""Ends the one line of output that tells the model its state is gone (``ExecResult.session_restarted``)."""
STATUSES = ("ok", "error", "timeout", "memory")
"""Statuses a session process may report; "killed" is only the pool's to decide."""
OnMessage = Callable[[Any], Any]
"""Serves one message a running cell sent (see ``SessionProcess.execute``); returns the answer or None."""


def truncate_output(data: bytes, total_bytes: int, dropped_chars: int, max_chars: int) -> str:
    """Decode the output head and mark what was cut: ``max_chars`` kept, then a visible marker.

    ``data`` is the first bytes of the output, ``total_bytes`` its full size on the descriptor, and
    ``dropped_chars`` what the session's capped streams never wrote. Omitted = (decoded past max_chars)
    + (bytes past ``data``) + dropped_chars, exact for ASCII output.
    """
    text = data.decode("utf-8", "replace")
    omitted = max(0, len(text) - max_chars) + max(0, total_bytes - len(data)) + dropped_chars
    if omitted == 0:
        return text
    return f"{text[:max_chars]}\n[... output truncated: {omitted} more characters not shown ...]\n"


def join_output(*parts: str) -> str:
    """Concatenate output pieces, each starting on a new line."""
    text = ""
    for part in parts:
        if part:
            text += part if not text or text.endswith("\n") else "\n" + part
    return text


@dataclass
class SessionProcess:
    """A live session process: socket, output memfd, pidfd (to kill it safely), isolation report, uid."""

    sock: socket.socket
    output_fd: int
    pidfd: int
    pid: int
    isolation: dict[str, Any]
    uid: int | None
    generation: int
    """The zygote generation that forked it (see ``Zygote.generation``)."""
    fallback_workdir: str | None = None
    """The host temp directory used as working directory when there is no mount namespace."""

    def execute(
        self, code: str, wall_s: float, cpu_s: float, max_chars: int, on_message: OnMessage | None = None
    ) -> tuple[ExecResult, bool]:
        """Run one cell; return the result and whether this process can take the next cell.

        ``on_message`` serves messages the cell itself sends on its socket before its reply (the hidden-test
        harness's calls and values; anything without a ``"status"`` key): its return value, unless None, is
        sent back to the cell. It may raise ``protocol.ProtocolError`` to treat the process as dead. Without
        it, such a message is a malformed reply (the process is killed), as for any cell.
        """
        start = monotonic()
        deadline = start + wall_s + HARD_KILL_GRACE_S
        frame = protocol.encode_message({"code": code, "wall_s": wall_s, "cpu_s": cpu_s})
        if len(frame) - protocol.HEADER_BYTES > protocol.MAX_MESSAGE_BYTES:  # the session would refuse it
            error = f"ValueError: the cell's code is too long ({len(code)} characters); nothing ran\n"
            return ExecResult(status="error", output=error, wall_time_s=0.0), True
        alive = True
        try:
            protocol.send_frame(self.sock, frame, wall_s)
            message = protocol.recv_message(self.sock, deadline)
            while on_message is not None and not (isinstance(message, dict) and "status" in message):
                answer = on_message(message)
                if answer is not None:
                    protocol.send_message(self.sock, answer, max(1e-3, deadline - monotonic()))
                message = protocol.recv_message(self.sock, deadline)
            status, error, dropped, restart = _parse_reply(message)
            if restart:
                error = join_output(error, f"[{restart}; {RESTARTED}]\n")
                alive = False
        except TimeoutError:
            status, dropped, alive = "timeout", 0, False
            error = f"TimeoutError: the cell ran longer than its {wall_s:g} s time limit and was stopped"
            error += f"; {RESTARTED}\n"
        except protocol.ProtocolError:
            status, dropped, alive = "killed", 0, False
            error = f"The sandbox process died (killed, crashed or exited); {RESTARTED}\n"
        elapsed = monotonic() - start
        if not alive:
            self.kill()
        output = self._read_output(dropped, max_chars)
        result = ExecResult(status, join_output(output, error), wall_time_s=elapsed, session_restarted=not alive)
        return result, alive

    def _read_output(self, dropped_chars: int, max_chars: int) -> str:
        try:
            total = os.fstat(self.output_fd).st_size
            data = os.pread(self.output_fd, min(total, protocol.output_cap_bytes(max_chars)), 0)
            os.ftruncate(self.output_fd, 0)
        except OSError:
            return ""
        return truncate_output(data, total, dropped_chars, max_chars)

    def _exited_within(self, timeout_s: float) -> bool:
        poller = select.poll()  # a pidfd turns readable when its process ends
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(int(timeout_s * 1000)))

    def is_alive(self) -> bool:
        return not self._exited_within(0)

    def wait_dead(self, timeout_s: float) -> bool:
        """Wait until the process has exited; True if it did within ``timeout_s``."""
        return self._exited_within(timeout_s)

    def kill(self) -> None:
        """SIGKILL the session; as PID 1 of its namespace, its death takes every process it started."""
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        if self.fallback_workdir:
            self.wait_dead(1.0)
            shutil.rmtree(self.fallback_workdir, ignore_errors=True)
        self.sock.close()
        for fd in (self.output_fd, self.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _parse_reply(reply: Any) -> tuple[str, str, int, str]:
    """Validate a reply the session sent; anything malformed is treated as a dead process."""
    try:
        status, error, dropped, restart = (reply[k] for k in ("status", "error", "dropped_chars", "restart"))
    except (TypeError, KeyError) as e:
        raise protocol.ProtocolError(f"malformed reply: {e}") from e
    valid = status in STATUSES and isinstance(error, str) and isinstance(restart, str)
    if not (valid and isinstance(dropped, int) and dropped >= 0):
        raise protocol.ProtocolError("malformed reply")
    return status, error[: 2 * protocol.MAX_ERROR_CHARS], dropped, restart[:200]
