"""One decode step for every slot at once, entirely on the device, and its CUDA-graph replay.

A decode step feeds each live slot its last sampled token, writes that token's keys/values at its position,
samples the next token (``gtpo.generation.engine.sampling``), records it in a per-chunk buffer and advances the slot.
A slot stops being live when it samples EOS or reaches its token cap; the host learns this only at the end
of a chunk of steps (one copy of the chunk's buffers), which is also where it checks for a closed code
block. So there is no host synchronization per token, and a step's shapes depend only on (rows, key span),
which makes it capturable as a CUDA graph: the step's ~400 kernel launches become one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from gtpo.generation.engine.attention import AttentionPlan
from gtpo.generation.engine.sampling import counter_uniform, sample_tokens


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
        self.seed = torch.zeros(slots, **long)
        self.key = torch.zeros(slots, **long)
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
    model: torch.nn.Module,
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
    out = model(input_ids=tokens[:, None], position_ids=pos[:, None], use_cache=False, logits_to_keep=1)
    uniforms = counter_uniform(state.seed[sel], state.key[sel], pos + 1)
    new, logp = sample_tokens(
        out.logits[:, -1], state.temperature[sel], state.top_p[sel], uniforms, use_top_p=use_top_p
    )
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
