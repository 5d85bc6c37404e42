"""``gtpo eval``: score a model or a training checkpoint on benchmarks, with tool use (or without).

Same rollout, sandbox and TIR protocol as training (``gtpo.evaluate.evaluate_problems``). Writes
``results.md``, ``results.json`` and one ``trajectories_<benchmark>.jsonl`` per benchmark into the output
directory; ``--compare A B`` prints two such directories side by side with the paired difference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from gtpo import components
from gtpo.checkpoint import latest_checkpoint
from gtpo.config import ConfigError, DataConfig, ModelConfig, RolloutConfig, from_dict
from gtpo.data import BENCHMARKS, load_benchmark, load_problems
from gtpo.eval_report import compare_runs, markdown_table, write_results
from gtpo.evaluate import EvalReport, evaluate_problems
from gtpo.types import ExecResult, Problem

NO_TOOL_PROMPT = "Solve the problem step by step. Put the final answer in \\boxed{}."


@dataclass
class EvalConfig:
    model: str = "tiny"
    """Model to score: "tiny", a hub name or a local directory."""
    checkpoint: str | None = None
    """A gtpo checkpoint (runs/NAME/checkpoints/step_0000060) or a run directory (runs/NAME: its newest
    checkpoint): the run's model with the trained weights."""
    benchmarks: tuple[str, ...] = ("arith-heldout",)
    """Benchmarks by name: arith-heldout, multistep-heldout, aime24, aime25, amc23, math500, svamp, gsm8k."""
    data_dir: str | None = None
    """Folder with local benchmark files named <benchmark>.jsonl or .parquet (else HF datasets, online)."""
    data: str | None = None
    """Any .jsonl/.json/.parquet file of problems instead of named benchmarks."""
    question_field: str = "question"
    """Question column of --data."""
    answer_field: str = "answer"
    """Answer column of --data."""
    limit: int = 0
    """At most this many problems per benchmark (0 = all)."""
    k: int = 1
    """Samples per problem (avg@k, pass@k); k > 1 needs temperature > 0."""
    temperature: float = 0.0
    """Sampling temperature; 0 = greedy."""
    max_turns: int = 5
    """Turn cap (SimpleTIR evaluates with 10)."""
    max_new_tokens_per_turn: int = 512
    """Token cap per model message."""
    max_total_tokens: int = 4096
    """Cap on prompt + turns + tool outputs."""
    no_tools: bool = False
    """Score without the tool: one turn, no code is executed."""
    system_prompt: str | None = None
    """Override the system prompt."""
    output_dir: str = "runs/eval"
    """Where results and trajectories are written."""
    compare: tuple[str, str] | None = None
    """Two earlier output directories A B (baseline first) to compare: B - A with its 95% interval (nothing is
    evaluated then)."""
    device: str = "auto"
    """"auto", "cpu", "cuda", ..."""
    seed: int = 0
    """Sampling seed."""


class NoToolExecutor:
    """For --no-tools: a code block is never run; the model is told so (it ends the only turn anyway)."""

    def open_session(self) -> str:
        return "none"

    def run_batch(self, calls: list[tuple[str, str]]) -> list[ExecResult]:
        return [ExecResult("error", "tool use is disabled in this evaluation") for _ in calls]

    def close_session(self, session_id: str) -> None:
        return None

    def close(self) -> None:
        return None


def load_model(cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, object, str]:
    """(model, tokenizer, model name): from --checkpoint (its run's base + trained weights) or --model."""
    if cfg.checkpoint is None:
        model, tokenizer = components.build_policy(ModelConfig(name_or_path=cfg.model), device)
        return model.eval(), tokenizer, cfg.model
    path = Path(cfg.checkpoint)
    if (path / "config.json").exists():  # a run directory: take its newest complete checkpoint
        path = latest_checkpoint(path) or path
    run_config = path.parent.parent / "config.json"
    if not (path / "model.pt").exists() or not run_config.exists():
        raise ConfigError(
            f"--checkpoint {cfg.checkpoint}: expected a run directory with a finished checkpoint (runs/NAME) or "
            "one of its checkpoints (runs/NAME/checkpoints/step_0000060) with model.pt and the run's config.json"
        )
    model_cfg = from_dict(json.loads(run_config.read_text())).model
    model, tokenizer = components.build_policy(model_cfg, device)
    model.load_state_dict(torch.load(path / "model.pt", map_location=device, weights_only=True))
    return model.eval(), tokenizer, f"{model_cfg.name_or_path}@{path.name}"


def load_sets(cfg: EvalConfig) -> dict[str, list[Problem]]:
    if cfg.data:
        problems = load_problems(cfg.data, question_field=cfg.question_field, answer_field=cfg.answer_field)
        sets = {Path(cfg.data).stem: problems}
    else:
        sets = {}
        for name in cfg.benchmarks:
            if name in (components.ARITH_HELDOUT, components.MULTISTEP_HELDOUT):
                sets[name] = components.load_eval_problems(DataConfig(eval=name, eval_limit=0))
            elif name in BENCHMARKS:
                sets[name] = load_benchmark(name, path=_local_file(cfg.data_dir, name))
            else:
                known = ", ".join([components.ARITH_HELDOUT, components.MULTISTEP_HELDOUT, *BENCHMARKS])
                raise ConfigError(f"--benchmarks: unknown benchmark {name!r}; known: {known}")
    return {name: problems[: cfg.limit] if cfg.limit else problems for name, problems in sets.items()}


def _local_file(data_dir: str | None, name: str) -> str | None:
    if data_dir is None:
        return None
    for suffix in (".jsonl", ".parquet", ".json"):
        if (Path(data_dir) / f"{name}{suffix}").exists():
            return str(Path(data_dir) / f"{name}{suffix}")
    raise ConfigError(f"--data-dir {data_dir}: no {name}.jsonl, {name}.parquet or {name}.json in it")


def run(cfg: EvalConfig) -> list[dict]:
    if cfg.k > 1 and cfg.temperature <= 0:
        raise ConfigError("--k > 1 needs --temperature > 0 (greedy samples are identical)")
    device = components.resolve_device(cfg.device)
    sets = load_sets(cfg)
    model, tokenizer, _ = load_model(cfg, device)
    sampler = components.build_sampler(RolloutConfig(), model, tokenizer, cfg.model)
    if cfg.no_tools:
        executor, turns, system = NoToolExecutor(), 1, cfg.system_prompt or NO_TOOL_PROMPT
    else:
        executor, turns = components.build_sandbox(RolloutConfig()), cfg.max_turns
        system = cfg.system_prompt or components.system_prompt_for(DataConfig(train=_task_of(cfg)))
    reports: list[EvalReport] = []
    try:
        with torch.no_grad(), components.autocast("auto", device):
            for name, problems in sets.items():
                reports.append(
                    evaluate_problems(
                        problems,
                        name=name,
                        sampler=sampler,
                        tokenizer=tokenizer,
                        executor=executor,
                        system_prompt=system,
                        k=cfg.k,
                        temperature=cfg.temperature,
                        max_turns=turns,
                        max_new_tokens_per_turn=cfg.max_new_tokens_per_turn,
                        max_total_tokens=cfg.max_total_tokens,
                        seed=cfg.seed,
                    )
                )
    finally:
        executor.close()
    return write_results(reports, Path(cfg.output_dir))


def _task_of(cfg: EvalConfig) -> str:
    """The embedded model answers in the embedded task's short protocol; everything else gets the generic one."""
    embedded = {components.ARITH_HELDOUT: components.ARITH, components.MULTISTEP_HELDOUT: components.MULTISTEP}
    if len(cfg.benchmarks) == 1 and cfg.benchmarks[0] in embedded and not cfg.data:
        return embedded[cfg.benchmarks[0]]
    return "generic"


def main(argv: list[str]) -> None:
    import tyro

    cfg = tyro.cli(EvalConfig, args=argv, prog="gtpo eval", description=__doc__.splitlines()[0])
    if cfg.compare:
        table = compare_runs(Path(cfg.compare[0]), Path(cfg.compare[1]))
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(table)
        print(table)
        return
    rows = run(cfg)
    print(markdown_table(rows))
    print(f"results and trajectories: {cfg.output_dir}")
