"""Pool side of the zygote: start it, ask it for session processes, start it again if it died.

The zygote is a fresh interpreter (``python -I``, cleared environment, no inherited descriptors but its
control socket), never a fork of the trainer: the trainer holds threads, CUDA state and secrets in memory
and environment, none of which a sandbox may inherit. Requests are serialized by a lock; a request that
finds the zygote dead starts a new one once before giving up with ``SandboxError``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from time import monotonic

import gtpo
from gtpo.sandbox import isolation, protocol
from gtpo.sandbox.limits import SandboxLimits
from gtpo.sandbox.session import SessionProcess

START_TIMEOUT_S = 60.0
"""Generous: the zygote imports sympy and numpy, which takes seconds on a loaded machine."""
_BOOTSTRAP = (  # the pool's own gtpo first, unless it is already importable (installed in site-packages)
    "import sys; sys.argv[1] in sys.path or sys.path.insert(0, sys.argv[1]); "
    "import gtpo.sandbox.zygote as z; z.main(sys.argv[2])"
)


class SandboxError(RuntimeError):
    """The sandbox machinery itself failed (not the model's code): the zygote cannot start or fork."""


class _ZygoteDied(Exception):
    """The zygote stopped answering in the middle of a request."""


class Zygote:
    """Handle on the fork-server process; ``spawn`` returns a ready, confined ``SessionProcess``."""

    def __init__(self, limits: SandboxLimits, preload: tuple[str, ...]) -> None:
        self._limits = limits
        self._preload = preload
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._closed = False
        self.generation = 0
        """Counts zygote starts: a session process forked by an earlier zygote died with it."""
        self.preload_failures: dict[str, str] = {}

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        with self._lock:
            self._start()

    def check(self) -> int:
        """Restart the zygote if it died; return the current generation. Lock-free while it lives."""
        process = self._process
        if process is not None and process.poll() is None:
            return self.generation
        with self._lock:
            if self._closed:
                raise SandboxError("the SandboxPool is closed")
            if self._process is None or self._process.poll() is not None:
                self._start()
            return self.generation

    def _start(self) -> None:
        self._stop()
        self.generation += 1
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = {
            "limits": self._limits.to_dict(),
            "preload": list(self._preload),
            "control_fd": child.fileno(),
        }
        src_root = str(Path(gtpo.__file__).resolve().parent.parent)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOTSTRAP, src_root, json.dumps(config)],
                env=isolation.sandbox_env("/tmp"),
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,  # a Ctrl-C meant for the trainer does not reach it
            )
        finally:
            child.close()
        self._control = parent
        try:
            hello = self._receive(START_TIMEOUT_S)
        except SandboxError:
            self._stop()
            raise
        self.preload_failures = hello["failed"]
        if hello["threads"] != 1:
            self._stop()
            raise SandboxError(
                f"the sandbox zygote runs {hello['threads']} threads after its imports and cannot fork"
                " safely; remove the module that starts them from SandboxPool(preload=...)"
            )

    def _receive(self, timeout_s: float) -> dict:
        assert self._control is not None
        self._control.settimeout(timeout_s)
        try:
            data = self._control.recv(65536)
        except OSError as e:
            raise SandboxError(f"no answer from the sandbox zygote: {e}") from e
        if not data:
            raise SandboxError("the sandbox zygote exited (see its stderr)")
        return json.loads(data)

    def spawn(self, uid: int | None) -> SessionProcess:
        """Fork a session process running as ``uid`` (None: as ourselves, when not root).

        A zygote found dead is restarted and asked once more, with new descriptors: the old ones may have
        reached a child of the dead zygote, and no two session processes may share a socket.
        """
        for attempt in range(2):
            try:
                return self._spawn_once(uid)
            except _ZygoteDied as e:
                if attempt:
                    raise SandboxError(f"the sandbox zygote died twice in a row (see its stderr): {e}") from e
        raise AssertionError("unreachable")

    def _spawn_once(self, uid: int | None) -> SessionProcess:
        # Used only if the session gets no mount namespace. Chosen here, so this side can remove it.
        fallback_workdir = os.path.join(tempfile.gettempdir(), f"gtpo-sandbox-{secrets.token_hex(8)}")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        output_fd = os.memfd_create("gtpo-sandbox-output", os.MFD_CLOEXEC)
        # O_APPEND on the shared file description: after the pool truncates it, writes start at 0 again.
        fcntl.fcntl(output_fd, fcntl.F_SETFL, fcntl.fcntl(output_fd, fcntl.F_GETFL) | os.O_APPEND)
        try:
            with self._lock:
                request = {"uid": uid, "fallback_workdir": fallback_workdir}
                reply, generation = self._ask(request, [child.fileno(), output_fd])
            child.close()
            if "error" in reply:
                raise SandboxError(reply["error"])
            pid = reply["session_pid"]
            try:
                pidfd = os.pidfd_open(pid)
            except OSError as e:
                raise SandboxError(f"a sandbox session exited at once (see stderr): {e}") from e
            try:
                hello = protocol.recv_message(parent, monotonic() + START_TIMEOUT_S)
            except (protocol.ProtocolError, TimeoutError) as e:
                os.close(pidfd)
                raise SandboxError(f"a sandbox session failed to start (see stderr): {e}") from e
        except BaseException:
            child.close()
            parent.close()
            os.close(output_fd)
            shutil.rmtree(fallback_workdir, ignore_errors=True)
            raise
        used_workdir = fallback_workdir if hello["fallback_workdir"] else None
        return SessionProcess(parent, output_fd, pidfd, pid, hello["isolation"], uid, generation, used_workdir)

    def _ask(self, request: dict, fds: list[int]) -> tuple[dict, int]:
        """One request to the zygote, started first if needed; the caller holds the lock."""
        if self._closed:
            raise SandboxError("the SandboxPool is closed")
        if self._process is None or self._process.poll() is not None:
            self._start()
        assert self._control is not None
        try:
            socket.send_fds(self._control, [json.dumps(request).encode()], fds)
            return self._receive(START_TIMEOUT_S), self.generation
        except (OSError, SandboxError) as e:
            self._stop()
            raise _ZygoteDied(str(e)) from e

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop()
