"""``GenerationEngine``: continuous batching over a slot KV cache, for multi-turn rollouts.

A request asks for one turn: continue a token context by up to ``max_new_tokens`` tokens, stopping at EOS
or at a closed python block. Each request gets a cache slot; a batch of waiting requests is prefilled in one
forward call (only the tokens whose keys/values the slot does not hold yet), then all live slots decode
together, a chunk of steps at a time (``gtpo.generation.engine.decode``). When a slot's turn ends, its request is
returned at once and the slot is free for the next waiting request: no row waits for the longest one.

Between turns of a trajectory its slot keeps the keys/values (``submit`` the same key again with the tokens
extended by the tool output, and only the new tokens are prefilled). When a waiting request needs a slot and
none is free, the slot held longest by a trajectory that is not generating is given up (evicted); that
trajectory's next turn then prefills its whole context again.

Not here: the multi-turn episode (``gtpo.rollout.episode``), running code (``gtpo.sandbox``).
"""

from __future__ import annotations

import heapq
import warnings
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gtpo.generation.engine.attention import AttentionPlan, set_plan
from gtpo.generation.engine.decode import DecodeState, GraphCache, decode_step
from gtpo.generation.engine.sampling import counter_uniform, sample_tokens
from gtpo.generation.engine.weights import build_inference_copy, load_weights
from gtpo.generation.protocol import Sample, SampleFinish
from gtpo.generation.stop import TurnStop


@dataclass
class EngineOptions:
    """Sizes and switches of the engine (``gtpo.config.RolloutConfig`` carries the user-facing ones)."""

    slots: int = 64
    """Sequences decoded at once (cache slots). More requests than slots wait in a queue."""
    max_len: int = 4096
    """Longest sequence (context + new tokens) a slot holds."""
    chunk: int = 8
    """Decode steps between two looks of the host at the sampled tokens (stop checks, new requests)."""
    cuda_graphs: bool = True
    """Capture each decode-step shape as a CUDA graph (CUDA only)."""
    static_shapes: bool | None = None
    """Decode a bucketed prefix of the slots (the shapes CUDA graphs need) rather than just the live slots.
    None: exactly when CUDA graphs are used. True on a CPU runs the graphs' code path eagerly (tests)."""
    prefill_tokens: int = 16384
    """Most tokens (rows x padded width) one prefill call may process."""
    prefill_wait: int = 0
    """Decode steps a waiting request may be held back while slots decode, so that prefills are batched
    (a prefill is an eager forward: on a GPU it costs several graph-replayed decode steps). A prefill also
    starts when an eighth of the slots' worth of requests waits, or when nothing decodes."""
    dtype: torch.dtype | None = None
    """Engine weights and cache dtype; None: bfloat16 on CUDA, the policy's dtype elsewhere."""


@dataclass
class _Request:
    key: int
    tokens: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    arrival: int = 0
    new_tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    slot: int = -1


@dataclass
class _Held:
    """A slot's cached prefix: the first ``length`` tokens of ``key``'s sequence."""

    slot: int
    length: int


class GenerationEngine:
    """Continuous-batching sampler over its own copy of a policy; see the module docstring."""

    def __init__(self, policy: torch.nn.Module, tokenizer: Any, options: EngineOptions | None = None) -> None:
        from gtpo.model.policy import inference_weights

        self.options = options = options or EngineOptions()
        if options.slots < 1 or options.chunk < 1 or options.max_len < 2:
            raise ValueError(f"engine options: slots and chunk must be >= 1 and max_len >= 2, got {options}")
        self.device = next(policy.parameters()).device
        on_cuda = self.device.type == "cuda"
        dtype = options.dtype or (torch.bfloat16 if on_cuda else next(policy.parameters()).dtype)
        self.model = build_inference_copy(policy, inference_weights(policy), dtype, self.device)
        self.tokenizer = tokenizer
        config = self.model.config
        layers = config.num_hidden_layers
        kv_heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.spare_slot = options.slots  # padding and dead rows write here; nothing reads it
        shape = (options.slots + 1, kv_heads, options.max_len, head_dim)
        caches = zeroed_caches(2 * layers, shape, dtype, self.device)
        self.k_cache, self.v_cache = caches[:layers], caches[layers:]
        self.plan = AttentionPlan(self.k_cache, self.v_cache, *([torch.zeros(0)] * 3), kv_len=0)
        set_plan(self.model, self.plan)
        self.stop = TurnStop.of(tokenizer)
        self.state = DecodeState(options.slots, options.chunk, options.max_len, self.stop.eos_ids, self.device)
        self.graphs = GraphCache(self.state.mutable) if on_cuda and options.cuda_graphs else None
        static = options.static_shapes
        self.static_shapes = self.graphs is not None if static is None else static
        self._special = np.array(self.stop.stop_ids, dtype=np.int64)
        self._free = list(range(options.slots))
        self._waiting: deque[_Request] = deque()
        self._running: dict[int, _Request] = {}  # slot -> request
        self._held: OrderedDict[int, _Held] = OrderedDict()  # key -> cached prefix, oldest first
        self.graph_error: str | None = None
        self.stats = {"prefill_calls": 0, "prefill_tokens": 0, "decode_steps": 0, "evictions": 0}

    # ------------------------------------------------------------------------------------------ requests
    @property
    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k_cache + self.v_cache)

    @property
    def clock(self) -> int:
        """Engine steps so far (prefill calls and decode steps): a time that depends on the tokens only."""
        return self.stats["prefill_calls"] + self.stats["decode_steps"]

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def submit(
        self,
        key: int,
        tokens: list[int],
        max_new_tokens: int,
        *,
        temperature: float,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> None:
        """Queue one turn for sequence ``key``: continue ``tokens`` by up to ``max_new_tokens`` tokens.

        ``key`` names the sequence across turns (its cached prefix is reused) and, with ``seed``, picks its
        random numbers. A key may have one request in flight at a time.
        """
        if max_new_tokens < 1 or not tokens:
            raise ValueError(f"engine request {key}: needs a non-empty context and max_new_tokens >= 1")
        if len(tokens) + max_new_tokens > self.options.max_len:
            raise ValueError(
                f"engine request {key}: context {len(tokens)} + {max_new_tokens} new tokens exceeds the engine's "
                f"max_len {self.options.max_len} (rollout.max_total_tokens sets it)"
            )
        if any(r.key == key for r in self._waiting) or any(r.key == key for r in self._running.values()):
            raise ValueError(f"engine request {key}: that sequence already has a turn in flight")
        self._waiting.append(_Request(key, list(tokens), max_new_tokens, temperature, top_p, seed, self.clock))

    def release(self, key: int) -> None:
        """The sequence is finished: free its cached prefix."""
        held = self._held.pop(key, None)
        if held is not None:
            heapq.heappush(self._free, held.slot)

    def reset(self) -> None:
        """Drop every request and cached prefix (the end of a rollout, also one that failed midway)."""
        self._waiting.clear()
        self._running.clear()
        self._held.clear()
        self._free = list(range(self.options.slots))
        self.state.alive.zero_()

    @torch.no_grad()
    def step(self) -> list[tuple[int, Sample]]:
        """Prefill what waits (if slots allow), else decode one chunk; return the turns that ended."""
        if self._waiting and self._prefill_due() and any(self._can_place(r) for r in self._waiting):
            return self._prefill()
        if self._running:
            return self._decode_chunk()
        if self._waiting:
            raise RuntimeError("engine: requests wait but no slot can be freed (more keys in flight than slots)")
        return []

    @torch.no_grad()
    def sync_weights(self, named_tensors: Any) -> None:
        """Copy the policy's updated weights in (called by the trainer after each optimizer step)."""
        load_weights(self.model, named_tensors)

    # ------------------------------------------------------------------------------------------- prefill
    def _prefill_due(self) -> bool:
        """Prefill now, or let the live slots decode while more requests gather (see ``prefill_wait``)."""
        return (
            not self._running
            or len(self._waiting) * 8 >= self.options.slots
            or self.clock - self._waiting[0].arrival >= self.options.prefill_wait
        )

    def _can_place(self, request: _Request) -> bool:
        """A slot exists for ``request``: its own cached prefix, a free slot, or one that can be evicted."""
        if request.key in self._held or self._free:
            return True
        waiting = self._in_flight_keys()
        return any(key not in waiting for key in self._held)

    def _in_flight_keys(self) -> set[int]:
        return {r.key for r in self._waiting}

    def _take_slot(self, request: _Request) -> int:
        """The slot for ``request``: its own cached prefix if any, else a free slot, else an eviction."""
        held = self._held.pop(request.key, None)
        if held is not None and held.length <= len(request.tokens):
            return held.slot
        if held is not None:  # cannot happen through the rollout; be safe: recompute everything
            heapq.heappush(self._free, held.slot)
        if not self._free:
            waiting = self._in_flight_keys()
            victim = next(key for key in self._held if key not in waiting)
            heapq.heappush(self._free, self._held.pop(victim).slot)
            self.stats["evictions"] += 1
        return heapq.heappop(self._free)

    def _prefill(self) -> list[tuple[int, Sample]]:
        """One forward over the waiting requests that fit; sample each one's first token."""
        batch: list[tuple[_Request, int]] = []  # (request, cached prefix length)
        width = 0
        for request in list(self._waiting):  # in arrival order, skipping those with no slot yet
            if not self._can_place(request):
                continue
            held = self._held.get(request.key)
            cached = held.length if held is not None and held.length <= len(request.tokens) else 0
            new_width = max(width, len(request.tokens) - cached)
            if batch and new_width * (len(batch) + 1) > self.options.prefill_tokens:
                break
            self._waiting.remove(request)
            request.slot = self._take_slot(request)
            if held is None or request.slot != held.slot:
                cached = 0
            batch.append((request, cached))
            width = max(width, len(request.tokens) - cached)
        rows = len(batch)
        ids = torch.zeros((rows, width), dtype=torch.long)
        positions = torch.zeros((rows, width), dtype=torch.long)
        write_slot = torch.full((rows, width), self.spare_slot, dtype=torch.long)
        ends = []
        for row, (request, cached) in enumerate(batch):
            feed = request.tokens[cached:]
            lo = width - len(feed)  # left padding: every row's last column is its last real token
            ids[row, lo:] = torch.tensor(feed)
            positions[row, lo:] = torch.arange(cached, len(request.tokens))
            write_slot[row, lo:] = request.slot
            ends.append(len(request.tokens))
        span = _round_up(max(ends), 16)
        dev = self.device
        ids, positions, write_slot = ids.to(dev), positions.to(dev), write_slot.to(dev)
        self.plan.write_slot = write_slot.view(-1)
        self.plan.write_pos = torch.where(write_slot == self.spare_slot, 0, positions).view(-1)
        self.plan.mask = (self.state.span[None, None, :span] <= positions[:, :, None]).unsqueeze(1)
        self.plan.kv_len = span
        self.plan.read_slots = _slots_index([r.slot for r, _ in batch], dev)
        logits = self.model(input_ids=ids, position_ids=positions, use_cache=False, logits_to_keep=1).logits[:, -1]
        settings = self._settings([r for r, _ in batch], dev)
        end_pos = torch.tensor(ends, dtype=torch.long, device=dev)
        uniforms = counter_uniform(settings["seed"], settings["key"], end_pos)
        use_top_p = any(r.top_p < 1 for r, _ in batch)
        tokens, logps = sample_tokens(logits, settings["temperature"], settings["top_p"], uniforms, use_top_p=use_top_p)
        self.stats["prefill_calls"] += 1
        self.stats["prefill_tokens"] += sum(len(r.tokens) - c for r, c in batch)
        finished: list[tuple[int, Sample]] = []
        joining: list[_Request] = []
        for request, token, logp in zip((r for r, _ in batch), tokens.tolist(), logps.tolist(), strict=True):
            finish = self._append(request, token, logp)
            if finish is None:
                joining.append(request)
            else:
                finished.append(self._finish(request, finish))
        if joining:
            self._join(joining, tokens, [r for r, _ in batch])
        return finished

    def _settings(self, requests: list[_Request], device: torch.device) -> dict[str, torch.Tensor]:
        return {
            "seed": torch.tensor([r.seed for r in requests], dtype=torch.long, device=device),
            "key": torch.tensor([r.key for r in requests], dtype=torch.long, device=device),
            "temperature": torch.tensor([r.temperature for r in requests], dtype=torch.float32, device=device),
            "top_p": torch.tensor([r.top_p for r in requests], dtype=torch.float32, device=device),
        }

    def _join(self, joining: list[_Request], tokens: torch.Tensor, batch: list[_Request]) -> None:
        """Make the prefilled requests' slots live in the decode state."""
        state, dev = self.state, self.device
        index = {id(r): i for i, r in enumerate(batch)}
        slots = torch.tensor([r.slot for r in joining], dtype=torch.long, device=dev)
        state.tokens[slots] = tokens[torch.tensor([index[id(r)] for r in joining], device=dev)]
        state.pos[slots] = torch.tensor([len(r.tokens) for r in joining], dtype=torch.long, device=dev)
        state.remaining[slots] = torch.tensor([r.max_new_tokens - 1 for r in joining], dtype=torch.long, device=dev)
        for name, values in self._settings(joining, dev).items():
            getattr(state, name)[slots] = values
        state.alive[slots] = True
        for request in joining:
            self._running[request.slot] = request

    # -------------------------------------------------------------------------------------------- decode
    def _decode_chunk(self) -> list[tuple[int, Sample]]:
        """``chunk`` decode steps for all live slots, then one copy to the host and the stop checks."""
        opts, state = self.options, self.state
        top = max(self._running) + 1  # slots 0..top-1 hold every live one
        furthest = max(
            len(r.tokens) + len(r.new_tokens) - 1 + min(opts.chunk, r.max_new_tokens) for r in self._running.values()
        )
        use_top_p = any(r.top_p < 1 for r in self._running.values())
        state.step.zero_()
        if self.static_shapes:
            rows = min(_bucket_rows(top), opts.slots)
            span = min(_bucket_span(furthest + 1), opts.max_len)
            for _ in range(opts.chunk):
                self._static_step(rows, span, use_top_p)
            self.stats["decode_steps"] += opts.chunk
        else:  # eager: decode the live slots only, and stop early once none is left (syncs cost nothing here)
            live = _slots_index(sorted(self._running), self.device)
            span = min(_round_up(furthest + 1, 32), opts.max_len)
            state.out_valid[live] = False
            for _ in range(opts.chunk):
                decode_step(self.model, self.plan, state, self.spare_slot, live, span, use_top_p)
                self.stats["decode_steps"] += 1
                if not state.alive[live].any():
                    break
            rows = top
        tokens = state.out_tokens[:rows].cpu().numpy()
        logprobs = state.out_logprobs[:rows].cpu().numpy()
        counts = state.out_valid[:rows].sum(dim=1).cpu().numpy()  # a slot's valid steps are a prefix
        special = np.isin(tokens, self._special)
        finished, stopped = [], []
        for slot, request in list(self._running.items()):
            # Tokens up to the cap, then cut at the first EOS or closed block among them.
            end = min(int(counts[slot]), request.max_new_tokens - len(request.new_tokens))
            finish: SampleFinish | None = "length" if len(request.new_tokens) + end >= request.max_new_tokens else None
            for j in np.flatnonzero(special[slot, :end]).tolist():
                reason = self._ends_turn(request, tokens[slot, : j + 1].tolist())
                if reason is not None:
                    end, finish = j + 1, reason
                    break
            request.new_tokens.extend(tokens[slot, :end].tolist())
            request.logprobs.extend(logprobs[slot, :end].tolist())
            if finish is not None:
                del self._running[slot]
                stopped.append(slot)
                finished.append(self._finish(request, finish))
        if stopped:  # EOS and caps stopped on the device already; a closed block is found only here
            state.alive[torch.tensor(stopped, dtype=torch.long, device=self.device)] = False
        return finished

    def _ends_turn(self, request: _Request, upto: list[int]) -> SampleFinish | None:
        """Why the turn ends at the last token of ``upto`` (the turn's next tokens), or None."""
        return self.stop.ends(request.new_tokens + upto)

    def _static_step(self, rows: int, span: int, use_top_p: bool) -> None:
        """One decode step of slots 0..rows-1: a CUDA-graph replay, or eager if graphs are off or failed."""

        def step() -> None:
            decode_step(self.model, self.plan, self.state, self.spare_slot, rows, span, use_top_p)

        if self.graphs is None:
            step()
            return
        try:
            self.graphs.run((rows, span, use_top_p), step)
        except RuntimeError as err:  # a model whose forward cannot be captured still generates, eagerly
            warnings.warn(f"engine: CUDA-graph capture failed ({err}); decoding eagerly from now on", stacklevel=2)
            self.graph_error = str(err)
            self.graphs = None
            torch.cuda.synchronize(self.device)
            step()

    def _append(self, request: _Request, token: int, logp: float) -> SampleFinish | None:
        """Add one sampled token; return why the turn ends with it, or None if it goes on."""
        finish = self._ends_turn(request, [token])
        request.new_tokens.append(token)
        request.logprobs.append(logp)
        if finish is None and len(request.new_tokens) >= request.max_new_tokens:
            return "length"
        return finish

    def _finish(self, request: _Request, finish: SampleFinish) -> tuple[int, Sample]:
        """Return the turn; keep the slot's prefix (all but the last sampled token, which was not fed)."""
        length = len(request.tokens) + len(request.new_tokens) - 1
        self._held[request.key] = _Held(request.slot, length)
        return request.key, Sample(request.new_tokens, request.logprobs, finish)


def zeroed_caches(count: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """``count`` zero tensors of ``shape``; on a CPU, views of one buffer whose pages the OS zeroes on first touch.

    Why: ``torch.zeros`` writes every byte, and a CPU cache is large (max_len positions for every slot, most
    never reached: 0.8 GB for a 135M model at 32 slots x 512) while a turn touches only its own positions. A
    calloc'd buffer (numpy's zeros) of that size is mapped lazily: start-up costs nothing and memory is
    committed only where keys and values are written or read. The contents are zeros either way.
    """
    if device.type != "cpu":
        return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(count)]
    numel = count * int(np.prod(shape))
    raw = torch.from_numpy(np.zeros(numel * dtype.itemsize, dtype=np.uint8))
    return list(raw.view(dtype).view(count, *shape).unbind(0))


def _slots_index(slots: list[int], device: torch.device) -> slice | torch.Tensor:
    """``slots`` as a slice when they are consecutive and ascending (views, no gathers), else an index tensor."""
    if slots == list(range(slots[0], slots[0] + len(slots))):
        return slice(slots[0], slots[0] + len(slots))
    return torch.tensor(slots, dtype=torch.long, device=device)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _bucket_rows(rows: int) -> int:
    """Decode-graph row counts: powers of two (few graphs; at most 2x the rows of the live slots)."""
    return 1 << max(0, (rows - 1).bit_length())


def _bucket_span(span: int) -> int:
    """Decode-graph key spans: multiples of 256 up to 2048, then of 1024 (at most ~12% extra reads past 2k)."""
    return _round_up(span, 256) if span <= 2048 else _round_up(span, 1024)
