"""Prefill: one forward call over a batch of requests just given slots, and the first token of each.

Only the tokens a slot does not hold yet are fed (a trajectory's next turn feeds its last sampled token and
the tool output). Rows are left-padded, so every row's last column is its last real token; padding writes to
the cache's spare slot. The first new token is sampled on the device as a decode step samples, keyed by the
same (seed, sequence, position). The requests whose turn goes on then join the decode state in their slots.
"""

from __future__ import annotations

import torch

from gtpo.generation.engine.attention import AttentionPlan, slots_index
from gtpo.generation.engine.decode import DecodeState, Forward, round_up
from gtpo.generation.engine.sampling import position_uniform, sample_tokens, sequence_stream
from gtpo.generation.engine.slots import Request


class Prefiller:
    """Prefills batches of requests into their slots over the engine's model, cache plan and decode state."""

    def __init__(self, forward: Forward, plan: AttentionPlan, state: DecodeState) -> None:
        self.forward, self.plan, self.state = forward, plan, state
        self.device = state.tokens.device
        self.spare_slot = state.tokens.shape[0]  # padding writes here; nothing reads it
        self.calls = 0
        self.tokens_fed = 0
        """Prefill calls and the tokens they fed, so far."""

    def run(self, batch: list[tuple[Request, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over ``batch`` (request, prefix length its slot holds); return each row's first sampled
        token and its log-prob (on the device).

        Rows that feed the same tokens after the same held prefix (a group's G copies of a prompt) are fed once:
        the others get the fed row's new keys/values copied into their slots and sample from its logits, each
        with its own random numbers. Computed per row, the copy holds the same values the row would have written.
        """
        requests = [r for r, _ in batch]
        firsts: dict[tuple[int, tuple[int, ...]], int] = {}
        source = [firsts.setdefault((cached, tuple(r.tokens)), i) for i, (r, cached) in enumerate(batch)]
        fed = sorted(set(source))
        ids, positions, write_slot = self._inputs([batch[i] for i in fed])
        span = round_up(max(len(r.tokens) for r in requests), 16)
        dev = self.device
        ids, positions, write_slot = ids.to(dev), positions.to(dev), write_slot.to(dev)
        self.plan.write_slot = write_slot.view(-1)
        self.plan.write_pos = torch.where(write_slot == self.spare_slot, 0, positions).view(-1)
        self.plan.mask = (self.state.span[None, None, :span] <= positions[:, :, None]).unsqueeze(1)
        self.plan.kv_len = span
        self.plan.read_slots = slots_index([requests[i].slot for i in fed], dev)
        logits = self.forward(ids, positions)
        if len(fed) < len(batch):
            self._copy_prefixes(batch, source)
            row = {i: k for k, i in enumerate(fed)}
            logits = logits[torch.tensor([row[i] for i in source], device=dev)]
        settings = request_settings(requests, dev)
        end_pos = torch.tensor([len(r.tokens) for r in requests], dtype=torch.long, device=dev)
        uniforms = position_uniform(settings["stream"], end_pos)
        use_top_p = any(r.top_p < 1 for r in requests)
        tokens, logps = sample_tokens(logits, settings["temperature"], settings["top_p"], uniforms, use_top_p=use_top_p)
        self.calls += 1
        self.tokens_fed += sum(len(batch[i][0].tokens) - batch[i][1] for i in fed)
        return tokens, logps

    def _copy_prefixes(self, batch: list[tuple[Request, int]], source: list[int]) -> None:
        """Copy each fed row's new keys/values (positions held..end) into the slots of the rows that share them."""
        ranges: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (start, end) -> [(to slot, from slot)]
        for i, (request, cached) in enumerate(batch):
            if source[i] != i:
                ranges.setdefault((cached, len(request.tokens)), []).append((request.slot, batch[source[i]][0].slot))
        for (lo, hi), pairs in ranges.items():
            to = torch.tensor([t for t, _ in pairs], device=self.device)
            fro = torch.tensor([f for _, f in pairs], device=self.device)
            for cache in (*self.plan.k_cache, *self.plan.v_cache):
                cache[to, :, lo:hi] = cache[fro, :, lo:hi]

    def join(self, joining: list[Request], tokens: torch.Tensor, batch: list[Request]) -> None:
        """Make the slots of ``joining`` (some of the prefilled ``batch``, whose first tokens are ``tokens``)
        live in the decode state."""
        state, dev = self.state, self.device
        index = {id(r): i for i, r in enumerate(batch)}
        slots = torch.tensor([r.slot for r in joining], dtype=torch.long, device=dev)
        state.tokens[slots] = tokens[torch.tensor([index[id(r)] for r in joining], device=dev)]
        state.pos[slots] = torch.tensor([len(r.tokens) for r in joining], dtype=torch.long, device=dev)
        state.remaining[slots] = torch.tensor([r.max_new_tokens - 1 for r in joining], dtype=torch.long, device=dev)
        for name, values in request_settings(joining, dev).items():
            getattr(state, name)[slots] = values
        state.alive[slots] = True

    def _inputs(self, batch: list[tuple[Request, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, positions, write slots) [rows, width] on the host: each row's unheld tokens, left-padded."""
        width = max(len(r.tokens) - cached for r, cached in batch)
        rows = len(batch)
        ids = torch.zeros((rows, width), dtype=torch.long)
        positions = torch.zeros((rows, width), dtype=torch.long)
        write_slot = torch.full((rows, width), self.spare_slot, dtype=torch.long)
        for row, (request, cached) in enumerate(batch):
            feed = request.tokens[cached:]
            lo = width - len(feed)  # left padding: every row's last column is its last real token
            ids[row, lo:] = torch.tensor(feed)
            positions[row, lo:] = torch.arange(cached, len(request.tokens))
            write_slot[row, lo:] = request.slot
        return ids, positions, write_slot


def request_settings(requests: list[Request], device: torch.device) -> dict[str, torch.Tensor]:
    """The requests' sampling settings as tensors named as ``DecodeState``'s."""
    seeds = torch.tensor([r.seed for r in requests], dtype=torch.long, device=device)
    keys = torch.tensor([r.key for r in requests], dtype=torch.long, device=device)
    return {
        "stream": sequence_stream(seeds, keys),
        "temperature": torch.tensor([r.temperature for r in requests], dtype=torch.float32, device=device),
        "top_p": torch.tensor([r.top_p for r in requests], dtype=torch.float32, device=device),
    }
