"""A confined, fast, stateful Python executor for the model's code cells (untrusted code).

``SandboxPool`` keeps one notebook-like session per trajectory, forked in milliseconds from a zygote that
has already imported math, sympy and numpy. Each session runs as its own unprivileged uid, in its own
mount, PID and network namespaces, with a private tmpfs working directory, a read-only root, a cleared
environment and rlimits on time, memory, processes, file size and descriptors. A cell's misbehaviour
comes back as a status ("ok", "error", "timeout", "memory", "killed"), never as an exception.

It is not a VM or a seccomp jail: a kernel exploit escapes it, and world-readable host files stay
readable. The full list of what is and is not protected: ``docs/sandbox.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gtpo.sandbox.launcher import SandboxError
    from gtpo.sandbox.limits import SandboxLimits
    from gtpo.sandbox.pool import SandboxPool
    from gtpo.types import ExecResult

__all__ = ["ExecResult", "SandboxError", "SandboxLimits", "SandboxPool"]

# Imported on first use, not here: the zygote imports this package too, and every module it loads is in
# every session. The pool side pulls in logging, asyncio and thread pools; logging alone registers fork
# handlers in which a cell's time-limit signal would be swallowed ("Exception ignored").
_HOMES = {
    "ExecResult": "gtpo.types",
    "SandboxError": "gtpo.sandbox.launcher",
    "SandboxLimits": "gtpo.sandbox.limits",
    "SandboxPool": "gtpo.sandbox.pool",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'gtpo.sandbox' has no attribute {name!r}")
