"""The training loop: rollout -> credit assignment -> clipped policy update -> log / evaluate / checkpoint.

The trainer orchestrates and holds no formula: rewards, returns and advantages are the pure functions of
``gtpo.method`` (reached through ``gtpo.method.credit``), the loss is ``gtpo.method.losses`` (reached through
``gtpo.training.update``).

Reproducibility: every step's sampling is seeded from (seed, step), and checkpoints carry the RNG, optimizer,
scheduler and data-stream states, so a run resumed from step N continues exactly as if never interrupted.
Dropout is left off (the model stays in eval mode) because it would make the importance ratio differ from 1
on the first update epoch for reasons that have nothing to do with the policy changing.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtpo import components
from gtpo.config import TrainConfig, validate
from gtpo.data.stream import ProblemStream
from gtpo.distributed import (
    DistContext,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    init_distributed,
    peer_failure,
    shard_indices,
    wrap_model,
)
from gtpo.envs.sources import (
    env_factory,
    eval_problems,
    eval_source,
    is_env_source,
    needs_sandbox,
    system_prompt,
    train_problems,
)
from gtpo.eval.evaluate import EvalReport, eval_record, evaluate_sharded
from gtpo.method.advantages import turns_to_tokens
from gtpo.method.credit import bind_credit
from gtpo.method.similarity import get_similarity
from gtpo.model.policy import inference_weights
from gtpo.model.precision import autocast, computes_in_bf16, resolve_device
from gtpo.model.source import check_model_source
from gtpo.rollout.groups import RolloutFn, StepGroups, collect_groups, roll_round
from gtpo.rollout.metrics import is_void_trajectory, rollout_metrics
from gtpo.rollout.prompts import fitting_prompts
from gtpo.rollout.spec import episode_spec
from gtpo.run.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from gtpo.run.export import export_final_policy
from gtpo.run.recorder import RunRecorder
from gtpo.run.stop import StopRequests
from gtpo.training.batch import TokenBatch, collate
from gtpo.training.memory import AUTO_MAX_TOKENS
from gtpo.training.update import PolicyUpdate, build_optimizer
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
        process group read from torchrun's environment.

        Everything that can fail on bad input (run directory, model path, data files) is checked before the
        run directory is created or an earlier run deleted, so a failed start leaves nothing behind."""
        self.cfg = validate(config)
        self.ctx = ctx or init_distributed(timeout_s=config.dist_timeout_s)
        self.run_dir = Path(config.output_dir)
        self.recorder = RunRecorder(self.cfg, self.ctx.is_main)
        check_model_source(config.model.name_or_path)  # a missing model first: no folder refusal hides it
        self.recorder.check()  # before anything slow: the folder (earlier run, writable, checkpoint to resume)
        seed_everything(config.seed)
        # Data before the model: a malformed file fails in seconds, not after a model has loaded.
        problems = train_problems(config.data, config.seed)
        self.eval_problems = eval_problems(config.data)
        self.system_prompt = system_prompt(config.data)
        self.device = resolve_device(config.device, self.ctx.local_rank)
        policy, self.tokenizer = components.build_policy(config.model, self.device)
        fitting, self.overlong_prompts = problems, 0
        if not is_env_source(config.data.train):  # an environment's prompt is known only once it is reset
            fitting, self.overlong_prompts = fitting_prompts(
                problems, self.tokenizer, self.system_prompt, config.rollout.max_total_tokens
            )
        self.stream = ProblemStream(fitting, config.seed)
        self._train_problems = len(problems)
        policy.eval()
        self.policy = policy
        """The plain module: generation, log-probs without gradient, checkpoints."""
        bf16 = computes_in_bf16(config.model.dtype, self.device)
        self.model = wrap_model(policy, self.ctx, config.strategy, bf16=bf16)
        """What the update runs forward/backward through (DDP/FSDP2 under torchrun, else the policy)."""
        self.ref_model = components.build_reference(config.model, self.device) if config.algo.kl_coef > 0 else None
        self.optimizer, self.scheduler = build_optimizer(self.model, config.optim, self.device)
        self.updater = PolicyUpdate(
            config,
            self.model,
            self.optimizer,
            self.scheduler,
            ctx=self.ctx,
            device=self.device,
            ref_model=self.ref_model,
        )
        self.sampler = sampler or components.build_sampler(config, self.policy, self.tokenizer)
        sources = [config.data.train, eval_source(config.data)]
        sandboxed = any(source and needs_sandbox(source) for source in sources)
        self.sandbox = executor or (components.build_sandbox(config.sandbox) if sandboxed else None)
        """The math tool environment's sandbox; None when every source is an environment of its own."""
        r = config.rollout
        self.train_envs = env_factory(
            config.data.train,
            "data.train",
            sandbox=self.sandbox,
            max_turns=r.max_turns,
            invalid_statuses=config.algo.invalid_statuses,
        )
        """A fresh environment per training trajectory (the math tool environment for question/answer data)."""
        self.eval_envs = env_factory(eval_source(config.data), "data.eval", sandbox=self.sandbox, max_turns=r.max_turns)
        """The same for held-out runs, with the default invalid-call statuses."""
        self.episode = episode_spec(config, self.system_prompt)
        """The rules of a training episode; held-out runs use ``episode.evaluation(...)``."""
        uses_shaping = config.algo.shaping and config.algo.algo == "gtpo"
        similarity = get_similarity(config.algo.similarity) if uses_shaping else None
        self.credit, self.score = bind_credit(config, similarity)
        """Credit for a batch of groups, and the trajectory reward that filtering by score compares."""
        self.roll: RolloutFn = functools.partial(
            roll_round, sampler=self.sampler, tokenizer=self.tokenizer, make_env=self.train_envs, spec=self.episode
        )
        """How a round's share is rolled out (``gtpo.rollout.groups``); replace it to script rollouts."""
        self.step = 0
        self.finished = False
        """A resumed run already at ``steps``: ``train`` does nothing, and nothing in its folder changes."""
        self._last_batch: tuple[list[Trajectory], Any] | None = None
        self._evaluation_owed = True
        """The current step is due a held-out evaluation not yet done: step 0 of a fresh run, a step that
        ``eval_every`` names, or one whose evaluation a stop abandoned (kept in the checkpoint, so a resumed run
        does it first and has the same held-out curve as an uninterrupted one)."""
        self._stop: StopRequests | None = None
        self._nonfinite_streak = 0
        """Steps in a row whose update was skipped as non-finite (``optim.nonfinite_stop`` end the run)."""
        if config.resume:
            self._resume()
        if not self.finished:
            self.recorder.open()  # the folder is created only now that everything has loaded

    # ----------------------------------------------------------------------------------------------- loop
    def train(self) -> dict[str, float]:
        """Run to ``cfg.steps``; returns the last step's metrics (with the last evaluation's).

        Ctrl-C or SIGTERM: the step in progress finishes (an evaluation in progress is abandoned), a
        checkpoint is written and ``TrainingStopped`` is raised; a second signal exits at once. At the end the
        final policy is written as a Hugging Face folder (``cfg.export``), with the run's report."""
        cfg, recorder = self.cfg, self.recorder
        if self.finished:
            recorder.already_finished(self.step)
            return {}
        recorder.start(len(self.eval_problems))
        engine = getattr(self.sampler, "engine", None)
        policy_dtype = next(self.policy.parameters()).dtype
        if engine is not None and engine.dtype != policy_dtype:
            sampled, trained = (str(d).removeprefix("torch.") for d in (engine.dtype, policy_dtype))
            recorder.console.line(
                f"gtpo: the engine samples in {sampled}, the trainer's weights are {trained} "
                f"(generation.engine_dtype {cfg.generation.engine_dtype}); their gap is logged as loss/is_mismatch_*"
            )
        updater = self.updater
        if updater.bytes_per_token is not None and updater.token_budget < AUTO_MAX_TOKENS:
            recorder.console.line(
                f"gtpo: micro-batches of up to {updater.token_budget:,} tokens: the model keeps "
                f"{updater.bytes_per_token / 2**20:.2f} MiB of activations a token for the backward "
                f"(optim.activation_gb {cfg.optim.activation_gb:g}; optim.micro_batch_tokens sets a budget)"
            )
        if self.overlong_prompts:
            recorder.warn(
                f"{self.overlong_prompts} of {self._train_problems} training problems are left out: their prompt "
                f"(system prompt and question) fills rollout.max_total_tokens ({cfg.rollout.max_total_tokens}) "
                "before the model writes a token; raise --rollout.max-total-tokens to train on them"
            )
        start_step = self.step
        last: dict[str, float] = {}
        with StopRequests(notice=lambda text: recorder.console.line(text, err=True)) as stop:
            self._stop = stop
            try:
                if owed := self._owed_evaluation():
                    recorder.record(self.step, owed)
                recorder.console.open_bar(self.step, cfg.steps)
                stopping = self._stop_agreed()
                while self.step < cfg.steps and not stopping:
                    metrics = self.train_step()
                    self.step += 1
                    self._check_finite(metrics)
                    self._evaluation_owed = bool(cfg.eval_every and self.eval_problems) and self._due(cfg.eval_every)
                    metrics.update(self._owed_evaluation())  # the step's training metrics are kept either way
                    recorder.record(self.step, metrics)
                    stopping = self._stop_agreed()
                    if self._due(cfg.save_every) or stopping:
                        self.save()
                    last = metrics
            finally:
                recorder.console.close_bar()
                self._stop = None
            if stop.signum is not None:  # the report is written while a second signal still exits at once
                raise recorder.stopped(stop.signum, self.step, progressed=self.step > start_step)
        export_final_policy(
            self.model,
            self.tokenizer,
            self.run_dir,
            cfg.export,
            write=self.ctx.is_main,
            system_prompt=self.system_prompt,
        )
        recorder.finish(final=True)
        return last

    def _check_finite(self, metrics: dict[str, float]) -> None:
        """A skipped non-finite update is warned about; ``optim.nonfinite_stop`` of them in a row end the run."""
        if not metrics.get("optim/nonfinite_skipped"):
            self._nonfinite_streak = 0
            return
        self._nonfinite_streak += 1
        limit = self.cfg.optim.nonfinite_stop
        self.recorder.warn(
            f"step {self.step}: the loss or gradient was not finite (NaN/inf); the update was skipped and the "
            f"weights are unchanged ({self._nonfinite_streak} in a row; {limit} stop the run)"
        )
        if self._nonfinite_streak >= limit:
            checkpoint = latest_checkpoint(self.run_dir)
            kept = f"the last checkpoint ({checkpoint}) is intact" if checkpoint else "no checkpoint was written"
            self.recorder.record(self.step, metrics)
            self.recorder.finish(final=False)
            raise TrainingDiverged(
                f"stopped at step {self.step}: {limit} steps in a row had a non-finite loss or gradient and were "
                f"skipped; {kept}. Lower --optim.lr, or check the data and rollout.max_total_tokens"
            )

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop: all ranks leave the loop after the same step."""
        requested = self._stop is not None and self._stop.requested
        return all_reduce_max(float(requested), self.ctx, self.device) > 0

    def _owed_evaluation(self) -> dict[str, float]:
        """The owed evaluation's metrics; {} when none is owed (or evaluation is off) or a stop abandoned it,
        which leaves it owed."""
        if not (self._evaluation_owed and self.cfg.eval_every and self.eval_problems):
            return {}
        with contextlib.suppress(_EvaluationAbandoned):
            metrics = self._evaluation()
            self._evaluation_owed = False
            return metrics
        return {}

    def _evaluation(self) -> dict[str, float]:
        """Evaluate now (with a progress bar at step 0); abandoned if a stop is requested (single process)."""
        start = time.perf_counter()
        advance = self.recorder.console.eval_progress(self.step, len(shard_indices(len(self.eval_problems), self.ctx)))

        def progress(n: int) -> None:
            advance(n)
            if self._stop is not None and self._stop.requested and not self.ctx.enabled:
                raise _EvaluationAbandoned

        try:
            result = self.evaluate(progress)
        finally:
            self.recorder.console.close_eval_progress()
        return self.recorder.evaluation(
            self.step,
            result.metrics(),
            eval_record(result, self.step),
            result.trajectories,
            time.perf_counter() - start,
            self._last_batch,
        )

    def _due(self, every: int) -> bool:
        return self.step == self.cfg.steps or (every > 0 and self.step % every == 0)

    def train_step(self) -> dict[str, float]:
        with autocast(self.cfg.model.dtype, self.device):
            return self._train_step()

    def _train_step(self) -> dict[str, float]:
        cfg, _r = self.cfg, self.cfg.rollout
        start = time.perf_counter()
        sample = self._collect_groups()
        rollout_s = time.perf_counter() - start
        metrics = {**rollout_metrics(sample.generated), **sample.metrics}
        if not sample.kept:  # filter.groups found no group with signal within its cap: no update
            return {**metrics, "perf/step_s": time.perf_counter() - start, "perf/rollout_s": rollout_s}

        credit = self.credit(sample.kept, sample.kept_lengths)
        self._last_batch = (sample.kept, credit)  # shown in samples.jsonl at evaluations
        batch = collate(sample.local, self.tokenizer.pad_token_id)
        advantages = turns_to_tokens(credit.turn_advantages[sample.local_positions], batch.turn_ids)
        loss_mask = batch.loss_mask.to(torch.float32)
        trained = [not (cfg.filter.void and is_void_trajectory(t)) for t in sample.local]
        if cfg.overlong.mode == "mask":  # DAPO's overlong filtering: no loss on trajectories cut by the budget
            trained = [keep and t.finish_reason != "length" for keep, t in zip(trained, sample.local, strict=True)]
        loss_mask = loss_mask * torch.tensor(trained, dtype=torch.float32)[:, None]
        update_start = time.perf_counter()
        update_metrics = self._update(batch, advantages, loss_mask)
        update_s = time.perf_counter() - update_start

        world = self.ctx.world_size
        processed = all_reduce_sum(float(batch.attention_mask.sum().item()), self.ctx, self.device)
        metrics.update(
            {
                **credit.metrics,
                **update_metrics,
                "perf/step_s": time.perf_counter() - start,
                "perf/rollout_s": rollout_s,
                "perf/update_s": update_s,
                "perf/gen_tokens_per_s": sample.model_tokens
                / max(sample.timings.get("generation_s", rollout_s) * world, 1e-9),
                "perf/train_tokens_per_s": processed * cfg.optim.update_epochs / max(update_s, 1e-9),
                "optim/lr": self.scheduler.get_last_lr()[0],
            }
        )
        metrics.update({f"perf/{k}": v for k, v in sample.timings.items()})
        return metrics

    def _collect_groups(self) -> StepGroups:
        """This step's groups (``gtpo.rollout.groups``), rolled out by this run's sampler and environments."""
        r = self.cfg.rollout
        return collect_groups(
            self.stream.take,
            self.roll,
            self.ctx,
            problems_per_step=r.problems_per_step,
            group_size=r.group_size,
            max_total_tokens=r.max_total_tokens,
            filter_groups=self.cfg.filter.groups,
            max_extra_problems=self.cfg.filter.max_extra_problems,
            filter_metric=self.cfg.filter.metric,
            score=self.score,
            seed=step_seed(self.cfg.seed, self.step) + self.ctx.rank,
        )

    # --------------------------------------------------------------------------------------------- update
    def _update(self, batch: TokenBatch, advantages: torch.Tensor, loss_mask: torch.Tensor) -> dict[str, float]:
        """The clipped-surrogate update (``gtpo.training.update``); then engines with their own weights get the
        new ones."""
        metrics = self.updater(batch, advantages, loss_mask)
        self._sync_sampler()
        return metrics

    def _sync_sampler(self) -> None:
        """An engine with its own copy of the weights gets the policy's (after an update or a resume)."""
        if hasattr(self.sampler, "sync_weights"):
            self.sampler.sync_weights(inference_weights(self.model).items())

    # ------------------------------------------------------------------------------------ eval, ckpt
    def evaluate(self, progress: Any = None) -> EvalReport:
        """Held-out evaluation, problems sharded across ranks and the results gathered on every rank.
        ``progress(n)`` is called as each chunk of n problems finishes."""
        with autocast(self.cfg.model.dtype, self.device):
            return self._evaluate(progress)

    def _evaluate(self, progress: Any = None) -> EvalReport:
        return evaluate_sharded(
            self.eval_problems,
            self.ctx,
            name=eval_source(self.cfg.data),
            sampler=self.sampler,
            tokenizer=self.tokenizer,
            make_env=self.eval_envs,
            spec=self.episode.evaluation(self.cfg.eval.temperature),
            k=self.cfg.eval.samples,
            seed=self.cfg.seed,
            on_progress=progress,
        )

    def save(self) -> Path | None:
        """Every rank calls this (FSDP gathers shards for it); rank 0 writes."""
        state = {"stream": self.stream.state_dict(), "evaluation_owed": self._evaluation_owed}
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
        assert path is not None  # RunRecorder.check refused --resume without one
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        self.stream.load_state_dict(state["stream"])
        self._evaluation_owed = bool(state.get("evaluation_owed", False))  # absent in older checkpoints
        self._sync_sampler()
        self.step = int(state["step"])
        self.finished = self.step >= self.cfg.steps
        if not self.finished:
            self.recorder.resumed(self.step, path)

    def close(self) -> None:
        self.recorder.close()
        if self.sandbox is not None:
            self.sandbox.close()
        try:
            barrier(self.ctx)
        except Exception as err:  # a rank is gone: the error that ended the run has been reported already
            if not peer_failure(err):
                raise


class TrainingDiverged(RuntimeError):
    """Too many updates in a row were skipped as non-finite; the message says where the run stopped and why."""


class _EvaluationAbandoned(Exception):
    """A stop was requested during an evaluation: it is dropped, the checkpoint is not delayed by it."""
