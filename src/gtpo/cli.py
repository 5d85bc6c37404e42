"""The ``gtpo`` command: train, compare, eval, export, demo, build-tiny, prepare.

``gtpo train --help`` documents every config field (from the dataclass docstrings in ``gtpo.config``).
A preset file is applied first (``--preset NAME_OR_PATH``), then the flags. This module parses and
dispatches; it holds no training logic.

Failures a user can fix (a bad flag value, a missing or malformed file, a folder that cannot be written) print
one line naming the field and the fix and exit with code 2, never a traceback. Ctrl-C / SIGTERM during training
write a checkpoint and print how to resume (exit 130 / 143); a closed pipe (``gtpo train --help | head``) ends
quietly.
"""

# No `from __future__ import annotations`: tyro reads the annotations of the option classes built inside the
# commands, which name types imported there.
import dataclasses
import errno
import os
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

USAGE = """usage: gtpo COMMAND [options]

commands:
  train       train a policy with GTPO (default) or GRPO; no options = the embedded default on CPU
  compare     GTPO vs GRPO and ablations over seeds (--seeds N); tables with intervals, plots
  eval        score a model or checkpoint on benchmarks with tool use
  export      write a run's policy (or any checkpoint's) as a Hugging Face model folder
  demo        print a worked example of GTPO and GRPO credit assignment on one group
  build-tiny  rebuild the shipped tiny model (tokenizer + SFT warm start)
  prepare     build real pretrained parts (SmolLM2-135M-Instruct, the Qwen2.5 tokenizer) as HF folders, once

`gtpo COMMAND --help` explains each command's options; `gtpo --version` prints the version.
"""
PRESET_HELP = "A YAML preset applied first, then the flags over it: a shipped name ({names}) or a file path."
COMPARE_DIR = "runs/compare"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Write errors that mean "no room": the run stops in one line, its last checkpoint intact."""


def _shipped_presets() -> str:
    from gtpo.config import PRESET_DIR

    return ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))


def _split_preset(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--preset X`` (or ``--preset=X``) is applied before tyro parses the rest, so it can set the defaults."""
    from gtpo.config import ConfigError

    rest = list(argv)
    for i, arg in enumerate(rest):
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1], rest[:i] + rest[i + 1 :]
        if arg == "--preset":
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                raise ConfigError(f"--preset needs a value: a shipped preset ({_shipped_presets()}) or a YAML path")
            return rest[i + 1], rest[:i] + rest[i + 2 :]
    return None, rest


def _parse(argv: list[str], description: str, prog: str, extra: Any = None, **defaults: Any):
    """A TrainConfig from ``--preset`` and the flags, plus the command's own options (``extra``, a dataclass
    type with its other options), all listed in ``--help`` with their true defaults; ``defaults`` are this
    command's own defaults for TrainConfig fields (under the preset's values and the flags)."""
    import tyro

    from gtpo.config import TrainConfig, load_preset, renamed_flags

    argv, notes = renamed_flags(argv)
    for note in notes:
        print(f"{prog}: {note}", file=sys.stderr)
    given, rest = _split_preset(argv)
    base = dataclasses.replace(TrainConfig(), **defaults)
    base = load_preset(given, base) if given else base
    preset_doc = PRESET_HELP.format(names=_shipped_presets())

    @dataclass
    class Args(extra or object):  # type: ignore[misc]
        config: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=lambda: base)
        preset: Annotated[str | None, tyro.conf.arg(help=preset_doc, metavar="NAME_OR_PATH")] = given

    return tyro.cli(Args, args=rest, description=description, prog=prog)


def _resume_hint(argv: list[str]) -> str:
    kept = [a for a in argv if a not in ("--resume", "--overwrite")]
    return "gtpo train " + " ".join([*map(shlex.quote, kept), "--resume"])


def train(argv: list[str]) -> None:
    args = _parse(argv, "Train with GTPO or GRPO. Flags override --preset NAME_OR_PATH.", "gtpo train")
    config = args.config
    _check_model(config)
    from gtpo.run.checkpoint import checkpoint_step

    if config.resume and (step := checkpoint_step(config.output_dir)) is not None and step >= config.steps:
        print(
            f"gtpo train: {config.output_dir} is already finished (its checkpoint is at step {step} of "
            f"{config.steps}); nothing to do, nothing changed. Raise --steps to train further."
        )
        return
    _quiet_transformers()
    from gtpo.generation.protocol import EngineFailed
    from gtpo.run.checkpoint import CheckpointWriteError
    from gtpo.run.stop import TrainingStopped, exit_on_next_signal
    from gtpo.trainer import Trainer, TrainingDiverged

    trainer = Trainer(config)  # a Ctrl-C while it loads leaves nothing: the run folder is made last
    try:
        try:
            trainer.train()
        except KeyboardInterrupt:  # before train() took over Ctrl-C: as a stop before the first step
            raise trainer.recorder.stopped(signal.SIGINT, trainer.step, progressed=False) from None
    except TrainingStopped as stopped:
        exit_on_next_signal()  # stopping already: another Ctrl-C during the clean-up below exits at once
        if stopped.checkpoint:
            print(f"gtpo train: {stopped}\nto continue: {_resume_hint(argv)}", file=sys.stderr)
        else:
            print(f"gtpo train: {stopped}; the run left no files", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except TrainingDiverged as diverged:
        print(f"gtpo train: {diverged}", file=sys.stderr)
        sys.exit(1)
    except CheckpointWriteError as failed:  # a full disk, most often: say what is kept and how to go on
        print(f"gtpo train: {failed}; free space, then continue: {_resume_hint(argv)}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        print(
            f"gtpo train: cannot write {err.filename or config.output_dir} ({err.strerror}); the last checkpoint "
            f"is intact; free space, then continue: {_resume_hint(argv)}",
            file=sys.stderr,
        )
        sys.exit(1)
    except EngineFailed as failed:
        print(f"gtpo train: step {trainer.step + 1}: {failed}; {_kept(trainer)}: {_resume_hint(argv)}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:
        from gtpo.distributed import peer_failure

        if not (trainer.ctx.enabled and peer_failure(err)):
            raise
        print(f"gtpo train: {_lost_peer(trainer, err)}", file=sys.stderr)
        sys.exit(1)
    finally:
        trainer.close()


def _check_model(config: Any) -> None:
    """A model that is not there is the first thing to say: before "already holds a run" or "already finished",
    whose fix (another --output-dir, --resume) would only lead to this one."""
    from gtpo.model.source import check_model_source

    check_model_source(config.model.name_or_path)


def _kept(trainer: Any) -> str:
    from gtpo.run.checkpoint import latest_checkpoint

    kept = latest_checkpoint(trainer.run_dir)
    return (
        f"the newest checkpoint is {kept}; to continue from it"
        if kept
        else "no checkpoint was written yet; to start over"
    )


def _lost_peer(trainer: Any, err: BaseException) -> str:
    """One line for a rank whose peers died or hung: what happened, what is kept, how to go on."""
    reason = " ".join(str(err).split())
    reason = reason.split("] ", 1)[-1].split(". ")[0][:160]  # gloo: "[source location] what. Advice."
    return (
        f"rank {trainer.ctx.rank} of {trainer.ctx.world_size}: another rank died or stopped answering during step "
        f"{trainer.step + 1} ({reason}); {_kept(trainer)}, relaunch the same torchrun command with --resume"
    )


COMPARE_HELP = (
    "Run GTPO, GRPO and ablations over several seeds on the same data, one run each under --output-dir, and report "
    "means, intervals and paired differences. Rerunning the same command continues a stopped or killed comparison "
    "(no --resume needed). Every `gtpo train` flag also works here and sets the base config all runs share "
    "(--preset, --steps, --data.train, --algo.*, ...; `gtpo train --help` lists them with their defaults). "
    "Cost: each run costs what one `gtpo train` with the same flags costs, so the default 5 variants x 3 seeds "
    "cost 15 such runs (measured times: docs/compare.md)."
)


def compare_args(argv: list[str]) -> Any:
    """``gtpo compare``'s flags: its own (variants, seeds, parallel) and the shared base TrainConfig. ``--help``
    shows only the comparison's own options: the train flags are ``gtpo train --help``'s."""
    import tyro

    from gtpo.compare import DEFAULT_VARIANTS, VARIANTS

    @dataclass
    class Options:
        variants: Annotated[
            str, tyro.conf.arg(help=f"Comma-separated variants to run; known: {', '.join(VARIANTS)}.")
        ] = ",".join(DEFAULT_VARIANTS)
        seeds: Annotated[int, tyro.conf.arg(help="Seeds per variant: the base --seed and the ones after it.")] = 3
        parallel: Annotated[
            int, tyro.conf.arg(help="Runs at a time, each in its own process with its share of the CPU cores.")
        ] = 1

    if any(arg in ("-h", "--help") for arg in argv):

        @dataclass
        class Help(Options):
            output_dir: Annotated[
                str,
                tyro.conf.arg(
                    help="The comparison's folder: one run folder per variant and seed (VARIANT/seedS/), "
                    "compare.md, compare.json, compare.png and the plan a rerun continues."
                ),
            ] = COMPARE_DIR
            overwrite: Annotated[
                bool,
                tyro.conf.arg(help="Delete an earlier comparison in --output-dir (made with other settings) first."),
            ] = False
            preset: Annotated[str | None, tyro.conf.arg(help=PRESET_HELP.format(names=_shipped_presets()))] = None

        tyro.cli(Help, args=["--help"], prog="gtpo compare", description=COMPARE_HELP)
    return _parse(
        argv,
        COMPARE_HELP,
        "gtpo compare",
        extra=Options,
        output_dir=COMPARE_DIR,
        export="none",  # one model folder per variant is rarely wanted; --export merged writes them
    )


def compare(argv: list[str]) -> None:
    from gtpo.compare import RunFailed, run_comparison
    from gtpo.config import ConfigError

    args = compare_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise ConfigError("--variants: none given; pass a comma-separated list (gtpo compare --help lists them)")
    if args.seeds < 1 or args.parallel < 1:
        raise ConfigError("--seeds and --parallel must be at least 1")
    _check_model(args.config)
    _quiet_transformers()
    from gtpo.run.stop import NAMES, TrainingStopped, exit_on_next_signal

    root = Path(args.config.output_dir)
    try:
        run_comparison(args.config, variants, root, seeds=args.seeds, parallel=args.parallel)
    except TrainingStopped as stopped:
        exit_on_next_signal()
        again = shlex.join(["gtpo", "compare", *(a for a in argv if a != "--overwrite")])  # keeps the runs
        print(
            f"gtpo compare: stopped by {NAMES.get(stopped.signum, stopped.signum)}; finished runs are kept and "
            f"stopped ones resume from their last checkpoint\nto continue: {again}",
            file=sys.stderr,
        )
        sys.exit(stopped.exit_code)
    except RunFailed as failed:  # a run crashed: its log has the traceback, this process has nothing to add
        print(f"gtpo compare: {failed}", file=sys.stderr)
        sys.exit(1)
    print((root / "compare.md").read_text())
    print(f"table: {root / 'compare.md'}, plots: {root / 'compare.png'}")


EXPORT_HELP = (
    "Write a gtpo run's policy as a Hugging Face model folder (config, safetensors, tokenizer, chat template) that "
    "AutoModelForCausalLM.from_pretrained, vLLM and verl load."
)


def export(argv: list[str]) -> None:
    import tyro

    from gtpo.config import ConfigError

    @dataclass
    class Args:
        source: tyro.conf.Positional[str]
        """A run directory (runs/NAME: its newest checkpoint) or one checkpoint (runs/NAME/checkpoints/step_N)."""
        output: str | None = None
        """The folder to write (default: RUN/model, or RUN/model-step_N for an older checkpoint)."""
        lora: Literal["merged", "adapter"] = "merged"
        """A LoRA run: "merged" folds the adapter into the weights (a plain model); "adapter" writes only the peft
        adapter, to load on top of the base model. Full fine-tunes are always written whole."""

    args = tyro.cli(Args, args=argv, prog="gtpo export", description=EXPORT_HELP)
    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise ConfigError(f"--output {args.output} is a file; give a folder to write the model into")
    _quiet_transformers()
    from gtpo.run.export import export_checkpoint

    out = export_checkpoint(args.source, args.output, lora=args.lora)
    print(f"gtpo export: wrote {out} (AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it)")


def _quiet_transformers() -> None:
    """No per-file progress bars from transformers ("Loading weights", "Writing model shards")."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _dispatch(argv)
    except BrokenPipeError:
        # The reader went away (`gtpo train --help | head`): stop writing, quietly, as other CLI tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)


def _dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"gtpo {version('gtpo')}")
        return
    command, rest = argv[0], argv[1:]
    from gtpo.config import ConfigError

    commands = {"train": train, "compare": compare, "export": export, "eval": _eval, "demo": _demo}
    commands["build-tiny"] = _build_tiny
    commands["prepare"] = _prepare
    if command not in commands:
        print(f"gtpo: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    try:
        commands[command](rest)
    except ConfigError as err:
        print(f"gtpo {command}: {err}", file=sys.stderr)
        sys.exit(2)
    except ImportError as err:
        if "pip install" not in str(err):  # ours name the extra to install; anything else is a bug to see
            raise
        print(f"gtpo {command}: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ngtpo {command}: interrupted", file=sys.stderr)
        sys.exit(130)


def _eval(argv: list[str]) -> None:
    from gtpo.eval.cli import main as eval_main

    _quiet_transformers()  # its own progress line is the one to read, not a "Loading weights" bar per model
    eval_main(argv)


def _demo(argv: list[str]) -> None:
    if argv in (["-h"], ["--help"]):
        print("usage: gtpo demo\n\nPrint GTPO and GRPO credit assignment worked through for one group of four")
        print("trajectories (no model, no flags); every number comes from the functions the trainer uses.")
        return
    if argv:
        from gtpo.config import ConfigError

        raise ConfigError(f"gtpo demo takes no arguments, got {' '.join(argv)!r}; see gtpo demo --help")
    from gtpo.demo import main as demo_main

    demo_main()


def _build_tiny(argv: list[str]) -> None:
    from gtpo.tiny.build import main as build_main

    build_main(argv)


def _prepare(argv: list[str]) -> None:
    from gtpo.prepare import main as prepare_main

    prepare_main(argv)
