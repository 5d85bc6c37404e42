"""gtpo's training step against TRL's GRPOTrainer on one model, each in a process of its own: seconds per step
and peak resident memory.

Run: ``python benchmarks/trl_step.py [--model tiny|smollm2-135m-instruct|PATH] [--steps 2]`` with TRL importable
(``pip install trl==1.16.0``; its pins may move transformers, so a separate environment whose ``trl`` package is
put on ``PYTHONPATH`` keeps gtpo's own untouched).

Both sides take the embedded default's batch shape and prompts: ``problems_per_step`` arithmetic problems x
``group_size`` samples, the task's system prompt, sampling at the default temperature. gtpo runs its GRPO step
(multi-turn: the model may call the Python sandbox, up to ``max_turns`` turns of ``max_new_tokens_per_turn``
tokens within ``max_total_tokens``); TRL has no tool loop, so its completions are single turns of up to two
turns' tokens (``2 x max_new_tokens_per_turn``), graded by the same ``\\boxed{}`` check. Each side runs
``--steps`` + 1 steps; the first (warm-up: allocator, thread pools) is printed apart and left out of the mean.
Peak memory is the process's peak resident set (``ru_maxrss``): model, optimizer, generation and their
temporaries; the sandbox's processes are not counted (they are small and TRL has none).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from gtpo.config import TrainConfig


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def gtpo_steps(base: TrainConfig, model: str, steps: int) -> list[float]:
    """Seconds of each of ``steps`` gtpo GRPO training steps (evaluation, checkpoints and export off)."""
    from train_step import run_steps  # this folder's training-step benchmark

    config = dataclasses.replace(base, model=dataclasses.replace(base.model, name_or_path=model))
    metrics, _ = run_steps("grpo", steps, config)
    return [m["perf/step_s"] for m in metrics]


def trl_steps(base: TrainConfig, model_name: str, steps: int) -> list[float]:
    """Seconds of each of ``steps`` GRPOTrainer steps on the same model, prompts, group size and token budget."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from gtpo.data.grading import grade
    from gtpo.model.policy import load_policy
    from gtpo.model.source import model_path
    from gtpo.tasks.arith import SYSTEM_PROMPT, train_problems
    from gtpo.tools import extract_boxed

    model, tokenizer = load_policy(model_path(model_name))
    problems = train_problems(seed=0)[: base.rollout.problems_per_step * steps]
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

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.start)

    group = base.rollout.group_size
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=base.rollout.problems_per_step * group,
            num_generations=group,
            max_completion_length=base.rollout.max_new_tokens_per_turn * 2,
            temperature=base.rollout.temperature,
            max_steps=steps,
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
        trainer.add_callback(Clock())
        trainer.train()
    return times


def run_side(side: str, model: str, steps: int) -> dict:
    """One side's step times and peak memory, measured in this process."""
    base = TrainConfig()
    times = (gtpo_steps if side == "gtpo" else trl_steps)(base, model, steps)
    return {"side": side, "times": times, "peak_gib": peak_rss_gib()}


def in_child(side: str, model: str, steps: int) -> dict:
    """``run_side`` in a fresh process of this script (so each side's peak memory is its own)."""
    command = [sys.executable, __file__, "--model", model, "--steps", str(steps), "--side", side]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        sys.exit(f"the {side} side failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a shipped or prepared model's name, or a folder")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per side, after one warm-up step")
    parser.add_argument("--side", choices=("gtpo", "trl"), help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.model, args.steps + 1)))
        return
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("TRL is not importable here: `pip install trl==1.16.0` (or put a TRL install on PYTHONPATH)")
    base = TrainConfig()
    print(
        f"model {args.model}: {base.rollout.problems_per_step} problems x {base.rollout.group_size} samples a step, "
        f"gtpo {base.rollout.max_new_tokens_per_turn} tokens a turn within {base.rollout.max_total_tokens}, TRL "
        f"{2 * base.rollout.max_new_tokens_per_turn} tokens single-turn; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    results = {side: in_child(side, args.model, args.steps) for side in ("gtpo", "trl")}
    for side, result in results.items():
        first, later = result["times"][0], result["times"][1:]
        print(
            f"{side:5s} first step {first:7.1f} s  later steps mean {statistics.mean(later):7.1f} s "
            f"({', '.join(f'{t:.1f}' for t in later)})  peak memory {result['peak_gib']:.2f} GiB"
        )
    ratio = statistics.mean(results["gtpo"]["times"][1:]) / statistics.mean(results["trl"]["times"][1:])
    memory = results["gtpo"]["peak_gib"] / results["trl"]["peak_gib"]
    print(f"gtpo / TRL: step time {ratio:.2f}x, peak memory {memory:.2f}x; load average {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
