"""A resumable, seeded stream of training problems: each epoch is a fresh permutation.

Its whole state is two integers, saved in every checkpoint, so a resumed run sees exactly the problems an
uninterrupted run would have seen: no step is repeated or skipped.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gtpo.types import Problem


class ProblemStream:
    """Yields problems in a seeded order, epoch after epoch."""

    def __init__(self, problems: Sequence[Problem], seed: int) -> None:
        if not problems:
            raise ValueError("data.train: the training set is empty; check the path and the field names")
        self._problems = list(problems)
        self._seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self._problems)))
        random.Random(self._seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[Problem]:
        """The next ``n`` problems, crossing into the next epoch when this one runs out."""
        batch = []
        while len(batch) < n:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            batch.append(self._problems[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._permutation(self.epoch)
