"""The progress line of ``gtpo eval``: trajectories done, time so far and time left, per benchmark."""

from __future__ import annotations

import sys


class EvalProgress:
    """The progress line of one benchmark on stderr (tqdm: trajectories done of all, time so far, time left).

    ``evaluate_problems`` reports whole chunks (64 problems with the engine: minutes with a real model on a CPU)
    and, through the rollout, each trajectory as it ends; chunk ends set the count exactly."""

    def __init__(self, name: str, problems: int, k: int, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.k = k
        self.total = problems * k
        self.done = 0
        """Trajectories finished so far."""
        self._problems = 0
        self._bar = tqdm(total=self.total, desc=name, unit="trajectory", disable=not enabled, file=sys.stderr)

    def __enter__(self) -> EvalProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def _set(self, done: int) -> None:
        done = min(done, self.total)
        if done != self.done:
            self._bar.update(done - self.done)
            self.done = done

    def problems_done(self, n: int) -> None:
        """``evaluate_problems``'s ``on_progress``: a chunk of ``n`` problems (``n * k`` trajectories) ended."""
        self._problems += n
        self._set(self._problems * self.k)

    def trajectory_done(self) -> None:
        self._set(self.done + 1)
