"""Kernel mechanisms that confine a session process: namespaces, mounts, rlimits, a dropped uid.

Runs in the processes the zygote forks (the pool itself only borrows ``sandbox_env``), and uses nothing but
the standard library and ``ctypes`` (Python 3.11 has no ``os.unshare``/``mount``). Everything needs root
(CAP_SYS_ADMIN); when a step is refused, the caller records it and the pool warns loudly: a missing
mechanism is never silent.

What this is not: a seccomp filter or a virtual machine. A kernel exploit escapes it; see docs/sandbox.md
for what is and is not protected.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

WORKDIR = "/tmp"
"""The session's working directory when it has a mount namespace: a private tmpfs mounted over /tmp."""

THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Keeps numpy's BLAS single-threaded: the zygote must not hold threads when it forks, and a session's
threads count against its process limit."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def sandbox_env(workdir: str) -> dict[str, str]:
    """The whole environment of sandboxed code: nothing is inherited, so no secret can leak through it."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
        **THREAD_ENV,
    }


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), f"setns({nstype:#x})")


def new_pid_namespace_for_children() -> bool:
    """Make the caller's next child PID 1 of a new PID namespace; False if refused (not root).

    The caller itself stays where it is; it must ``setns`` back to its own namespace after the fork, so
    that each session gets a namespace of its own with a single fork.
    """
    try:
        unshare(CLONE_NEWPID)
        return True
    except OSError:
        return False


def enter_namespaces(network: bool) -> dict[str, bool]:
    """Move the caller into new mount, IPC and (unless ``network``) network namespaces; say which it got.

    A new network namespace has only a loopback interface, and it is down: no route exists, not even to
    the host's 127.0.0.1. A new IPC namespace keeps SysV shared memory and message queues private, and
    they vanish with the session (on the host they would outlive it).
    """
    wanted = {"filesystem": CLONE_NEWNS, "ipc": CLONE_NEWIPC}
    if not network:
        wanted["network"] = CLONE_NEWNET
    try:
        unshare(sum(wanted.values()))
        return dict.fromkeys(wanted, True)
    except OSError:
        pass
    granted = {}
    for name, flag in wanted.items():
        try:
            unshare(flag)
            granted[name] = True
        except OSError:
            granted[name] = False
    return granted


def make_fallback_workdir(path: str, uid: int | None, gid: int | None) -> str:
    """Create the host directory a session without a mount namespace works in (the pool chose the path,
    so that it can remove it whatever happens to the session)."""
    os.mkdir(path, 0o700)  # fails if anything is already there: no symlink games
    if uid is not None and gid is not None:
        os.chown(path, uid, gid)
    return path


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def interpreter_dirs() -> list[str]:
    """Directories the session's Python reads from: its prefixes and import path (outermost only)."""
    paths = (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path)
    candidates = {os.path.realpath(p) for p in paths if p and os.path.isdir(p)}
    outermost: list[str] = []
    for path in sorted(candidates, key=len):
        if not any(_inside(path, kept) for kept in outermost):
            outermost.append(path)
    return outermost


def _untraversable_ancestor(path: str) -> str | None:
    """The topmost ancestor of ``path`` that other users cannot enter (no o+x), e.g. a 0700 /root."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & 0o001:
            return current
    return None


def _cover(path: str, options: str, keep: list[str], read_only: bool) -> None:
    """Mount a fresh tmpfs over ``path``, then bind the ``keep`` directories back in place, read-only."""
    # Handles opened before the mount keep the directories reachable once the tmpfs hides their paths.
    handles = [os.open(k, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for k in keep]
    flags = MS_NOSUID | MS_NODEV | (MS_NOEXEC if read_only else 0)
    mount("tmpfs", path, "tmpfs", flags, options)
    for kept, handle in zip(keep, handles, strict=True):
        os.makedirs(kept, 0o755, exist_ok=True)
        mount(f"/proc/self/fd/{handle}", kept, None, MS_BIND | MS_REC)
        mount(None, kept, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(handle)
    if read_only:
        mount(None, path, None, MS_REMOUNT | MS_RDONLY | flags)


def confine_filesystem(uid: int, gid: int, workdir_mb: int, hidden_paths: list[str], own_pid_ns: bool) -> list[str]:
    """Inside a fresh mount namespace (as root): private tmpfs at /tmp, read-only /, fresh /proc.

    ``hidden_paths``, /dev/shm (a world-writable mount of its own) and any directory the sandbox uid could
    not enter on the way to the interpreter (such as a 0700 /root holding a pyenv install) are covered by
    an empty read-only tmpfs. The interpreter's own directories under a covered path, /tmp included, are
    bound back read-only: the session sees its Python and nothing else there. A hidden path inside those
    directories (a package's data folder: hidden tests) is covered on top of the bind. Returns problems (empty when
    everything was applied). Mounts are made private first, so nothing propagates to the host.
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    keep = interpreter_dirs()
    workdir_options = f"size={workdir_mb}m,mode=0700,uid={uid},gid={gid}"
    _cover(WORKDIR, workdir_options, [k for k in keep if _inside(k, WORKDIR)], read_only=False)
    problems = []
    if own_pid_ns:  # a proc mounted from inside the new PID namespace lists only the session's processes
        try:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError as e:
            problems.append(f"fresh /proc: {e}")
    blocking = [a for a in map(_untraversable_ancestor, keep) if a]
    covered = [WORKDIR]
    for path in sorted({os.path.realpath(p) for p in ("/dev/shm", *hidden_paths, *blocking)}, key=len):
        kept_around = any(_inside(path, k) for k in keep)  # visible again through a bind of the interpreter
        if not os.path.isdir(path) or (any(_inside(path, c) for c in covered) and not kept_around):
            continue
        if path in keep:
            problems.append(f"not hiding {path}: the Python interpreter lives there")
            continue
        try:
            _cover(path, "size=64k,mode=0755", [k for k in keep if _inside(k, path)], read_only=True)
            covered.append(path)
        except OSError as e:
            problems.append(f"hide {path}: {e}")
    try:  # per-mount read-only flag of / in this namespace only; the host's / stays writable
        mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    except OSError as e:
        problems.append(f"read-only /: {e} (world-writable host directories such as /var/tmp stay writable)")
    return problems


def apply_rlimits(limits: dict) -> None:
    """Set the session's hard limits (an unprivileged process can lower them, never raise them).

    RLIMIT_NPROC counts the tasks (processes and threads) of the *real uid*, which is why each session
    gets a uid of its own; as root it would not be enforced at all.
    """
    mb = 1024 * 1024
    cpu_hard = math.ceil(limits["session_wall_time_s"])
    for name, value in (
        ("RLIMIT_AS", limits["memory_mb"] * mb),
        ("RLIMIT_CPU", cpu_hard),
        ("RLIMIT_NPROC", limits["max_processes"]),
        ("RLIMIT_FSIZE", limits["max_file_size_mb"] * mb),
        ("RLIMIT_NOFILE", limits["max_open_files"]),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))


def set_cell_cpu_limit(cpu_time_s: float | None) -> None:
    """Soft RLIMIT_CPU = CPU used so far + this cell's allowance (SIGXCPU when passed); None restores it."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if cpu_time_s is None:
        soft = hard
    else:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = min(hard, math.ceil(usage.ru_utime + usage.ru_stime + cpu_time_s))
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def drop_privileges(uid: int, gid: int) -> None:
    """Become an unprivileged uid/gid for good: all capabilities go, setuid binaries stop working."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
