"""The worker side: a fork server (zygote) and the confined session processes it forks.

Process tree::

    pool (the trainer's process)
     └─ zygote: started once with a cleared environment, imports math/sympy/numpy, then only forks
         └─ session (one per trajectory): PID 1 of its own PID namespace; enters new mount and network
            namespaces, confines itself, drops to a uid of its own, then runs cells

Forking the zygote costs milliseconds where a fresh interpreter importing sympy costs most of a second.
Nothing outlives the pool: the zygote exits when the pool's end of its control socket closes, a session
gets SIGKILL when the zygote dies (parent-death signal), and the death of a namespace's PID 1 kills every
process in it. Standard library only; this module is not the pool's API.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import json
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from typing import Any

from gtpo.sandbox import isolation, protocol
from gtpo.sandbox.cell import CellRunner

SESSION_FD = 3
"""Descriptor of the session's socket to the pool (cells in, replies out)."""
OUTPUT_BACKUP_FD = 4
"""A close-on-exec copy of the output memfd, to restore descriptors 1 and 2 before each cell."""
THREAD_EXIT_GRACE_S = 0.2
"""A joined thread's OS thread may take a moment to vanish; only threads still there after this count."""


def main(config_json: str) -> None:
    """Zygote entry point: ``config_json`` holds the limits, the preload list and the control descriptor."""
    config = json.loads(config_json)
    # No parent-death signal here: it would fire when the *thread* that started us exits. The zygote waits
    # on its control socket instead, and the pool's death closes that socket.
    control = socket.socket(fileno=config["control_fd"])
    failed = {}
    for name in config["preload"]:
        try:
            importlib.import_module(name)
        except Exception as e:  # a missing optional module is reported, not fatal
            failed[name] = f"{type(e).__name__}: {e}"
    gc.collect()
    gc.freeze()  # keeps the collector from touching (and copying) the preloaded objects in every child
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # sessions are reaped by the kernel
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    threads = len(os.listdir("/proc/self/task"))
    control.send(json.dumps({"ready": True, "failed": failed, "threads": threads}).encode())
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 65536, 2)
        except InterruptedError:
            continue
        if not message:  # the pool closed its end
            os._exit(0)
        try:
            reply = _spawn(control, own_pid_ns, json.loads(message), fds, config["limits"])
        except OSError as e:  # e.g. fork refused by a host process limit: the live sessions must not die
            reply = {"error": f"could not fork a session process: {e}"}
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        control.send(json.dumps(reply).encode())


def _spawn(control: socket.socket, own_pid_ns: int, request: dict, fds: list[int], limits: dict) -> dict:
    """Fork one session process (PID 1 of a new PID namespace when allowed); return its host pid."""
    session_fd, output_fd = fds
    new_pid_ns = isolation.new_pid_namespace_for_children()
    try:
        pid = os.fork()
    except OSError:
        if new_pid_ns:
            isolation.setns(own_pid_ns, isolation.CLONE_NEWPID)
        raise
    if pid == 0:
        try:
            control.close()
            os.close(own_pid_ns)
            _session(session_fd, output_fd, request["uid"], request["fallback_workdir"], limits)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)
    if new_pid_ns:  # back to our own namespace, so that the next session gets a new one of its own
        isolation.setns(own_pid_ns, isolation.CLONE_NEWPID)
    return {"session_pid": pid}


def _install_descriptors(session_fd: int, output_fd: int) -> None:
    """0: /dev/null, 1 and 2: the output memfd, 3: the pool socket, 4: memfd backup; nothing else open."""
    # Move both out of the way first: either may sit on a descriptor number in 0..4.
    sock_tmp = fcntl.fcntl(session_fd, fcntl.F_DUPFD_CLOEXEC, 10)
    output_tmp = fcntl.fcntl(output_fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(session_fd)
    os.close(output_fd)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(output_tmp, 1)
    os.dup2(output_tmp, 2)
    os.dup2(sock_tmp, SESSION_FD, inheritable=False)  # a program the cell execs must not get the socket
    os.dup2(output_tmp, OUTPUT_BACKUP_FD, inheritable=False)
    os.closerange(OUTPUT_BACKUP_FD + 1, os.sysconf("SC_OPEN_MAX"))


def _session(session_fd: int, output_fd: int, uid: int | None, fallback_path: str, limits: dict[str, Any]) -> None:
    """A session process's whole life: confine itself (as root), drop privileges, serve cells."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the cell's subprocesses must be waitable
    os.setsid()  # its own process group: a kill(0, ...) by the cell reaches only the session
    report, workdir, fallback_dir = _confine(uid, fallback_path, limits)
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update(isolation.sandbox_env(workdir))
    _install_descriptors(session_fd, output_fd)
    isolation.apply_rlimits(limits)
    report["privileges"] = uid is not None
    if uid is not None:
        try:
            isolation.drop_privileges(uid, uid)
            isolation.prctl(isolation.PR_SET_DUMPABLE, 1)  # /proc/self stays readable by the session itself
        except OSError as e:  # e.g. root of a user namespace in which the uid is not mapped
            report["privileges"] = False
            report["problems"].append(f"drop privileges to uid {uid}: {e}")
    isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing
    os.register_at_fork(after_in_child=lambda: _close_quietly(SESSION_FD))
    sys.argv = [""]
    sock = socket.socket(fileno=SESSION_FD)
    max_output_bytes = protocol.output_cap_bytes(limits["max_output_chars"])
    runner = CellRunner(limits["memory_mb"], max_output_bytes, workdir, OUTPUT_BACKUP_FD)
    try:
        protocol.send_message(sock, {"ready": True, "isolation": report, "fallback_workdir": fallback_dir})
    except protocol.ProtocolError:  # the pool gave up on us (e.g. our zygote died): leave nothing behind
        if fallback_dir:
            shutil.rmtree(fallback_dir, ignore_errors=True)
        os._exit(0)
    _serve(sock, runner, report["processes"])


def _confine(uid: int | None, fallback_path: str, limits: dict[str, Any]) -> tuple[dict[str, Any], str, str | None]:
    """Enter mount/network namespaces and confine the filesystem; return (report, workdir, fallback dir)."""
    pid_namespace = os.getpid() == 1
    report: dict[str, Any] = {**isolation.enter_namespaces(limits["network"]), "processes": pid_namespace}
    report["problems"] = []
    if report["filesystem"]:
        owner = os.getuid() if uid is None else uid
        size_mb, hidden = limits["workdir_mb"], limits["hidden_paths"]
        try:
            report["problems"] += isolation.confine_filesystem(owner, owner, size_mb, hidden, pid_namespace)
            return report, isolation.WORKDIR, None
        except OSError as e:
            report["filesystem"] = False
            report["problems"].append(f"filesystem: {e}")
    fallback_dir = isolation.make_fallback_workdir(fallback_path, uid, uid)
    return report, fallback_dir, fallback_dir


def _serve(sock: socket.socket, runner: CellRunner, pid_namespace: bool) -> None:
    """Run cells until the pool closes the socket; one reply per cell, from this process only."""
    my_pid = os.getpid()
    while True:
        try:
            request = protocol.recv_message(sock)
        except (protocol.ProtocolError, OSError):
            os._exit(0)  # the pool closed the session
        try:
            reply = runner.run(request["code"], request["wall_s"], request["cpu_s"])
        except BaseException as e:  # a failure of our own handling (e.g. memory): still a reply
            status = "memory" if isinstance(e, MemoryError) else "error"
            reply = {"status": status, "error": f"{type(e).__name__}: {e}\n", "dropped_chars": 0}
        if os.getpid() != my_pid:  # a child the cell forked got out of the cell: it must not reply
            os._exit(0)
        reply["restart"] = _end_of_cell_cleanup(pid_namespace)
        protocol.send_message(sock, reply)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _end_of_cell_cleanup(pid_namespace: bool) -> str:
    """No process outlives its cell; threads cannot be killed, so leftover threads mean a restart.

    Returns why the session must restart ("" if it need not).
    """
    if pid_namespace:  # as PID 1, kill(-1) reaches every other process of the namespace, and only those
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
            while True:
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:
                    break
    else:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
    deadline = time.monotonic() + THREAD_EXIT_GRACE_S
    while (threads := _thread_count()) > 1 and time.monotonic() < deadline:
        time.sleep(0.002)
    return f"the cell left {threads - 1} thread(s) running" if threads > 1 else ""


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1
