"""Training-step benchmark: time per step and tokens/s, GTPO's overhead over GRPO, and TRL's GRPOTrainer.

Run: ``python benchmarks/train_step.py [--steps 3] [--trl]``

1. ``gtpo``/``grpo``: full steps of the embedded default (rollout + credit + update) with each algorithm.
2. GTPO overhead: the credit assignment (rewards, shaping, returns, advantages) of GTPO and of GRPO on the
   *same* trajectories, repeated, as a share of the measured step time. This isolates what GTPO adds; whole
   steps differ between the two runs anyway because the policies sample different trajectories.
3. ``--trl``: TRL's GRPOTrainer on the same tiny model, same prompts x group size and completion budget,
   single turn (TRL has no code-execution loop), with the ratio of step times printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

from gtpo.config import TrainConfig
from gtpo.credit import assign_credit
from gtpo.similarity import tfidf_code_similarity
from gtpo.trainer import Trainer


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


def trl_step_time(base: TrainConfig, steps: int) -> float:
    """Seconds per GRPOTrainer step on the tiny model, matching our batch shape (single-turn)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from gtpo.components import model_path
    from gtpo.grading import grade
    from gtpo.policy import load_policy
    from gtpo.tasks.arith import SYSTEM_PROMPT, train_problems
    from gtpo.tools import extract_boxed

    model, tokenizer = load_policy(model_path("tiny"))
    problems = train_problems(seed=0)[: base.rollout.problems_per_step * (steps + 1)]
    answers = {p.question: p.answer for p in problems}
    data = Dataset.from_list(
        [
            {"prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p.question}]}
            for p in problems
        ]
    )

    def reward(prompts, completions, **_):
        out = []
        for prompt, completion in zip(prompts, completions, strict=True):
            text = completion[0]["content"] if isinstance(completion, list) else completion
            out.append(float(grade(extract_boxed(text), answers[prompt[-1]["content"]])))
        return out

    group = base.rollout.group_size
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=base.rollout.problems_per_step * group,
            num_generations=group,
            max_completion_length=base.rollout.max_new_tokens_per_turn * 2,
            max_steps=steps + 1,
            learning_rate=base.optim.lr,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            bf16=False,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tokenizer
        )
        times: list[float] = []
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.t = time.perf_counter()

            def on_step_end(self, *a, **k):
                times.append(time.perf_counter() - self.t)

        trainer.add_callback(Clock())
        trainer.train()
    return statistics.mean(times[1:]) if len(times) > 1 else times[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--trl", action="store_true", help="also time TRL's GRPOTrainer")
    args = parser.parse_args()
    base = TrainConfig()

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
        copies = [p for p in problems for _ in range(base.rollout.group_size)]
        trajectories, _ = trainer._rollout(copies, list(range(len(copies))))
        for j, t in enumerate(trajectories):
            t.group_id = j // base.rollout.group_size
        trainer.close()
    gtpo_s = time_credit(trajectories, "gtpo", repeats=20)
    grpo_s = time_credit(trajectories, "grpo", repeats=20)
    step_s = statistics.mean(m["perf/step_s"] for m in results["gtpo"])
    print(
        f"credit assignment on the same {len(trajectories)} trajectories: GTPO {gtpo_s * 1e3:.2f} ms, "
        f"GRPO {grpo_s * 1e3:.2f} ms; GTPO overhead = {(gtpo_s - grpo_s) / step_s * 100:.3f}% of a step"
    )
    if args.trl:
        trl_s = trl_step_time(base, args.steps)
        grpo_step = statistics.mean(m["perf/step_s"] for m in results["grpo"])
        print(
            f"TRL GRPOTrainer (single turn, no tool): {trl_s:.2f} s/step; "
            f"gtpo GRPO step / TRL step = {grpo_step / trl_s:.2f}"
        )


if __name__ == "__main__":
    main()
