"""The policy update of one training step: packed micro-batches -> log-probs -> clipped loss -> backward -> AdamW.

The trainer hands over the step's right-padded batch, token advantages and loss mask; this module decides how
the work runs on the hardware and nothing about what is learned (the loss is ``gtpo.method.losses``):

- **packing**: trajectories are dealt whole into micro-batches of at most ``optim.micro_batch_tokens`` real
  tokens (``gtpo.training.batch.pack_micro_batches``); the model sees no padding and attention stays inside each
  trajectory; only loss tokens are scored, through a chunked LM head (``gtpo.model.policy.packed_token_logprobs``);
- **one global normalizer**: the loss of every micro-batch divides by the whole batch's token or sequence count
  (summed over ranks), so the accumulated gradient equals one pass over the whole batch;
- **no wasted forward**: with one optimizer step per batch (``update_epochs`` 1) the old log-probs are the
  current ones detached, so the separate no-grad pass runs only when there are several epochs;
- **importance correction** (``algo.is_correction``): truncated weights min(pi_old / pi_sampler, C) on the
  policy term for the gap between the sampler's probabilities and the trainer's; the gap is measured and
  logged every step (``loss/is_mismatch_*``) whatever the setting;
- **entropy** is computed only when ``entropy_coef`` > 0; ``loss/sampled_nll`` (the mean -log p of the sampled
  tokens, an unbiased estimate of the entropy on-policy at top_p 1) is always reported, at no cost;
- **mixed precision**: float32 master weights and AdamW state, matmuls under bf16 autocast on GPUs (the casts
  of the weights are cached for the whole optimizer step and dropped after it, so the next step sees the new
  weights), fused AdamW on CUDA;
- **non-finite steps**: an optimizer step whose gradient norm is not finite is skipped (the weights and AdamW's
  state stay as they were) and counted in ``optim/nonfinite_skipped``; the trainer stops a run after
  ``optim.nonfinite_stop`` such steps in a row;
- **torchrun**: every rank runs the same number of forward/backward passes (a rank with fewer micro-batches
  repeats its first with weight 0), DDP all-reduces on the last one only.

See docs/training_speed.md for the design and its memory arithmetic.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch

from gtpo.config import OptimConfig, TrainConfig
from gtpo.distributed import DistContext, all_reduce_max, all_reduce_sum
from gtpo.method.losses import clipped_policy_loss, importance_weights
from gtpo.model.policy import checkpointing_active, packed_attention_active, packed_token_logprobs
from gtpo.model.precision import autocast as default_autocast
from gtpo.training.batch import MicroBatch, TokenBatch, pack_micro_batches
from gtpo.training.memory import auto_token_budget, saved_bytes_per_token


def build_optimizer(
    model: torch.nn.Module, optim: OptimConfig, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters (fused into one kernel on CUDA) and its linear warmup schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, fused=device.type == "cuda"
    )
    warmup = max(optim.warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0
    )
    return optimizer, scheduler


class PolicyUpdate:
    """Runs the update of one step (see the module docstring); called by the trainer once per step."""

    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        *,
        ctx: DistContext,
        device: torch.device,
        ref_model: torch.nn.Module | None = None,
        autocast: Callable[[], Any] | None = None,
    ) -> None:
        """``model``: what runs forward/backward (the policy, or its DDP/FSDP2 wrapper); ``autocast``: the
        mixed-precision context (default: the config's, ``gtpo.components.autocast``)."""
        self.cfg = config
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.ctx = ctx
        self.device = device
        self.ref_model = ref_model
        self.autocast = autocast or (lambda: default_autocast(config.model.dtype, device))
        self.bytes_per_token: float | None = None
        """Activation bytes saved for the backward per token, where the budget was measured (else None)."""
        self.token_budget = config.optim.micro_batch_tokens or self._measured_budget()
        """Most tokens one micro-batch packs: ``optim.micro_batch_tokens``, or measured when that is 0."""

    def __call__(self, batch: TokenBatch, advantages: torch.Tensor, loss_mask: torch.Tensor) -> dict[str, float]:
        """One epoch = one optimizer step over the whole batch; ``update_epochs`` of them. All inputs [B, T]."""
        cfg, algo, optim = self.cfg, self.cfg.algo, self.cfg.optim
        micro, weights = self._micro_batches(batch, loss_mask)
        passes = len(micro)
        advantages, loss_mask = advantages.to(self.device), loss_mask.to(self.device)
        sampler_logp = batch.sampler_logprobs.to(self.device)

        with self.autocast():
            old = self._scores(self.model, micro) if optim.update_epochs > 1 else None
            ref = self._reference_scores(micro) if algo.kl_coef > 0 or self.ref_model is not None else None
        local = _denominator(algo.loss_agg, loss_mask, cfg.rollout.max_total_tokens)
        denominator = max(all_reduce_sum(local, self.ctx, self.device), 1.0)

        sums: dict[str, float] = {}
        count, mismatch_max = 0, 0.0
        grad_norm = total_loss = 0.0
        skipped = 0
        for _ in range(optim.update_epochs):
            for i, (mb, weight) in enumerate(zip(micro, weights, strict=True)):
                loss, metrics = self._pass(
                    mb,
                    mb.select(loss_mask) * weight,
                    mb.select(advantages),
                    sampler_logp=mb.select(sampler_logp),
                    old_logp=None if old is None else old[i],
                    ref_logp=None if ref is None else ref[i],
                    denominator=denominator,
                    sync=i == passes - 1,
                )
                if weight:
                    mismatch_max = max(mismatch_max, metrics["is_mismatch_max"])
                if weight or not any(weights):  # (a rank with nothing to train still reports its zero loss)
                    total_loss += loss
                    for key, value in metrics.items():
                        sums[key] = sums.get(key, 0.0) + value
                    count += 1
            grad_norm = self._optimizer_step()
            skipped += not math.isfinite(grad_norm)
        out = {f"loss/{k}": v / max(count, 1) for k, v in sums.items()}
        out["loss/total"] = total_loss / optim.update_epochs
        out["loss/is_mismatch_max"] = all_reduce_max(mismatch_max, self.ctx, self.device)
        out["optim/grad_norm"] = grad_norm
        out["optim/nonfinite_skipped"] = float(skipped)
        out["perf/micro_batches"] = float(passes)
        return out

    def _micro_batches(self, batch: TokenBatch, loss_mask: torch.Tensor) -> tuple[list[MicroBatch], list[float]]:
        """The batch packed by token budget, on the device, with each micro-batch's weight (1, or 0 for a filler).

        Every rank runs the same number of passes (DDP/FSDP collectives must match), at least one (so that a
        batch with nothing to train still logs its metrics): a rank with fewer repeats its first micro-batch,
        or a placeholder, with weight 0, which adds nothing to the gradient."""
        lengths = batch.attention_mask.sum(dim=1)
        micro = pack_micro_batches(batch.input_ids, lengths, loss_mask, self.token_budget)
        weights = [1.0] * len(micro)
        passes = max(int(all_reduce_max(len(micro), self.ctx, self.device)), 1)
        filler = micro[0] if micro else _placeholder(batch.input_ids, lengths)
        micro += [filler] * (passes - len(micro))
        weights += [0.0] * (passes - len(weights))
        return [m.to(self.device) for m in micro], weights

    def _measured_budget(self) -> int:
        """The token budget whose saved activations fit ``optim.activation_gb`` (``gtpo.training.memory``),
        measured by two short forwards of one sequence through the update's own path, without a backward."""
        lm = _unwrap(self.model)  # a DDP wrapper's forward would wait for a backward that never comes
        vocab = lm.get_output_embeddings().weight.shape[0]

        def forward(tokens: int) -> torch.Tensor:
            ids = (torch.arange(tokens, device=self.device) * 7919 % vocab)[None]
            scored = torch.arange(1, tokens, device=self.device)
            checkpointing = checkpointing_active(lm, self.cfg.model.gradient_checkpointing)
            with packed_attention_active(lm), checkpointing, torch.enable_grad(), self.autocast():
                return packed_token_logprobs(lm, ids, [tokens], scored, self.cfg.rollout.temperature)[0]

        self.bytes_per_token = saved_bytes_per_token(forward, exclude=lm.parameters())
        return auto_token_budget(self.bytes_per_token, self.cfg.optim.activation_gb * 2**30)

    def _optimizer_step(self) -> float:
        """Clip, step and zero the gradients; returns the gradient norm before clipping.

        A non-finite loss or gradient (an overflow, a NaN in one micro-batch's logits) would poison every weight
        and AdamW's moments for good: that optimizer step is skipped (a non-finite norm is returned). The norm is
        over the reduced gradients, so every rank takes the same decision."""
        optim = self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = optim.grad_clip if optim.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        if math.isfinite(grad_norm):
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # autocast caches its bf16 copies of the weights until its outermost context exits (the trainer's may
        # span the whole step): drop them, or the next epoch would compute with the old weights.
        torch.clear_autocast_cache()
        return grad_norm

    def _pass(
        self,
        mb: MicroBatch,
        mask: torch.Tensor,
        advantages: torch.Tensor,
        *,
        sampler_logp: torch.Tensor,
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
        denominator: float,
        sync: bool,
    ) -> tuple[float, dict[str, float]]:
        """Forward, loss and backward of one micro-batch ([S, width] tensors); returns the loss and its metrics.
        ``old_logp`` None: one epoch, the old log-probs are the current ones (ratio 1, same gradient); they are
        also pi_old of the importance weights against ``sampler_logp``."""
        algo = self.cfg.algo
        lm = _unwrap(self.model)
        # The backward runs inside the packed attention too: checkpointed layers rerun their forward in it.
        with packed_attention_active(lm), checkpointing_active(lm, self.cfg.model.gradient_checkpointing):
            with self.autocast():
                logp, entropy = self._logprobs(self.model, mb, with_entropy=algo.entropy_coef > 0)
            old = logp.detach() if old_logp is None else old_logp
            is_weights, is_metrics = importance_weights(old, sampler_logp, mask, algo.is_cap, algo.is_correction)
            loss, metrics = clipped_policy_loss(
                logp,
                old,
                advantages,
                mask,
                clip_low=algo.clip_low,
                clip_high=algo.clip_high,
                dual_clip=algo.dual_clip,
                agg=algo.loss_agg,
                denominator=denominator,
                ref_logp=ref_logp,
                kl_coef=algo.kl_coef,
                entropy=entropy,
                entropy_coef=algo.entropy_coef,
                weights=is_weights,
            )
            metrics.update({f"is_{k}": v for k, v in is_metrics.items()})  # the sampler/trainer gap, every step
            # DDP/FSDP average gradients over ranks; the loss already divides by the global normalizer, so
            # scale back up to make the result a sum over ranks. DDP all-reduces on the last pass only.
            with _no_sync(self.model, skip=not sync):
                (loss * self.ctx.world_size).backward()
        metrics["sampled_nll"] = float(-(logp.detach() * mask).sum() / mask.sum().clamp(min=1.0))
        return loss.item(), {k: float(v) for k, v in metrics.items()}

    def _logprobs(
        self, model: torch.nn.Module, mb: MicroBatch, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[S, width] log-probs (and entropies) of ``mb``'s loss tokens, 0 elsewhere."""
        logp, entropy = packed_token_logprobs(
            model, mb.input_ids, mb.seq_lens, mb.scored, self.cfg.rollout.temperature, with_entropy=with_entropy
        )
        return mb.unpack(logp), (None if entropy is None else mb.unpack(entropy))

    def _reference_scores(self, micro: list[MicroBatch]) -> list[torch.Tensor] | None:
        """Log-probs under the reference policy: the frozen copy, or for LoRA the base model (adapters off)."""
        if self.ref_model is not None:
            return self._scores(self.ref_model, micro)
        lm = _unwrap(self.model)
        if not hasattr(lm, "disable_adapter"):
            return None  # no reference: clipped_policy_loss names the missing ref_logp
        with lm.disable_adapter():
            return self._scores(self.model, micro)

    def _scores(self, model: torch.nn.Module, micro: list[MicroBatch]) -> list[torch.Tensor]:
        """No-grad log-probs of every micro-batch (old policy before the update, or the reference)."""
        with torch.no_grad():
            return [self._logprobs(model, mb)[0] for mb in micro]


def _placeholder(input_ids: torch.Tensor, lengths: torch.Tensor) -> MicroBatch:
    """A micro-batch for a rank with no loss token at all: row 0 scored at its last token, run with weight 0."""
    mask = torch.zeros_like(input_ids)
    mask[0, max(int(lengths[0]) - 1, 1)] = 1
    return pack_micro_batches(input_ids[:1], lengths[:1], mask[:1], token_budget=max(int(lengths[0]), 1))[0]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _no_sync(model: torch.nn.Module, skip: bool) -> Any:
    """DDP all-reduces on every backward; accumulate locally until the last micro-batch."""
    if skip and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def _denominator(agg: str, loss_mask: torch.Tensor, max_len: int) -> float:
    """The whole batch's normalizer, so that micro-batch gradients add up to the full-batch gradient."""
    if agg == "token-mean":
        return max(loss_mask.sum().item(), 1.0)
    if agg == "seq-mean-token-mean":
        return max((loss_mask.sum(dim=1) > 0).sum().item(), 1.0)
    # Dr. GRPO: a constant normalizer (sequences x length budget) that does not depend on response lengths.
    return float(loss_mask.shape[0] * max_len)
