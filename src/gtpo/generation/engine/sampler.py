"""``EngineSampler``: the generation engine behind the ``Sampler`` interface, and its ``TurnStream`` for rollouts.

It is a ``StreamingSampler`` (``gtpo.generation.protocol``): ``gtpo.rollout.episode`` streams trajectories through
``turn_stream()``, the engine itself; everything else that samples (evaluation with a batch call, benchmarks, the
tiny model's rebuild) uses ``generate`` like any sampler.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from gtpo.generation.engine.engine import EngineOptions, GenerationEngine
from gtpo.generation.protocol import Sample


class EngineSampler:
    """A ``StreamingSampler`` over a ``GenerationEngine`` built from (a copy of) ``policy``."""

    def __init__(self, policy: torch.nn.Module, tokenizer: Any, options: EngineOptions | None = None) -> None:
        self.engine = GenerationEngine(policy, tokenizer, options)
        self.tokenizer = tokenizer

    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        temperature: float,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_at_code_block: bool = True,
    ) -> list[Sample]:
        """One turn for each context (row ``i`` is engine key ``i``); rows with no token budget get none."""
        samples: list[Sample | None] = [None] * len(contexts)
        try:
            for row, (context, cap) in enumerate(zip(contexts, max_new_tokens, strict=True)):
                if cap <= 0:
                    samples[row] = Sample([], [], "length")
                    continue
                self.engine.submit(
                    row,
                    list(context),
                    cap,
                    temperature=temperature,
                    top_p=top_p,
                    seed=seed or 0,
                    stop_at_code_block=stop_at_code_block,
                )
            while self.engine.has_work():
                for row, sample in self.engine.step():
                    samples[row] = sample
                    self.engine.release(row)
        finally:
            self.engine.reset()
        return samples  # type: ignore[return-value]

    def turn_stream(self) -> GenerationEngine:
        """The engine: turns submitted one at a time, returned as each one ends."""
        return self.engine

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.engine.sync_weights(named_tensors)
