"""Sandbox throughput and latency: SandboxPool against a fresh ``python -c`` subprocess per call.

Measured in the same run, on the same machine, for a trivial cell (``print(1+1)``) and a small sympy call
(``sympy.factorint(2**32+1)``). Pool modes: one session running cells back to back (what a trajectory does),
``run_batch`` over several sessions (what a rollout step does), and ``run_once`` (a fresh session per call,
which pays a fork from the zygote). The baseline starts an interpreter per call, importing what the cell
needs. Prints executions per second, p50/p99 latency and the pool/baseline ratio.

    python benchmarks/sandbox.py [--calls 300] [--baseline-calls 30]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable

from gtpo.sandbox import SandboxPool

WORKLOADS = {
    "trivial": "print(1+1)",
    "sympy": "import sympy\nprint(sympy.factorint(2**32+1))",
}


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def measure(call: Callable[[], object], n: int) -> dict[str, float]:
    """Run ``call`` n times in sequence; executions per second and latency percentiles in ms."""
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    latencies.sort()
    return {
        "per_s": n / total,
        "p50_ms": 1e3 * percentile(latencies, 0.5),
        "p99_ms": 1e3 * percentile(latencies, 0.99),
    }


def measure_batch(pool: SandboxPool, code: str, n: int) -> dict[str, float]:
    """Throughput of run_batch with 2 x max_workers sessions, one cell per session per batch."""
    sessions = [pool.open_session() for _ in range(2 * pool.max_workers)]
    rounds = max(1, n // len(sessions))
    pool.run_batch([(s, code) for s in sessions])  # start the session processes outside the timing
    start = time.perf_counter()
    for _ in range(rounds):
        for result in pool.run_batch([(s, code) for s in sessions]):
            checked(result.status)
    total = time.perf_counter() - start
    for s in sessions:
        pool.close_session(s)
    return {"per_s": rounds * len(sessions) / total}  # no per-call latency: calls overlap


def checked(result_status: str) -> None:
    if result_status != "ok":
        raise RuntimeError(f"benchmark cell failed with status {result_status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per pool mode")
    parser.add_argument("--baseline-calls", type=int, default=30, help="calls per subprocess baseline")
    args = parser.parse_args()

    t0 = time.perf_counter()
    pool = SandboxPool()
    startup_s = time.perf_counter() - t0
    print(f"cpu cores: {os.cpu_count()}, max_workers: {pool.max_workers}, pool startup: {startup_s:.2f} s")
    print(f"isolation: {pool.isolation}")
    header = f"{'workload':<8} {'mode':<22} {'exec/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    with pool:
        for name, code in WORKLOADS.items():
            session = pool.open_session()
            pool.run(session, code)  # first cell forks the session process: not part of the steady state
            stats = {
                "pool session": measure(lambda s=session, c=code: checked(pool.run(s, c).status), args.calls),
                "pool run_batch": measure_batch(pool, code, args.calls),
                "pool run_once": measure(lambda c=code: checked(pool.run_once(c).status), args.calls // 3),
                "subprocess python -c": measure(
                    lambda c=code: subprocess.run([sys.executable, "-c", c], check=True, capture_output=True),
                    args.baseline_calls,
                ),
            }
            pool.close_session(session)
            for mode, s in stats.items():
                p50, p99 = (f"{s[k]:>8.2f}" if k in s else f"{'-':>8}" for k in ("p50_ms", "p99_ms"))
                print(f"{name:<8} {mode:<22} {s['per_s']:>9.1f} {p50} {p99}")
            rows.append((name, stats))
    print()
    for name, stats in rows:
        base = stats["subprocess python -c"]["per_s"]
        ratios = ", ".join(f"{mode} {s['per_s'] / base:.1f}x" for mode, s in stats.items() if mode.startswith("pool"))
        print(f"{name}: exec/s ratio vs subprocess baseline: {ratios}")


if __name__ == "__main__":
    main()
