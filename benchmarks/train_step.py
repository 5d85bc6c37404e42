"""Training-step benchmark: time per step and tokens/s, GTPO's overhead over GRPO, the update against the padded
update it replaced, and TRL's GRPOTrainer.

Run: ``python benchmarks/train_step.py [--steps 3] [--update-repeats 5] [--trl]``

1. ``gtpo``/``grpo``: full steps of the embedded default (rollout + credit + update) with each algorithm.
2. GTPO overhead: the credit assignment (rewards, shaping, returns, advantages) of GTPO and of GRPO on the
   *same* trajectories, repeated, as a share of the measured step time. This isolates what GTPO adds; whole
   steps differ between the two runs anyway because the policies sample different trajectories.
3. Update: on the same rollout batches of the embedded default, the trainer's update (``gtpo.training.update``: packed
   micro-batches, chunked head, no old-log-prob pass at one epoch, no entropy) against the padded update it
   replaced (``padded_update`` below, as the trainer ran it up to commit 3ef4f66), interleaved and repeated.
4. ``--trl``: TRL's GRPOTrainer on the same tiny model, same prompts x group size and completion budget,
   single turn (TRL has no code-execution loop), with the ratio of step times printed (in this process;
   ``benchmarks/trl_step.py`` runs each side in its own, with peak memory, on any model).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

import torch

from gtpo.config import TrainConfig
from gtpo.method.credit import assign_credit
from gtpo.method.losses import clipped_policy_loss
from gtpo.method.similarity import tfidf_code_similarity
from gtpo.model.policy import token_logprobs
from gtpo.rollout.groups import RoundShare
from gtpo.trainer import Trainer
from gtpo.training.batch import TokenBatch
from gtpo.training.update import _denominator


def credit_settings(algo: str) -> dict:
    return dict(
        algo=algo,
        gamma=0.9,
        adv_norm="group",
        scale_by_std=True,
        format_penalty=0.1,
        no_call_penalty=0.1,
        shaping=algo == "gtpo",
        shaping_alpha=0.5,
        similarity=tfidf_code_similarity,
    )


def run_steps(algo: str, steps: int, base: TrainConfig) -> tuple[list[dict], Trainer]:
    with tempfile.TemporaryDirectory() as tmp:
        config = dataclasses.replace(
            base,
            algo=dataclasses.replace(base.algo, algo=algo),
            output_dir=tmp,
            eval_every=0,
            save_every=0,
            progress=False,
        )
        trainer = Trainer(config)
        try:
            metrics = [trainer.train_step() for _ in range(steps)]
        finally:
            trainer.close()
    return metrics, trainer


def time_credit(trajectories: list, algo: str, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        assign_credit(trajectories, **credit_settings(algo))
    return (time.perf_counter() - start) / repeats


def padded_update(trainer: Trainer, batch: TokenBatch, advantages: torch.Tensor, loss_mask: torch.Tensor) -> None:
    """The update as the trainer ran it before packing: an old-log-prob pass, then micro-batches of 16 rows
    padded to the batch's longest trajectory, full logits with entropy, clipped loss, backward, AdamW."""
    cfg, algo, rows = trainer.cfg, trainer.cfg.algo, 16
    temperature = cfg.rollout.temperature
    parts = [batch[lo : lo + rows] for lo in range(0, batch.input_ids.shape[0], rows)]
    with torch.no_grad():
        old = torch.cat([token_logprobs(trainer.model, m.input_ids, m.attention_mask, temperature)[0] for m in parts])
    denominator = _denominator(algo.loss_agg, loss_mask, cfg.rollout.max_total_tokens)
    for i, m in enumerate(parts):
        sl = slice(i * rows, (i + 1) * rows)
        logp, entropy = token_logprobs(trainer.model, m.input_ids, m.attention_mask, temperature, with_entropy=True)
        loss, _ = clipped_policy_loss(
            logp, old[sl], advantages[sl], loss_mask[sl], clip_low=algo.clip_low, clip_high=algo.clip_high,
            agg=algo.loss_agg, denominator=denominator, entropy=entropy, entropy_coef=algo.entropy_coef,
        )  # fmt: skip
        loss.backward()
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), cfg.optim.grad_clip)
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def compare_updates(base: TrainConfig, batches: int, repeats: int) -> None:
    """Seconds per update, packed (the trainer's) vs padded (before), on the same default rollout batches."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(dataclasses.replace(base, output_dir=tmp, eval_every=0, save_every=0, progress=False))
        captured = []
        update = trainer._update
        trainer._update = lambda *args: captured.append(args) or update(*args)
        try:
            for _ in range(batches):
                trainer.train_step()
            times: dict[str, list[float]] = {"padded": [], "packed": []}
            for _ in range(repeats):
                for batch, advantages, loss_mask in captured:
                    for name, run in (("padded", padded_update), ("packed", lambda t, *a: update(*a))):
                        start = time.perf_counter()
                        run(trainer, batch, advantages, loss_mask)
                        times[name].append(time.perf_counter() - start)
        finally:
            trainer.close()
    tokens = statistics.mean(int(b.attention_mask.sum()) for b, _, _ in captured)
    width = statistics.mean(b.input_ids.numel() for b, _, _ in captured)
    padded, packed = statistics.median(times["padded"]), statistics.median(times["packed"])
    print(
        f"update on {len(captured)} default batches ({tokens:.0f} real tokens, {width:.0f} padded, per batch), "
        f"{repeats} interleaved repeats: padded (before) {padded:.3f} s, packed (now) {packed:.3f} s "
        f"(medians); speedup {padded / packed:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--trl", action="store_true", help="also time TRL's GRPOTrainer")
    parser.add_argument("--update-batches", type=int, default=2, help="rollout batches for the update comparison")
    parser.add_argument("--update-repeats", type=int, default=5, help="interleaved timings of each update")
    parser.add_argument("--update-only", action="store_true", help="only the packed vs padded update comparison")
    args = parser.parse_args()
    base = TrainConfig()
    if args.update_only:
        compare_updates(base, args.update_batches, args.update_repeats)
        return

    results = {}
    for algo in ("gtpo", "grpo"):
        metrics, _ = run_steps(algo, args.steps, base)
        results[algo] = metrics
        step_s = statistics.mean(m["perf/step_s"] for m in metrics)
        gen_tps = statistics.mean(m["perf/gen_tokens_per_s"] for m in metrics)
        train_tps = statistics.mean(m["perf/train_tokens_per_s"] for m in metrics)
        print(
            f"{algo}: {step_s:.2f} s/step  generation {gen_tps:.0f} tok/s  "
            f"update {train_tps:.0f} tok/s  (mean of {args.steps} steps)"
        )

    # GTPO overhead on identical trajectories: one fresh rollout batch, credit computed both ways.
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(dataclasses.replace(base, output_dir=tmp, eval_every=0, progress=False))
        problems = trainer.stream.take(base.rollout.problems_per_step)
        g = base.rollout.group_size
        copies = [p for p in problems for _ in range(g)]
        indices = list(range(len(copies)))
        share = RoundShare(copies, [j // g for j in indices], indices, seed=base.seed)
        trajectories, _ = trainer.roll(share)
        trainer.close()
    gtpo_s = time_credit(trajectories, "gtpo", repeats=20)
    grpo_s = time_credit(trajectories, "grpo", repeats=20)
    step_s = statistics.mean(m["perf/step_s"] for m in results["gtpo"])
    print(
        f"credit assignment on the same {len(trajectories)} trajectories: GTPO {gtpo_s * 1e3:.2f} ms, "
        f"GRPO {grpo_s * 1e3:.2f} ms; GTPO overhead = {(gtpo_s - grpo_s) / step_s * 100:.3f}% of a step"
    )
    compare_updates(base, args.update_batches, args.update_repeats)
    if args.trl:
        from trl_step import trl_steps  # this folder's script: TRL's side of benchmarks/trl_step.py

        trl_times = trl_steps(base, "tiny", args.steps + 1)
        trl_s = statistics.mean(trl_times[1:])  # the first step warms up
        grpo_step = statistics.mean(m["perf/step_s"] for m in results["grpo"])
        print(
            f"TRL GRPOTrainer (single turn, no tool): {trl_s:.2f} s/step; "
            f"gtpo GRPO step / TRL step = {grpo_step / trl_s:.2f}"
        )


if __name__ == "__main__":
    main()
