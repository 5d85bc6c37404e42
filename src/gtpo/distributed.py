"""Data-parallel plumbing over torch.distributed (launched by ``torchrun``): ranks, sharding, gathering.

How one step runs on N ranks (see docs/distributed.md):
1. every rank draws the same problems (same seed and stream position);
2. the B = problems x G trajectories are dealt round-robin, so a group's members land on different ranks;
3. each rank gathers every rank's *turn records* (no token lists) and computes the advantages of the whole
   batch, so each group is normalized as a whole, identically on every rank; it keeps its own rows;
4. the loss normalizer (masked tokens or sequences) is summed over ranks, and DDP/FSDP averages gradients,
   so the update equals a single process training on the whole batch.

Outside ``torchrun`` (no WORLD_SIZE) everything degrades to a single process with no communication.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

from gtpo.types import Trajectory

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment; single process otherwise.

    ``backend``: None picks nccl when CUDA is available, gloo otherwise (CPU tests use gloo). ``timeout_s``
    bounds how long a rank waits in a collective for the others: a rank that dies is noticed at once (its
    connections close), one that hangs only when this runs out.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def shard_indices(total: int, ctx: DistContext) -> list[int]:
    """Round-robin share of ``range(total)`` for this rank: trajectory j goes to rank j % world_size."""
    return list(range(ctx.rank, total, ctx.world_size))


def gather_objects(items: Sequence[T], indices: Sequence[int], total: int, ctx: DistContext) -> list[T]:
    """Every rank's ``items`` (this rank's are at ``indices``), reassembled in global order 0..total-1."""
    if not ctx.enabled:
        return list(items)
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, list(zip(indices, items, strict=True)))
    ordered: list[Any] = [None] * total
    for pairs in gathered:
        for index, item in pairs:
            ordered[index] = item
    if any(item is None for item in ordered):
        raise RuntimeError("gather_objects: some global indices were produced by no rank")
    return ordered


def strip_tokens(trajectory: Trajectory) -> Trajectory:
    """The turn records credit assignment needs, without token lists (what crosses the network)."""
    return dataclasses.replace(trajectory, input_ids=[], loss_mask=[], turn_ids=[], sampler_logprobs=[])


def all_reduce_sum(value: float, ctx: DistContext, device: torch.device) -> float:
    if not ctx.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item()


def all_reduce_max(value: float, ctx: DistContext, device: torch.device) -> float:
    if not ctx.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def wrap_model(
    model: torch.nn.Module, ctx: DistContext, strategy: Literal["ddp", "fsdp"] = "ddp", bf16: bool = False
) -> torch.nn.Module:
    """DDP (small models: every rank keeps all weights) or FSDP2 (``fully_shard``: weights, gradients and
    optimizer state sharded across ranks; what a 7B model needs).

    ``bf16`` (the run computes in bf16): FSDP2 gathers the float32 shards as bf16 weights and reduces gradients
    in float32 (its mixed-precision policy). Autocast would otherwise cache a bf16 copy of every gathered layer
    for the whole step, a full bf16 model on each rank, which is what sharding is for avoiding.
    """
    if not ctx.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
        options = {"mp_policy": policy} if policy is not None else {}
        for module in model.modules():
            # Shard each transformer block on its own, then the root: standard FSDP2 wrapping.
            if module.__class__.__name__.endswith("DecoderLayer"):
                fully_shard(module, **options)
        return fully_shard(model, **options)
    device_ids = [ctx.local_rank] if torch.cuda.is_available() else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under a DDP wrapper (FSDP2 modifies in place, so it is its own module)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def peer_failure(err: BaseException) -> bool:
    """Whether ``err`` says another rank died or stopped answering, rather than a bug on this rank.

    NCCL raises ``torch.distributed.DistError`` subclasses; gloo raises a plain RuntimeError whose message
    names its transport ("[.../gloo/transport/tcp/pair.cc] Connection closed by peer", or "Timed out").
    """
    if isinstance(err, dist.DistError):
        return True
    return isinstance(err, RuntimeError) and "gloo/transport" in str(err)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
