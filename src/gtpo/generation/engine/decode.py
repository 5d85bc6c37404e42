"""Decoding: one step for every slot at once, entirely on the device, its CUDA-graph replay, and a chunk of steps.

A decode step feeds each live slot its last sampled token, writes that token's keys/values at its position,
samples the next token (``gtpo.generation.engine.sampling``), records it in a per-chunk buffer and advances the slot.
A slot stops being live when it samples EOS or reaches its token cap; the host learns this only at the end
of a chunk of steps (one copy of the chunk's buffers), which is also where it checks for a closed code
block. So there is no host synchronization per token, and a step's shapes depend only on (rows, key span),
which makes it capturable as a CUDA graph: the step's ~400 kernel launches become one. ``Decoder`` runs a
chunk of such steps over the live slots and hands the chunk's tokens to the host.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import numpy as np
import torch

from gtpo.generation.engine.attention import AttentionPlan, slots_index
from gtpo.generation.engine.sampling import position_uniform, sample_tokens

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``forward(ids [R, n], positions [R, n]) -> logits [R, V]`` of each row's last token, writing and reading the
slot cache as the attention plan says (``gtpo.generation.engine.compact``)."""


class DecodeState:
    """Per-slot decoding state on the device. Row ``s`` of every tensor belongs to cache slot ``s``."""

    def __init__(self, slots: int, chunk: int, max_len: int, eos_ids: Iterable[int], device: torch.device) -> None:
        long = {"dtype": torch.long, "device": device}
        self.tokens = torch.zeros(slots, **long)
        """The token each slot feeds next (its last sampled token, whose keys/values are not yet cached)."""
        self.pos = torch.zeros(slots, **long)
        """That token's absolute position."""
        self.alive = torch.zeros(slots, dtype=torch.bool, device=device)
        self.remaining = torch.zeros(slots, **long)
        """Tokens the slot may still sample in this turn."""
        self.stream = torch.zeros(slots, **long)
        """The slot's sequence's ``sampling.sequence_stream`` (its seed and key, hashed once)."""
        self.temperature = torch.ones(slots, dtype=torch.float32, device=device)
        self.top_p = torch.ones(slots, dtype=torch.float32, device=device)
        self.step = torch.zeros(1, **long)
        """Index of the current step within the chunk (the column the step records into)."""
        self.out_tokens = torch.zeros(slots, chunk, **long)
        self.out_logprobs = torch.zeros(slots, chunk, dtype=torch.float32, device=device)
        self.out_valid = torch.zeros(slots, chunk, dtype=torch.bool, device=device)
        self.eos = torch.tensor(sorted(eos_ids) or [-1], **long)
        self.row_ids = torch.arange(slots, **long)
        self.span = torch.arange(max_len, **long)

    def mutable(self) -> list[torch.Tensor]:
        """The tensors a step changes (saved and restored around CUDA-graph warm-up)."""
        return [self.tokens, self.pos, self.alive, self.remaining, self.step]


def decode_step(
    forward: Forward,
    plan: AttentionPlan,
    state: DecodeState,
    spare_slot: int,
    rows: int | slice | torch.Tensor,
    kv_len: int,
    use_top_p: bool,
) -> None:
    """Advance the chosen slots by one token; a dead one among them computes but writes nothing read later.

    ``rows``: an int R for slots 0..R-1 (a fixed shape for CUDA graphs; attention reads the cache in place),
    or the slots to decode (eager: only live slots cost compute): a slice when they are consecutive
    (attention reads a view of their caches), else their indices (attention gathers their caches).
    """
    sel = slice(0, rows) if isinstance(rows, int) else rows
    slots = state.row_ids[sel]
    alive, pos, tokens = state.alive[sel], state.pos[sel], state.tokens[sel]
    n = slots.shape[0]
    plan.write_slot = torch.where(alive, slots, spare_slot)
    plan.write_pos = torch.where(alive, pos, 0)
    plan.mask = (state.span[None, :kv_len] <= pos[:, None]).view(n, 1, 1, kv_len)
    plan.kv_len, plan.read_slots = kv_len, None if isinstance(rows, int) else rows
    logits = forward(tokens[:, None], pos[:, None])
    uniforms = position_uniform(state.stream[sel], pos + 1)
    new, logp = sample_tokens(logits, state.temperature[sel], state.top_p[sel], uniforms, use_top_p=use_top_p)
    cell = (slots, state.step.expand(n))
    state.out_tokens.index_put_(cell, new)
    state.out_logprobs.index_put_(cell, logp)
    state.out_valid.index_put_(cell, alive)
    live = alive.long()
    remaining = state.remaining[sel] - live
    ended = (new[:, None] == state.eos[None, :]).any(-1) | (remaining <= 0)
    state.tokens[sel] = torch.where(alive, new, tokens)
    state.pos[sel] = pos + live
    state.remaining[sel] = remaining
    state.alive[sel] = alive & ~ended
    state.step += 1


class GraphCache:
    """CUDA graphs of a step function, one per shape key, captured on first use and replayed after.

    All graphs share one memory pool: each graph's intermediates are recomputed on every replay and all its
    results land in tensors allocated outside the graphs, so no graph reads memory another one wrote.
    """

    def __init__(self, mutable: Callable[[], list[torch.Tensor]]) -> None:
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.pool = None
        self._mutable = mutable

    def run(self, key: tuple, step: Callable[[], None]) -> None:
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._capture(step)
        graph.replay()

    def _capture(self, step: Callable[[], None]) -> torch.cuda.CUDAGraph:
        saved = [t.clone() for t in self._mutable()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: library handles and workspaces exist before capture
                step()
        torch.cuda.current_stream().wait_stream(side)
        for tensor, copy in zip(self._mutable(), saved, strict=True):
            tensor.copy_(copy)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            step()
        self.pool = graph.pool()
        return graph


class Decoder:
    """Runs decode chunks: ``chunk`` steps of the live slots, then one copy of what they sampled to the host.

    With static shapes (what CUDA graphs need) a chunk decodes a bucketed prefix of the slots and a bucketed key
    span, each step a graph replay where graphs are on; otherwise (a CPU) only the live slots, eagerly, and it
    stops early once none is left.
    """

    def __init__(
        self,
        forward: Forward,
        plan: AttentionPlan,
        state: DecodeState,
        *,
        chunk: int,
        max_len: int,
        cuda_graphs: bool,
        static_shapes: bool | None,
    ) -> None:
        self.forward, self.plan, self.state = forward, plan, state
        self.slots = state.tokens.shape[0]
        self.spare_slot = self.slots  # padding and dead rows write here; nothing reads it
        self.chunk, self.max_len = chunk, max_len
        self.graphs = GraphCache(state.mutable) if cuda_graphs else None
        self.static_shapes = self.graphs is not None if static_shapes is None else static_shapes
        self.graph_error: str | None = None
        self.steps = 0
        """Decode steps so far."""

    def run_chunk(self, live: list[int], furthest: int, use_top_p: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode a chunk for the ``live`` slots (ascending), whose furthest position this chunk may reach is
        ``furthest``; return (tokens, log-probs, valid steps) per slot of rows 0..max(live), as host arrays. A
        slot's valid steps are a prefix of the chunk."""
        state = self.state
        top = live[-1] + 1  # slots 0..top-1 hold every live one
        state.step.zero_()
        if self.static_shapes:
            rows = min(bucket_rows(top), self.slots)
            span = min(bucket_span(furthest + 1), self.max_len)
            for _ in range(self.chunk):
                self.static_step(rows, span, use_top_p)
            self.steps += self.chunk
        else:  # eager: decode the live slots only, and stop early once none is left (syncs cost nothing here)
            index = slots_index(live, state.tokens.device)
            span = min(round_up(furthest + 1, 32), self.max_len)
            state.out_valid[index] = False
            for _ in range(self.chunk):
                decode_step(self.forward, self.plan, state, self.spare_slot, index, span, use_top_p)
                self.steps += 1
                if not state.alive[index].any():
                    break
            rows = top
        tokens = state.out_tokens[:rows].cpu().numpy()
        logprobs = state.out_logprobs[:rows].cpu().numpy()
        counts = state.out_valid[:rows].sum(dim=1).cpu().numpy()
        return tokens, logprobs, counts

    def static_step(self, rows: int, span: int, use_top_p: bool) -> None:
        """One decode step of slots 0..rows-1: a CUDA-graph replay, or eager if graphs are off or failed."""

        def step() -> None:
            decode_step(self.forward, self.plan, self.state, self.spare_slot, rows, span, use_top_p)

        if self.graphs is None:
            step()
            return
        try:
            self.graphs.run((rows, span, use_top_p), step)
        except RuntimeError as err:  # a model whose forward cannot be captured still generates, eagerly
            warnings.warn(f"engine: CUDA-graph capture failed ({err}); decoding eagerly from now on", stacklevel=2)
            self.graph_error = str(err)
            self.graphs = None
            torch.cuda.synchronize(self.state.tokens.device)
            step()

    def stop(self, slots: list[int]) -> None:
        """The host ended these slots' turns: they stop being live (EOS and caps stopped them on the device
        already; a closed code block is found only on the host)."""
        self.state.alive[torch.tensor(slots, dtype=torch.long, device=self.state.tokens.device)] = False


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def bucket_rows(rows: int) -> int:
    """Decode-graph row counts: powers of two (few graphs; at most 2x the rows of the live slots)."""
    return 1 << max(0, (rows - 1).bit_length())


def bucket_span(span: int) -> int:
    """Decode-graph key spans: multiples of 256 up to 2048, then of 1024 (at most ~12% extra reads past 2k)."""
    return round_up(span, 256) if span <= 2048 else round_up(span, 1024)
