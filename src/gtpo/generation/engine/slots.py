"""The engine's requests and its slot table: what waits, which slot decodes what, which prefixes are held.

A request is one turn of a sequence (``key``). It waits in arrival order until a prefill takes it; it then
owns a cache slot while it decodes. When its turn ends the slot keeps the sequence's keys/values (a held
prefix), so that the sequence's next turn prefills only its new tokens. A waiting request gets its own held
prefix back, else a free slot, else the slot held longest by a sequence with no turn waiting (an eviction:
that sequence's next turn prefills its whole context again). Nothing here touches a tensor.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass
class Request:
    """One turn of sequence ``key``: continue ``tokens`` by up to ``max_new_tokens`` tokens."""

    key: int
    tokens: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    arrival: int = 0
    """The engine's clock when the request was submitted."""
    new_tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    slot: int = -1
    stop_at_code_block: bool = True
    """The turn also ends when it closes a python block (``gtpo.generation.stop``), not only at EOS."""


@dataclass
class Held:
    """A slot's cached prefix: the first ``length`` tokens of its sequence."""

    slot: int
    length: int


class SlotTable:
    """Waiting requests, running ones by slot, held prefixes by key (oldest first), and the free slots."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.free = list(range(slots))  # a heap: the lowest free slot first
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}  # slot -> request
        self.held: OrderedDict[int, Held] = OrderedDict()  # key -> cached prefix, oldest first
        self.evictions = 0

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def in_flight(self, key: int) -> bool:
        """Sequence ``key`` has a turn waiting or decoding."""
        return any(r.key == key for r in self.waiting) or any(r.key == key for r in self.running.values())

    def add(self, request: Request) -> None:
        """Queue ``request`` behind those waiting."""
        self.waiting.append(request)

    def release(self, key: int) -> None:
        """The sequence is finished: free its held prefix."""
        held = self.held.pop(key, None)
        if held is not None:
            heapq.heappush(self.free, held.slot)

    def reset(self) -> None:
        """Drop every request and held prefix."""
        self.waiting.clear()
        self.running.clear()
        self.held.clear()
        self.free = list(range(self.slots))

    def prefill_due(self, clock: int, prefill_wait: int) -> bool:
        """Prefill now, or let the running slots decode while more requests gather (``prefill_wait`` steps at
        most, or until an eighth of the slots' worth of requests waits)."""
        return (
            not self.running or len(self.waiting) * 8 >= self.slots or clock - self.waiting[0].arrival >= prefill_wait
        )

    def can_place(self, request: Request) -> bool:
        """A slot exists for ``request``: its own held prefix, a free slot, or one that can be evicted."""
        if request.key in self.held or self.free:
            return True
        waiting = self._waiting_keys()
        return any(key not in waiting for key in self.held)

    def admit(self, max_tokens: int) -> list[tuple[Request, int]]:
        """Take waiting requests (in arrival order, skipping those with no slot yet) into slots for one prefill
        of at most ``max_tokens`` tokens (rows x padded width; at least one row): (request, its prefix length
        already in the slot)."""
        batch: list[tuple[Request, int]] = []
        width = 0
        for request in list(self.waiting):
            if not self.can_place(request):
                continue
            held = self.held.get(request.key)
            cached = held.length if held is not None and held.length <= len(request.tokens) else 0
            new_width = max(width, len(request.tokens) - cached)
            if batch and new_width * (len(batch) + 1) > max_tokens:
                break
            self.waiting.remove(request)
            request.slot = self._take_slot(request)
            if held is None or request.slot != held.slot:
                cached = 0
            batch.append((request, cached))
            width = max(width, len(request.tokens) - cached)
        return batch

    def start(self, requests: list[Request]) -> None:
        """The prefilled ``requests`` decode in their slots."""
        for request in requests:
            self.running[request.slot] = request

    def stop(self, slot: int) -> None:
        """The request in ``slot`` stops decoding."""
        del self.running[slot]

    def hold(self, request: Request) -> None:
        """Keep the ended turn's slot as its sequence's prefix: all but the last sampled token, which was not fed."""
        length = len(request.tokens) + len(request.new_tokens) - 1
        self.held[request.key] = Held(request.slot, length)

    def _waiting_keys(self) -> set[int]:
        return {r.key for r in self.waiting}

    def _take_slot(self, request: Request) -> int:
        """The slot for ``request``: its own held prefix if any, else a free slot, else an eviction."""
        held = self.held.pop(request.key, None)
        if held is not None and held.length <= len(request.tokens):
            return held.slot
        if held is not None:  # cannot happen through the rollout; be safe: recompute everything
            heapq.heappush(self.free, held.slot)
        if not self.free:
            waiting = self._waiting_keys()
            victim = next(key for key in self.held if key not in waiting)
            heapq.heappush(self.free, self.held.pop(victim).slot)
            self.evictions += 1
        return heapq.heappop(self.free)
