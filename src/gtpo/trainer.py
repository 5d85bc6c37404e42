"""The training loop: rollout -> credit assignment -> clipped policy update -> log / evaluate / checkpoint.

The trainer orchestrates and holds no formula: rewards, returns, advantages and the loss are the pure
functions of ``gtpo.rewards``, ``gtpo.advantages`` and ``gtpo.losses`` (reached through ``gtpo.credit``).

Reproducibility: every step's sampling is seeded from (seed, step), and checkpoints carry the RNG, optimizer,
scheduler and data-stream states, so a run resumed from step N continues exactly as if never interrupted.
Dropout is left off (the model stays in eval mode) because it would make the importance ratio differ from 1
on the first update epoch for reasons that have nothing to do with the policy changing.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtpo import components
from gtpo.advantages import turns_to_tokens
from gtpo.batch import TokenBatch, collate
from gtpo.checkpoint import claim_run_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from gtpo.config import ConfigError, TrainConfig, to_dict, validate
from gtpo.credit import assign_credit
from gtpo.distributed import (
    DistContext,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    gather_objects,
    init_distributed,
    shard_indices,
    strip_tokens,
    wrap_model,
)
from gtpo.evaluate import EvalReport, eval_record, evaluate_problems
from gtpo.losses import clipped_policy_loss
from gtpo.metrics import EVAL_FILE, METRICS_FILE, MetricLogger, append_record, read_metrics
from gtpo.policy import inference_weights, token_logprobs
from gtpo.problem_stream import ProblemStream
from gtpo.rollout import is_void_trajectory, rollout, rollout_metrics
from gtpo.similarity import get_similarity
from gtpo.types import CodeExecutor, Trajectory


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of one step: independent of everything that ran before it (resume-safe)."""
    return (seed * 1_000_003 + step * 7_919) % (2**31 - 1)


class Trainer:
    """Runs GTPO or GRPO for ``config.steps`` steps; see the module docstring for the loop."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        sampler: Any = None,
        executor: CodeExecutor | None = None,
        ctx: DistContext | None = None,
    ) -> None:
        """``sampler``/``executor`` replace the configured ones (tests, custom backends); ``ctx`` the
        process group read from torchrun's environment."""
        self.cfg = validate(config)
        self.ctx = ctx or init_distributed()
        self.run_dir = Path(config.output_dir)
        if self.ctx.is_main:  # before anything slow: a clash with an earlier run fails at once
            claim_run_dir(self.run_dir, resume=config.resume, overwrite=config.overwrite)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(config.seed)
        self.device = components.resolve_device(config.device, self.ctx.local_rank)
        policy, self.tokenizer = components.build_policy(config.model, self.device)
        policy.eval()
        self.policy = policy
        """The plain module: generation, log-probs without gradient, checkpoints."""
        self.model = wrap_model(policy, self.ctx, config.strategy)
        """What the update runs forward/backward through (DDP/FSDP2 under torchrun, else the policy)."""
        self.ref_model = components.build_reference(config.model, self.device) if config.algo.kl_coef > 0 else None
        params = [p for p in self.model.parameters() if p.requires_grad]
        optim = config.optim
        self.optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        warmup = max(optim.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0
        )
        self.sampler = sampler or components.build_sampler(
            config.rollout, self.policy, self.tokenizer, config.model.name_or_path
        )
        self.sandbox = executor or components.build_sandbox(config.rollout)
        self.stream = ProblemStream(components.load_train_problems(config.data, config.seed), config.seed)
        self.eval_problems = components.load_eval_problems(config.data)
        self.system_prompt = components.system_prompt_for(config.data)
        uses_shaping = config.algo.shaping and config.algo.algo == "gtpo"
        self.similarity = get_similarity(config.algo.similarity) if uses_shaping else None
        self.step = 0
        if config.resume:
            self._resume()
        self.logger = None
        if self.ctx.is_main:
            (self.run_dir / "config.json").write_text(json.dumps(to_dict(config), indent=2))
            self.logger = MetricLogger(self.run_dir, config.loggers, to_dict(config))

    # ----------------------------------------------------------------------------------------------- loop
    def train(self) -> dict[str, float]:
        """Run to ``cfg.steps``; returns the last step's metrics (with the last evaluation's)."""
        cfg = self.cfg
        last: dict[str, float] = {}
        if self.step == 0 and cfg.eval_every and self.eval_problems:
            self._log(0, self.evaluate().metrics())
        bar = _progress(cfg.progress and self.ctx.is_main, initial=self.step, total=cfg.steps)
        try:
            while self.step < cfg.steps:
                metrics = self.train_step()
                self.step += 1
                if self._due(cfg.eval_every) and self.eval_problems:
                    metrics.update(self.evaluate().metrics())
                self._log(self.step, metrics)
                if self._due(cfg.save_every):
                    self.save()
                last = metrics
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(_postfix(metrics))
        finally:
            if bar is not None:
                bar.close()
        return last

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log(step, metrics)

    def _due(self, every: int) -> bool:
        return self.step == self.cfg.steps or (every > 0 and self.step % every == 0)

    def train_step(self) -> dict[str, float]:
        with components.autocast(self.cfg.model.dtype, self.device):
            return self._train_step()

    def _train_step(self) -> dict[str, float]:
        cfg, algo = self.cfg, self.cfg.algo
        start = time.perf_counter()
        problems = self.stream.take(cfg.rollout.problems_per_step)
        # Trajectory j samples problem j // G; this rank generates its round-robin share of the batch.
        total = len(problems) * cfg.rollout.group_size
        local_index = shard_indices(total, self.ctx)
        local, timings = self._rollout([problems[j // cfg.rollout.group_size] for j in local_index], local_index)
        for trajectory, j in zip(local, local_index, strict=True):
            trajectory.group_id = j // cfg.rollout.group_size
        rollout_s = time.perf_counter() - start

        # Groups are normalized whole: every rank gathers all turn records and computes all advantages.
        everyone = gather_objects([strip_tokens(t) for t in local], local_index, total, self.ctx)
        credit = assign_credit(
            everyone,
            algo=algo.algo,
            gamma=algo.gamma,
            adv_norm=algo.adv_norm,
            scale_by_std=algo.scale_by_std,
            format_penalty=algo.format_penalty,
            no_call_penalty=algo.no_call_penalty,
            shaping=algo.shaping,
            shaping_alpha=algo.shaping_alpha,
            similarity=self.similarity,
        )
        batch = collate(local, self.tokenizer.pad_token_id)
        turn_advantages = credit.turn_advantages[local_index]
        advantages = turns_to_tokens(turn_advantages, batch.turn_ids)
        loss_mask = batch.loss_mask.to(torch.float32)
        if cfg.rollout.filter_void:
            keep = torch.tensor([not is_void_trajectory(t) for t in local], dtype=torch.float32)
            loss_mask = loss_mask * keep[:, None]
        update_start = time.perf_counter()
        update_metrics = self._update(batch, advantages, loss_mask)
        update_s = time.perf_counter() - update_start

        world = self.ctx.world_size
        generated = all_reduce_sum(float(batch.loss_mask.sum().item()), self.ctx, self.device)
        processed = all_reduce_sum(float(batch.attention_mask.sum().item()), self.ctx, self.device)
        metrics = {
            **rollout_metrics(everyone),
            **credit.metrics,
            **update_metrics,
            "perf/step_s": time.perf_counter() - start,
            "perf/rollout_s": rollout_s,
            "perf/update_s": update_s,
            "perf/gen_tokens_per_s": generated / max(timings.get("generation_s", rollout_s) * world, 1e-9),
            "perf/train_tokens_per_s": processed * cfg.optim.update_epochs / max(update_s, 1e-9),
            "optim/lr": self.scheduler.get_last_lr()[0],
        }
        metrics.update({f"perf/{k}": v for k, v in timings.items()})
        return metrics

    def _rollout(self, problems: list[Any], indices: list[int]) -> tuple[list[Trajectory], dict[str, float]]:
        """One trajectory per entry of ``problems`` (a problem appears G times across the ranks);
        ``indices`` are their positions in the global batch."""
        r = self.cfg.rollout
        with torch.no_grad():
            result = rollout(
                problems,
                1,
                self.sampler,
                self.tokenizer,
                self.sandbox,
                system_prompt=self.system_prompt,
                max_turns=r.max_turns,
                max_total_tokens=r.max_total_tokens,
                max_new_tokens_per_turn=r.max_new_tokens_per_turn,
                temperature=r.temperature,
                top_p=r.top_p,
                invalid_statuses=frozenset(self.cfg.algo.invalid_statuses),
                seed=step_seed(self.cfg.seed, self.step) + self.ctx.rank,
            )
        return result.trajectories, result.timings.as_dict()

    # --------------------------------------------------------------------------------------------- update
    def _logprobs(self, model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
        mb = self.cfg.optim.micro_batch_size
        with torch.no_grad():
            parts = [
                token_logprobs(model, m.input_ids, m.attention_mask, self.cfg.rollout.temperature)[0]
                for m in batch.split(mb)
            ]
        return torch.cat(parts)

    def _update(self, batch: TokenBatch, advantages: torch.Tensor, loss_mask: torch.Tensor) -> dict[str, float]:
        """Clipped-surrogate update with gradient accumulation; under torchrun the gradients of all ranks
        add up to the gradient of one process holding the whole batch."""
        cfg, algo = self.cfg, self.cfg.algo
        batch = batch.to(self.device)
        advantages, loss_mask = advantages.to(self.device), loss_mask.to(self.device)
        old_logp = self._logprobs(self.model, batch)
        ref_logp = self._logprobs(self.ref_model, batch) if self.ref_model is not None else None
        local_denominator = _denominator(algo.loss_agg, loss_mask, cfg.rollout.max_total_tokens)
        denominator = max(all_reduce_sum(local_denominator, self.ctx, self.device), 1.0)
        mb = cfg.optim.micro_batch_size
        rows = batch.input_ids.shape[0]
        # Every rank runs the same number of forward/backward passes (DDP/FSDP collectives must match);
        # a rank with fewer rows repeats its first rows with a zero mask, which adds nothing to the gradient.
        micro_steps = int(all_reduce_max(math.ceil(rows / mb), self.ctx, self.device))
        sums: dict[str, float] = {}
        count = 0
        grad_norm = total_loss = 0.0
        for _ in range(cfg.optim.update_epochs):
            for i in range(micro_steps):
                sl = slice(i * mb, (i + 1) * mb) if i * mb < rows else slice(0, min(mb, rows))
                weight = 1.0 if i * mb < rows else 0.0
                logp, entropy = token_logprobs(
                    self.model,
                    batch.input_ids[sl],
                    batch.attention_mask[sl],
                    cfg.rollout.temperature,
                    with_entropy=True,
                )
                loss, m = clipped_policy_loss(
                    logp,
                    old_logp[sl],
                    advantages[sl],
                    loss_mask[sl] * weight,
                    clip_low=algo.clip_low,
                    clip_high=algo.clip_high,
                    dual_clip=algo.dual_clip,
                    agg=algo.loss_agg,
                    denominator=denominator,
                    ref_logp=None if ref_logp is None else ref_logp[sl],
                    kl_coef=algo.kl_coef,
                    entropy=entropy,
                    entropy_coef=algo.entropy_coef,
                )
                # DDP/FSDP average gradients over ranks; the loss already divides by the global
                # normalizer, so scale back up to make the result a sum over ranks.
                last = i == micro_steps - 1
                with _no_sync(self.model, skip=not last):
                    (loss * self.ctx.world_size).backward()
                if weight:
                    total_loss += loss.item()
                    for key, value in m.items():
                        sums[key] = sums.get(key, 0.0) + float(value)
                    count += 1
            params = [p for p in self.model.parameters() if p.requires_grad]
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if hasattr(self.sampler, "sync_weights"):  # an engine with its own copy of the weights (vLLM)
            self.sampler.sync_weights(inference_weights(self.model).items())
        out = {f"loss/{k}": v / max(count, 1) for k, v in sums.items()}
        out["loss/total"] = total_loss / cfg.optim.update_epochs
        out["optim/grad_norm"] = grad_norm
        return out

    # ------------------------------------------------------------------------------------ eval, ckpt
    def evaluate(self) -> EvalReport:
        """Held-out evaluation, problems sharded across ranks and the results gathered on every rank."""
        with components.autocast(self.cfg.model.dtype, self.device):
            report = self._evaluate()
        if self.ctx.is_main:  # per-problem results, for comparisons paired by problem (gtpo compare)
            append_record(self.run_dir / EVAL_FILE, eval_record(report, self.step))
        return report

    def _evaluate(self) -> EvalReport:
        r = self.cfg.rollout
        index = shard_indices(len(self.eval_problems), self.ctx)
        report = evaluate_problems(
            [self.eval_problems[i] for i in index],
            name=self.cfg.data.eval,
            sampler=self.sampler,
            tokenizer=self.tokenizer,
            executor=self.sandbox,
            system_prompt=self.system_prompt,
            k=r.eval_samples,
            temperature=r.eval_temperature,
            max_turns=r.max_turns,
            max_new_tokens_per_turn=r.max_new_tokens_per_turn,
            max_total_tokens=r.max_total_tokens,
            seed=self.cfg.seed,
        )
        if not self.ctx.enabled:
            return report
        k, total = report.k, len(self.eval_problems)
        rows = [
            (row, [strip_tokens(t) for t in report.trajectories[i * k : (i + 1) * k]])
            for i, row in enumerate(report.per_problem)
        ]
        gathered = gather_objects(rows, index, total, self.ctx)
        return EvalReport(
            name=report.name,
            k=k,
            per_problem=[row for row, _ in gathered],
            trajectories=[t for _, trajs in gathered for t in trajs],
        )

    def save(self) -> Path | None:
        """Every rank calls this (FSDP gathers shards for it); rank 0 writes."""
        state = {"stream": self.stream.state_dict()}
        return save_checkpoint(
            self.run_dir,
            self.step,
            self.model,
            self.optimizer,
            self.scheduler,
            state,
            keep=self.cfg.keep_checkpoints,
        )

    def _resume(self) -> None:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise ConfigError(
                f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}; run without --resume to start"
            )
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        self.stream.load_state_dict(state["stream"])
        self.step = int(state["step"])
        if self.ctx.is_main:
            _truncate_metrics(self.run_dir / METRICS_FILE, self.step)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
        self.sandbox.close()
        barrier(self.ctx)


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


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from: they will be logged again."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _progress(enabled: bool, initial: int, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(initial=initial, total=total, desc="gtpo", unit="step")


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    keys = {"reward/accuracy": "acc", "reward/mean": "reward", "eval/avg@1": "eval"}
    return {short: f"{metrics[k]:.3f}" for k, short in keys.items() if k in metrics}
