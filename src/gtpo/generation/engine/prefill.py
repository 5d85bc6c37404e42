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
from gtpo.generation.engine.sampling import counter_uniform, sample_tokens
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
        token and its log-prob (on the device)."""
        requests = [r for r, _ in batch]
        ids, positions, write_slot = self._inputs(batch)
        span = round_up(max(len(r.tokens) for r in requests), 16)
        dev = self.device
        ids, positions, write_slot = ids.to(dev), positions.to(dev), write_slot.to(dev)
        self.plan.write_slot = write_slot.view(-1)
        self.plan.write_pos = torch.where(write_slot == self.spare_slot, 0, positions).view(-1)
        self.plan.mask = (self.state.span[None, None, :span] <= positions[:, :, None]).unsqueeze(1)
        self.plan.kv_len = span
        self.plan.read_slots = slots_index([r.slot for r in requests], dev)
        logits = self.forward(ids, positions)
        settings = request_settings(requests, dev)
        end_pos = torch.tensor([len(r.tokens) for r in requests], dtype=torch.long, device=dev)
        uniforms = counter_uniform(settings["seed"], settings["key"], end_pos)
        use_top_p = any(r.top_p < 1 for r in requests)
        tokens, logps = sample_tokens(logits, settings["temperature"], settings["top_p"], uniforms, use_top_p=use_top_p)
        self.calls += 1
        self.tokens_fed += sum(len(r.tokens) - c for r, c in batch)
        return tokens, logps

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
    return {
        "seed": torch.tensor([r.seed for r in requests], dtype=torch.long, device=device),
        "key": torch.tensor([r.key for r in requests], dtype=torch.long, device=device),
        "temperature": torch.tensor([r.temperature for r in requests], dtype=torch.float32, device=device),
        "top_p": torch.tensor([r.top_p for r in requests], dtype=torch.float32, device=device),
    }
