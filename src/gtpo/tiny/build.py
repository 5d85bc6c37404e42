"""Rebuild a shipped tiny model: tokenizer, traces, supervised warm start, measurement, save.

``gtpo build-tiny [--task arith|multistep|relay|guess|functions] [--out DIR]`` (or ``python -m gtpo.tiny.build``). The
default writes the asset the package ships for the task (``RECIPES[task].out``: ``assets/tiny`` for the
arithmetic task, ``assets/tiny-multistep`` for the multi-step one, ...). Traces are tokenized exactly as the
rollout does it. A math task's (the TIR protocol, observations inline): prompt through the chat template, each
model segment and each tool output tokenized on its own, EOS after the final message; the loss covers model
segments and that EOS only. A game's (GEM's GuessTheNumber, observations as chat messages): prompt through the
chat template, each message of the model followed by the end-of-message token that ends it when sampled (both
trained on), each observation as ``gtpo.rollout.observation.ObservationTokens`` renders it (not trained on).

It prints what it does as it goes (a progress line with the loss and the time left for the supervised steps,
then the measurement), and the folder it writes records the task's system prompt as a trained run's does
(``gtpo.run.export.save_tokenizer``): a model warm-started from SmolLM2 must not fall back to SmolLM2's own
"helpful AI assistant" prompt when a user sends only a user message.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gtpo.envs.gem import GemEnv
from gtpo.model.policy import prompt_ids
from gtpo.rollout.observation import ObservationTokens
from gtpo.run.export import save_tokenizer
from gtpo.tasks.arith import SYSTEM_PROMPT
from gtpo.tasks.traces import Trace
from gtpo.tiny import CODE_MODEL_DIR, DEFAULT_MODEL_DIR, GUESS_MODEL_DIR, MULTISTEP_MODEL_DIR, RELAY_MODEL_DIR
from gtpo.tiny.guess_traces import GameTrace
from gtpo.tiny.model import new_model
from gtpo.tiny.tokenizer import build_tokenizer


@dataclass(frozen=True)
class Recipe:
    """What differs between the shipped tiny models: task, traces, output, size of the warm start, turn cap."""

    task: str
    """Module with SYSTEM_PROMPT, HELDOUT_PATH, heldout_problems, write_heldout."""
    traces: str
    """Module with make_traces(n, seed)."""
    out: Path
    steps: int
    num_traces: int
    max_turns: int
    lr: float
    init_from: Path | None = None
    """Continue from this model and its tokenizer instead of a new tokenizer and random weights."""
    presets: tuple[str, ...] = ()
    """The presets the model ships for: the warm start is measured on each one's held-out set, in its environment
    and by its own rules (``max_turns`` above is then unused). Empty for a math task: measured on ``task``'s
    held-out problems in the sandbox. A game's traces are chat conversations (``GameTrace``,
    ``tokenize_game_trace``); the others' are the TIR protocol's (``Trace``, ``tokenize_trace``)."""
    vocab_size: int = 384
    """The new tokenizer's vocabulary (a new tokenizer only: ``init_from`` keeps its model's)."""
    batch_size: int = 32
    """Traces per supervised step."""
    window: int = 0
    """Batches of similar length (``supervised_warm_start``); 0: drawn from all traces."""
    prompt_in_corpus: bool = False
    """A new tokenizer learns the system prompt with every trace (not once), so the prompt every example carries
    takes fewer tokens (the code prompt: 65 instead of 135 at 1024 entries)."""


RECIPES = {
    "arith": Recipe("gtpo.tasks.arith", "gtpo.tasks.traces", DEFAULT_MODEL_DIR, 3500, 20000, max_turns=5, lr=3e-3),
    # The arithmetic model already writes code blocks, reads outputs and copies digits: continuing from it costs
    # a fraction of a from-scratch warm start (a from-scratch build needed 3500 steps for the arithmetic task).
    "multistep": Recipe(
        "gtpo.tasks.multistep",
        "gtpo.tasks.multistep_traces",
        MULTISTEP_MODEL_DIR,
        800,
        20000,
        max_turns=6,
        lr=1e-3,
        init_from=DEFAULT_MODEL_DIR,
    ),
    # The relay task: two calls, the second typing in what the first showed (gtpo.tasks.relay).
    "relay": Recipe(
        "gtpo.tasks.relay",
        "gtpo.tasks.relay_traces",
        RELAY_MODEL_DIR,
        800,
        20000,
        max_turns=5,
        lr=1e-3,
        init_from=DEFAULT_MODEL_DIR,
    ),
    # GEM's GuessTheNumber (gtpo.tiny.guess_traces): a new tokenizer (GEM's words, digits one by one) and a new
    # model; measured on the easy game and the long one, each as its preset plays it. The shipped model is this
    # first stage continued for 250 steps on fresh traces at half the rate (docs/environments.md gives both
    # commands; its build_info.json records both stages).
    "guess": Recipe(
        "gtpo.tiny.guess_traces",
        "gtpo.tiny.guess_traces",
        GUESS_MODEL_DIR,
        300,
        6000,
        max_turns=10,
        lr=3e-3,
        presets=("guess", "guess-long"),
        vocab_size=512,
        batch_size=16,
        window=1024,
    ),
    # The code environment on the generated function family (gtpo.tasks.functions). From scratch: the arithmetic
    # model's 384-token vocabulary (learnt on arithmetic text) spends 818 tokens on the mean trace and up to 1454,
    # past its 1024 positions; a 1024-token vocabulary learnt on these traces spends 421 (at most 855). Batches
    # of similar length: a random batch of code traces pads to 1.6x their mean length. The shipped model is this
    # first stage continued three times on fresh traces at lower rates (docs/code.md gives the four commands;
    # its build_info.json records each stage): after this stage alone it miscopies the function's name and
    # examples (held-out 0.02).
    "functions": Recipe(
        "gtpo.envs.code",
        "gtpo.tiny.functions_traces",
        CODE_MODEL_DIR,
        1200,
        20000,
        max_turns=4,
        lr=3e-3,
        presets=("code",),
        vocab_size=1024,
        window=128,
        prompt_in_corpus=True,
    ),
}


def tokenize_trace(tokenizer: Any, trace: Trace, system_prompt: str = SYSTEM_PROMPT) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of one trace, with the rollout's token boundaries."""
    ids = prompt_ids(tokenizer, system_prompt, trace.question)
    mask = [0] * len(ids)
    for kind, text in trace.segments:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        mask += [1 if kind == "model" else 0] * len(piece)
    ids.append(tokenizer.eos_token_id)
    mask.append(1)
    return ids, mask


def tokenize_game_trace(
    tokenizer: Any, trace: GameTrace, system_prompt: str, render: ObservationTokens | None = None
) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of one game, as the rollout lays out an episode with chat observations: the prompt
    (system prompt, the game's first observation as the user's message), then for each turn the message's
    tokens and the end-of-message token the model samples to end it (mask 1: what the model learns to write,
    including when to stop), then the observation after it as ``render`` (GEM's role) gives it (mask 0).
    After the last turn nothing: the game ended there."""
    render = render or ObservationTokens(tokenizer, GemEnv.observation_role)
    ids = prompt_ids(tokenizer, system_prompt, trace.observation)
    mask = [0] * len(ids)
    for text, observation in trace.turns:
        turn = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
        ids += turn
        mask += [1] * len(turn)
        if observation is not None:
            shown = render(observation, turn[-1])
            ids += shown
            mask += [0] * len(shown)
    return ids, mask


def corpus(traces: list[Trace], system_prompt: str = SYSTEM_PROMPT, prompt_in_each: bool = False) -> list[str]:
    """The texts a new tokenizer learns from: the system prompt once (or before every trace) and the traces."""
    texts = [t.question + "".join(text for _, text in t.segments) for t in traces]
    return [system_prompt + text for text in texts] if prompt_in_each else [system_prompt, *texts]


def game_corpus(traces: list[GameTrace], system_prompt: str) -> list[str]:
    """The texts a game's tokenizer learns from: each conversation with its chat roles' names, which the
    template writes around every message (learned as words, not spelled letter by letter)."""
    texts = [f"system\n{system_prompt}"]
    for t in traces:
        turns = "".join(f"assistant\n{m}" + (f"user\n{o}" if o is not None else "") for m, o in t.turns)
        texts.append(f"user\n{t.observation}{turns}")
    return texts


def supervised_warm_start(
    model: torch.nn.Module,
    examples: list[tuple[list[int], list[int]]],
    steps: int,
    seed: int,
    pad_id: int,
    lr: float = 3e-3,
    batch_size: int = 32,
    window: int = 0,
    progress: bool = True,
) -> float:
    """Plain masked next-token training (one-cycle schedule peaking at ``lr``); returns the mean loss of the
    last 50 steps. ``window`` > 0 draws each batch from that many examples of similar length (a random stretch
    of the examples sorted by length), so that a batch is padded little: a game of 10 turns is three times as
    long as one of 3, and a padded token costs as much as a real one. 0 draws from all examples. ``progress``:
    a line on stderr with the step, the recent loss and the time left."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    by_length = sorted(examples, key=lambda example: len(example[0])) if window else examples
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    recent: list[float] = []
    bar = tqdm(range(steps), desc="supervised warm start", unit="step", disable=not progress, file=sys.stderr)
    for _ in bar:
        if window:
            start = rng.randrange(max(len(by_length) - window, 0) + 1)
            batch = rng.sample(by_length[start : start + window], batch_size)
        else:
            batch = rng.sample(examples, batch_size)
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, mask) in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            labels[row, : len(seq)] = torch.where(torch.tensor(mask) == 1, torch.tensor(seq), -100)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        recent = [*recent[-49:], loss.item()]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}", refresh=False)
    bar.close()
    model.eval()
    return sum(recent) / len(recent)


def measure(
    model: torch.nn.Module, tokenizer: Any, n: int = 96, temperature: float = 1.0, task: str = "arith"
) -> dict[str, float]:
    """Held-out accuracy and tool use of the warm-started model, through the real rollout and sandbox."""
    from gtpo.envs.python_tool import python_tool_envs
    from gtpo.generation.hf import HFSampler
    from gtpo.rollout.episode import rollout
    from gtpo.rollout.metrics import rollout_metrics
    from gtpo.rollout.spec import EpisodeSpec
    from gtpo.sandbox import SandboxPool

    recipe = RECIPES[task]
    module = importlib.import_module(recipe.task)
    with SandboxPool() as pool:
        start = time.perf_counter()
        result = rollout(
            module.heldout_problems()[:n],
            1,
            HFSampler(model, tokenizer),
            tokenizer,
            python_tool_envs(pool, max_turns=recipe.max_turns),
            # the embedded default's length limits (the spec's defaults); the turn cap is the task's
            EpisodeSpec(system_prompt=module.SYSTEM_PROMPT, max_turns=recipe.max_turns, temperature=temperature),
            seed=0,
        )
        seconds = time.perf_counter() - start
    metrics = rollout_metrics(result.trajectories)
    generated = sum(sum(t.loss_mask) for t in result.trajectories)
    return {
        "heldout_accuracy": metrics["reward/accuracy"],
        "tool_call_rate": metrics["rollout/tool_call_rate"],
        "turns_mean": metrics["rollout/turns_mean"],
        "gen_tokens_per_s": generated / max(result.timings.generation_s, 1e-9),
        "rollout_s": seconds,
    }


def measure_preset(model: torch.nn.Module, tokenizer: Any, preset: str, n: int = 0) -> dict[str, float]:
    """Held-out success of the warm-started model on a preset (a game's, the code environment's), by its rules
    (its episode caps, its evaluation temperature and seed, its sampler, its tool sandbox): the first ``n``
    held-out games or problems (0: all), evaluated as a run's step-0 evaluation of the preset evaluates them."""
    from gtpo.components import build_sampler, build_sandbox
    from gtpo.config import load_preset, validate
    from gtpo.envs.sources import env_factory, eval_problems, eval_source, needs_sandbox, system_prompt
    from gtpo.eval.evaluate import evaluate_problems
    from gtpo.rollout.metrics import rollout_metrics
    from gtpo.rollout.spec import episode_spec

    config = validate(load_preset(preset))
    problems = eval_problems(config.data)
    spec = episode_spec(config, system_prompt(config.data)).evaluation(config.eval.temperature)
    source = eval_source(config.data)
    # The run's own tool sandbox where the environment runs code (the code environment's calls and hidden tests).
    with build_sandbox(config.sandbox) if needs_sandbox(source) else contextlib.nullcontext() as sandbox:
        make_env = env_factory(source, "data.eval", sandbox=sandbox, max_turns=spec.max_turns)
        start = time.perf_counter()
        report = evaluate_problems(
            problems[:n] if n else problems, name=preset, sampler=build_sampler(config, model, tokenizer),
            tokenizer=tokenizer, make_env=make_env, spec=spec, k=config.eval.samples, seed=config.seed,
        )  # fmt: skip
        seconds = time.perf_counter() - start
    metrics = rollout_metrics(report.trajectories)
    return {
        "heldout_accuracy": report.accuracy,
        "games": len(report.per_problem),
        "turns_mean": metrics["rollout/turns_mean"],
        "invalid_move_rate": metrics["rollout/invalid_call_rate"],
        "rollout_s": seconds,
    }


def build(
    out: Path,
    steps: int,
    seed: int,
    traces: int,
    measure_n: int = 96,
    task: str = "arith",
    init_from: str | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Warm-start a model on ``task``'s traces and save it to ``out``. ``init_from`` (a model folder or a prepared
    name such as ``smollm2-135m-instruct``) replaces the recipe's start: a pretrained model and its own
    tokenizer learn the task's protocol from the same traces the shipped model learns it from. ``progress``: say
    each stage on stderr, with a progress line for the supervised steps."""

    def say(text: str) -> None:
        if progress:
            print(f"gtpo build-tiny: {text}", file=sys.stderr, flush=True)

    recipe = RECIPES[task]
    module = importlib.import_module(recipe.task)
    torch.manual_seed(seed)
    if not recipe.presets and not module.HELDOUT_PATH.exists():
        module.write_heldout()
    say(f"writing {traces} traces of the {task} task")
    trace_list = importlib.import_module(recipe.traces).make_traces(traces, seed)
    games = isinstance(trace_list[0], GameTrace)
    start_from = init_from or (str(recipe.init_from) if recipe.init_from is not None else None)
    lr = lr if lr is not None else recipe.lr
    if start_from is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from gtpo.model.source import model_path

        folder = model_path(start_from)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        texts = (
            game_corpus(trace_list, module.SYSTEM_PROMPT)
            if games
            else corpus(trace_list, module.SYSTEM_PROMPT, prompt_in_each=recipe.prompt_in_corpus)
        )
        tokenizer = build_tokenizer(texts, vocab_size=recipe.vocab_size)
        model = new_model(tokenizer, seed=seed)
    if games:
        render = ObservationTokens(tokenizer, GemEnv.observation_role)
        examples = [tokenize_game_trace(tokenizer, t, module.SYSTEM_PROMPT, render) for t in trace_list]
    else:
        examples = [tokenize_trace(tokenizer, t, module.SYSTEM_PROMPT) for t in trace_list]
    batch_size = batch_size or recipe.batch_size
    start_name = Path(start_from).name if start_from is not None else "a new model"
    say(f"{steps} supervised steps of {batch_size} traces from {start_name}, peak lr {lr:g}")
    start = time.perf_counter()
    loss = supervised_warm_start(
        model,
        examples,
        steps,
        seed,
        tokenizer.pad_token_id,
        lr=lr,
        batch_size=batch_size,
        window=recipe.window,
        progress=progress,
    )
    info: dict[str, Any] = {
        "task": task,
        "init_from": Path(start_from).name if start_from is not None else None,
        "lr": lr,
        "batch_size": batch_size,
        "steps": steps,
        "seed": seed,
        "traces": traces,
        "final_sft_loss": loss,
        "sft_seconds": time.perf_counter() - start,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    say(f"loss {loss:.3f} after {time.perf_counter() - start:.0f} s; measuring held-out games or problems")
    if recipe.presets:
        for preset in recipe.presets:
            measured = measure_preset(model, tokenizer, preset, n=measure_n)
            info.update({f"temp1_{preset}_{k}": v for k, v in measured.items()})
    else:
        info.update({f"temp1_{k}": v for k, v in measure(model, tokenizer, n=measure_n, task=task).items()})
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out, module.SYSTEM_PROMPT)
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    say(f"wrote {out}")
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gtpo build-tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(RECIPES), default="arith", help="embedded task to warm-start on")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the task's shipped asset)")
    parser.add_argument("--steps", type=int, default=None, help="supervised steps (default: the recipe's)")
    parser.add_argument("--traces", type=int, default=None, help="number of generated traces (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-from", default=None, help="warm-start this model folder or prepared name (default: the recipe's)"
    )
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--batch", type=int, default=None, help="traces per supervised step (default: the recipe's)")
    parser.add_argument(
        "--measure",
        type=int,
        default=None,
        help="held-out problems measured after the warm start (default: 96; a game's presets: all)",
    )
    args = parser.parse_args(argv)
    if args.init_from and args.out is None:
        parser.error("--init-from needs --out (without it the shipped model would be overwritten)")
    recipe = RECIPES[args.task]
    info = build(
        args.out or recipe.out,
        args.steps or recipe.steps,
        args.seed,
        args.traces or recipe.num_traces,
        measure_n=args.measure if args.measure is not None else (0 if recipe.presets else 96),
        task=args.task,
        init_from=args.init_from,
        lr=args.lr,
        batch_size=args.batch,
    )
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
