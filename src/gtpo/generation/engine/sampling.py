"""Token sampling on the device: temperature, top-p, the sampled token's log-prob, and a counter-based RNG.

Why a counter-based RNG instead of ``torch.multinomial`` with a generator: the engine batches whichever
sequences are ready, so the rows of a decode step change from run to run and from step to step. A shared
generator would hand a sequence different random numbers depending on its neighbours. Here the uniform that
picks the token at absolute position ``t`` of sequence ``key`` is a hash of ``(seed, key, t)``: a sequence's
samples depend only on its own logits, not on how it was scheduled, and the computation is pure tensor
arithmetic with no host synchronization (so it can sit inside a CUDA graph).

Sampling is by inverse CDF: the token is the first whose cumulative probability exceeds the uniform. With
top-p the distribution is first cut to the smallest set of most likely tokens whose mass reaches ``top_p``
and renormalized. The returned log-prob is always under the tempered, unfiltered distribution
``log_softmax(logits / temperature)`` (the trainer recomputes exactly that); temperature 0 is greedy and its
log-prob is under the untempered distribution.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # < 2**27, so a 32-bit value times it stays well inside int64


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (int64 tensors holding values in [0, 2**32)); every product fits in int64."""
    x = ((x >> 16) ^ x) * _MIX & _MASK32
    x = ((x >> 16) ^ x) * _MIX & _MASK32
    return (x >> 16) ^ x


def counter_uniform(seeds: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Uniforms in [0, 1 - 2**-23] from ``(seed, key, position)`` int64 tensors of one shape; float32.

    24 random bits: the smallest probability step is 6e-8, far below anything sampling at temperature ~1
    can tell apart.
    """
    return position_uniform(sequence_stream(seeds, keys), positions)


def sequence_stream(seeds: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The part of the counter hash that depends on ``(seed, key)`` alone: one value per sequence, computed once
    when it gets a slot, so that a decode step hashes only the position (a third of the integer operations)."""
    return _hash32(_hash32((seeds & _MASK32) ^ 0x9E3779B9) ^ (keys & _MASK32))


def position_uniform(streams: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``counter_uniform`` from the sequences' ``sequence_stream`` values and the positions."""
    h = _hash32(streams ^ (positions & _MASK32))
    return (h >> 8).to(torch.float32).clamp(max=2**24 - 2) * (1.0 / 2**24)


def sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    use_top_p: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of ``logits`` [R, V]; return (tokens [R] int64, log-probs [R] float32).

    ``temperature``, ``top_p`` and ``uniforms`` are [R] float32 (per-row settings; temperature 0 = greedy).
    ``use_top_p`` is a Python flag so that the sort over the vocabulary is only paid when some row needs it
    (it must be static for CUDA-graph capture).
    """
    logits = logits.float()
    greedy = temperature <= 0
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    logp = torch.log_softmax(scaled, dim=-1)
    probs = logp.exp()
    if use_top_p:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p[:, None]
        cdf = (sorted_probs * keep).cumsum(-1)
        index = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)
        index = index.clamp(max=probs.shape[-1] - 1)
        sampled = order.gather(-1, index).squeeze(-1)
    else:
        cdf = probs.cumsum(-1)
        sampled = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).squeeze(-1)
        sampled = sampled.clamp(max=probs.shape[-1] - 1)
    tokens = torch.where(greedy, logits.argmax(dim=-1), sampled)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
