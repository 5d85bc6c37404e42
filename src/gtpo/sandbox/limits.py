"""The sandbox's resource limits: one frozen dataclass, validated where it is built.

What each limit does and how it is enforced is in ``docs/sandbox.md``; the field docstrings here say what
the number means. This module only describes limits: it enforces nothing and imports nothing heavy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

MIN_MEMORY_MB = 256
"""The preloaded interpreter (numpy + sympy) alone maps ~150 MB of address space, so less cannot work."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-call and per-session limits of ``SandboxPool``; the defaults suit a math-solving model."""

    wall_time_s: float = 5.0
    """Wall-clock limit of one cell. Past it the cell gets a TimeoutError; if it is stuck in C code the
    session process is killed 0.5 s later and restarted (its names are lost)."""
    cpu_time_s: float = 5.0
    """CPU-time limit of one cell (all its threads), rounded up to whole seconds (RLIMIT_CPU's unit)."""
    memory_mb: int = 2048
    """Address-space limit of a session process (RLIMIT_AS), the preloaded modules included."""
    max_processes: int = 8
    """Processes plus threads a session may hold at once, its own main thread included (RLIMIT_NPROC
    on a uid of its own). Memory is capped per process, so it also bounds a session's memory."""
    max_output_chars: int = 2000
    """Characters of stdout + stderr the model reads; the rest is replaced by a visible marker."""
    max_file_size_mb: int = 16
    """Largest file a cell may write (RLIMIT_FSIZE)."""
    workdir_mb: int = 64
    """Size of the session's private working directory (a tmpfs at /tmp): its whole disk quota."""
    max_open_files: int = 64
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    session_wall_time_s: float = 60.0
    """Total cell wall time of one session; a cell never runs past what is left. The session's total
    CPU time is capped at the same number of seconds."""
    network: bool = False
    """Allow network access. False puts each session in an empty network namespace (no interfaces up)."""
    hidden_paths: tuple[str, ...] = ("/root", "/home")
    """Host directories masked by an empty read-only tmpfs inside the sandbox; the interpreter's own
    directories inside them (e.g. a pyenv under /root) are bound back, read-only. A directory inside the
    interpreter's own (e.g. a package's data folder) is masked too; the interpreter's root itself is not."""

    def __post_init__(self) -> None:
        positive = ("wall_time_s", "cpu_time_s", "session_wall_time_s")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"SandboxLimits.{name} must be a finite number > 0 seconds, got {value!r}")
        counts = {
            "memory_mb": MIN_MEMORY_MB,
            "max_processes": 1,
            "max_output_chars": 1,
            "max_file_size_mb": 1,
            "workdir_mb": 1,
            "max_open_files": 16,  # the interpreter itself holds a handful of descriptors
        }
        for name, low in counts.items():
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ValueError(f"SandboxLimits.{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.network, bool):
            raise ValueError(f"SandboxLimits.network must be True or False, got {self.network!r}")
        if not isinstance(self.hidden_paths, tuple) or not all(
            isinstance(p, str) and p.startswith("/") for p in self.hidden_paths
        ):
            raise ValueError(f"SandboxLimits.hidden_paths must be a tuple of absolute paths, got {self.hidden_paths!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy, as sent to the zygote (a separate interpreter, configured through argv)."""
        data = asdict(self)
        data["hidden_paths"] = list(self.hidden_paths)
        return data
