"""``GenerationEngine``: the engine loop, continuous batching over a slot KV cache, for multi-turn rollouts.

A request asks for one turn: continue a token context by up to ``max_new_tokens`` tokens, stopping at EOS
or at a closed python block. Each request gets a cache slot; a batch of waiting requests is prefilled in one
forward call (only the tokens whose keys/values the slot does not hold yet), then all live slots decode
together, a chunk of steps at a time. When a slot's turn ends, its request is returned at once and the slot
is free for the next waiting request: no row waits for the longest one.

Between turns of a trajectory its slot keeps the keys/values (``submit`` the same key again with the tokens
extended by the tool output, and only the new tokens are prefilled). When a waiting request needs a slot and
none is free, the slot held longest by a trajectory that is not generating is given up (evicted); that
trajectory's next turn then prefills its whole context again.

Each ``step`` prefills or decodes a chunk, then applies the turn-stop rule (``gtpo.generation.stop``) to what
was sampled. The parts, in this package: ``slots`` (requests, the slot table, held prefixes, eviction),
``cache`` (the slot KV cache and its size), ``prefill`` (one batched forward of the requests given slots),
``decode`` (a chunk of decode steps on the device, CUDA graphs). Not here: the multi-turn episode
(``gtpo.rollout.episode``), running code (``gtpo.sandbox``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gtpo.generation.engine.attention import AttentionPlan, set_plan
from gtpo.generation.engine.cache import allocate_caches
from gtpo.generation.engine.compact import CompactForward, transformers_forward
from gtpo.generation.engine.decode import Decoder, DecodeState
from gtpo.generation.engine.prefill import Prefiller
from gtpo.generation.engine.slots import Request, SlotTable
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
    """Engine weights and cache dtype; None: bfloat16 on CUDA, the policy's dtype elsewhere. (A training run passes
    the dtype its ``generation.engine_dtype`` resolves to, ``weights.engine_dtype``: its "auto" also picks bf16 on
    CPUs with bf16 products for large models.)"""
    packed_weights: bool = True
    """Compact forward on a CPU: run products on copies of the weights packed by oneDNN where that is faster (bf16;
    float32 decode of streamed weights), at one more copy of the weights in the engine's dtype. False: no copy."""
    compact: bool | None = None
    """Run the compact forward (``compact``: fused projections, few operations) where the model's architecture
    allows; else transformers' modeling code. None: on a CPU, where a step costs its number of operations."""


class GenerationEngine:
    """Continuous-batching sampler over its own copy of a policy; see the module docstring."""

    def __init__(self, policy: torch.nn.Module, tokenizer: Any, options: EngineOptions | None = None) -> None:
        from gtpo.model.policy import inference_weights

        self.options = options = options or EngineOptions()
        if options.slots < 1 or options.chunk < 1 or options.max_len < 2:
            raise ValueError(f"engine options: slots and chunk must be >= 1 and max_len >= 2, got {options}")
        self.device = next(policy.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.dtype = dtype = options.dtype or (torch.bfloat16 if on_cuda else next(policy.parameters()).dtype)
        """The dtype of the engine's weights and KV cache."""
        self.model = build_inference_copy(policy, inference_weights(policy), dtype, self.device)
        self.tokenizer = tokenizer
        self.k_cache, self.v_cache = allocate_caches(
            self.model.config, options.slots, options.max_len, dtype, self.device
        )
        self.plan = AttentionPlan(self.k_cache, self.v_cache, *([torch.zeros(0)] * 3), kv_len=0)
        set_plan(self.model, self.plan)
        self.stop = TurnStop.of(tokenizer)
        self.state = DecodeState(options.slots, options.chunk, options.max_len, self.stop.eos_ids, self.device)
        compact = not on_cuda if options.compact is None else options.compact
        self.compact = (
            CompactForward.of(self.model, self.plan, options.max_len, options.packed_weights) if compact else None
        )
        forward = self.compact or transformers_forward(self.model)
        self.prefiller = Prefiller(forward, self.plan, self.state)
        self.decoder = Decoder(
            forward, self.plan, self.state, chunk=options.chunk, max_len=options.max_len,
            cuda_graphs=on_cuda and options.cuda_graphs, static_shapes=options.static_shapes,
        )  # fmt: skip
        self._stop_ids = np.array(self.stop.stop_ids, dtype=np.int64)
        self.table = SlotTable(options.slots)

    # ------------------------------------------------------------------------------------------ requests
    @property
    def clock(self) -> int:
        """Engine steps so far (prefill calls and decode steps): a time that depends on the tokens only."""
        return self.prefiller.calls + self.decoder.steps

    @property
    def stats(self) -> dict[str, int]:
        return {
            "prefill_calls": self.prefiller.calls,
            "prefill_tokens": self.prefiller.tokens_fed,
            "decode_steps": self.decoder.steps,
            "evictions": self.table.evictions,
        }

    def has_work(self) -> bool:
        return self.table.has_work()

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
        if self.table.in_flight(key):
            raise ValueError(f"engine request {key}: that sequence already has a turn in flight")
        request = Request(key, list(tokens), max_new_tokens, temperature, top_p, seed, self.clock)
        request.stop_at_code_block = stop_at_code_block
        self.table.add(request)

    def release(self, key: int) -> None:
        """The sequence is finished: free its cached prefix."""
        self.table.release(key)

    def reset(self) -> None:
        """Drop every request and cached prefix (the end of a rollout, also one that failed midway)."""
        self.table.reset()
        self.state.alive.zero_()

    @torch.no_grad()
    def step(self) -> list[tuple[int, Sample]]:
        """Prefill what waits (if slots allow), else decode one chunk; return the turns that ended."""
        table = self.table
        due = bool(table.waiting) and table.prefill_due(self.clock, self.options.prefill_wait)
        if due and any(table.can_place(r) for r in table.waiting):
            return self._prefill()
        if table.running:
            return self._decode_chunk()
        if table.waiting:
            raise RuntimeError("engine: requests wait but no slot can be freed (more keys in flight than slots)")
        return []

    @torch.no_grad()
    def sync_weights(self, named_tensors: Any) -> None:
        """Copy the policy's updated weights in (called by the trainer after each optimizer step)."""
        load_weights(self.model, named_tensors)
        if self.compact is not None:
            self.compact.refresh()

    # -------------------------------------------------------------------------------------------- turns
    def _prefill(self) -> list[tuple[int, Sample]]:
        """One forward over the waiting requests that fit; sample each one's first token."""
        batch = self.table.admit(self.options.prefill_tokens)
        requests = [r for r, _ in batch]
        tokens, logps = self.prefiller.run(batch)
        finished: list[tuple[int, Sample]] = []
        joining: list[Request] = []
        for request, token, logp in zip(requests, tokens.tolist(), logps.tolist(), strict=True):
            finish = self._append(request, token, logp)
            if finish is None:
                joining.append(request)
            else:
                finished.append(self._finish(request, finish))
        if joining:
            self.prefiller.join(joining, tokens, requests)
            self.table.start(joining)
        return finished

    def _decode_chunk(self) -> list[tuple[int, Sample]]:
        """``chunk`` decode steps for all live slots, then the stop checks on what they sampled."""
        running, chunk = self.table.running, self.options.chunk
        furthest = max(len(r.tokens) + len(r.new_tokens) - 1 + min(chunk, r.max_new_tokens) for r in running.values())
        use_top_p = any(r.top_p < 1 for r in running.values())
        tokens, logprobs, counts = self.decoder.run_chunk(sorted(running), furthest, use_top_p)
        special = np.isin(tokens, self._stop_ids)  # only these tokens can end a turn
        finished, stopped = [], []
        for slot, request in list(running.items()):
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
                self.table.stop(slot)
                stopped.append(slot)
                finished.append(self._finish(request, finish))
        if stopped:  # EOS and caps stopped on the device already; a closed block is found only here
            self.decoder.stop(stopped)
        return finished

    def _ends_turn(self, request: Request, upto: list[int]) -> SampleFinish | None:
        """Why the turn ends at the last token of ``upto`` (the turn's next tokens), or None."""
        return self.stop.ends(request.new_tokens + upto, request.stop_at_code_block)

    def _append(self, request: Request, token: int, logp: float) -> SampleFinish | None:
        """Add one sampled token; return why the turn ends with it, or None if it goes on."""
        finish = self._ends_turn(request, [token])
        request.new_tokens.append(token)
        request.logprobs.append(logp)
        if finish is None and len(request.new_tokens) >= request.max_new_tokens:
            return "length"
        return finish

    def _finish(self, request: Request, finish: SampleFinish) -> tuple[int, Sample]:
        """Return the turn; its slot keeps the sequence's prefix."""
        self.table.hold(request)
        return request.key, Sample(request.new_tokens, request.logprobs, finish)
