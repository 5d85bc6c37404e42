"""What a sampler is to the rest of gtpo: ``Sample``, the ``Sampler`` protocol, and the streaming protocols.

Every backend (``HFSampler``, ``EngineSampler``, ``VLLMSampler``) is a ``Sampler``: one turn for each of a batch
of token contexts. A ``StreamingSampler`` also hands out a ``TurnStream``: turns submitted one at a time under a
trajectory's key and returned as each one ends, so that ``gtpo.rollout.episode`` moves every trajectory on its
own (``gtpo.generation.engine`` is the one that does). The rollout and the evaluation decide by
``isinstance(sampler, StreamingSampler)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

SampleFinish = Literal["stop", "eos", "length"]
"""Why a turn ended: a closed python block ("stop": the environment runs the code), EOS, or its token cap."""


@dataclass
class Sample:
    """One continuation: sampled ids, their log-probs under ``logits / temperature``, and why it ended."""

    token_ids: list[int]
    logprobs: list[float]
    finish: SampleFinish


class EngineFailed(RuntimeError):
    """An out-of-process or third-party generation engine (vLLM) failed: the run cannot go on with it, and the
    error says so in one line instead of the engine's traceback."""


class Sampler(Protocol):
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
        """One turn for each context, ended by ``gtpo.generation.stop``'s rule (``stop_at_code_block`` False: at
        EOS or the cap only)."""
        ...


class TurnStream(Protocol):
    """Turns in, one at a time under a sequence's key; ended turns out, as each one ends."""

    @property
    def device(self) -> torch.device:
        """Where it generates (the rollout's "auto" schedule is asap on CUDA, deterministic elsewhere)."""
        ...

    @property
    def clock(self) -> int:
        """Steps so far: a time that depends on the sampled tokens only."""
        ...

    def has_work(self) -> bool: ...

    def submit(
        self,
        key: int,
        tokens: list[int],
        max_new_tokens: int,
        *,
        temperature: float,
        top_p: float = 1.0,
        seed: int = 0,
        stop_at_code_block: bool = True,
    ) -> None:
        """Queue one turn of sequence ``key``: continue ``tokens`` by up to ``max_new_tokens`` tokens."""
        ...

    def step(self) -> list[tuple[int, Sample]]:
        """Advance; return the (key, turn) of the turns that ended."""
        ...

    def release(self, key: int) -> None:
        """Sequence ``key`` is finished: free what it holds."""
        ...

    def reset(self) -> None:
        """Drop every turn and held sequence (the end of a rollout, also one that failed midway)."""
        ...


@runtime_checkable
class StreamingSampler(Sampler, Protocol):
    """A sampler that also streams trajectories through its ``TurnStream``."""

    def turn_stream(self) -> TurnStream: ...
