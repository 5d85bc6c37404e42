"""The ``gtpo`` command: train, compare, eval, demo, build-tiny.

``gtpo train --help`` documents every config field (from the dataclass docstrings in ``gtpo.config``).
A preset file is applied first (``--preset NAME_OR_PATH``), then the flags. This module parses and
dispatches; it holds no training logic.
"""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = """usage: gtpo COMMAND [options]

commands:
  train       train a policy with GTPO (default) or GRPO; no options = the embedded default on CPU
  compare     GTPO vs GRPO and ablations over seeds (--seeds N); tables with intervals, plots
  eval        score a model or checkpoint on benchmarks with tool use
  demo        print a worked example of GTPO and GRPO credit assignment on one group
  build-tiny  rebuild the shipped tiny model (tokenizer + SFT warm start)

`gtpo COMMAND --help` explains each command's options.
"""


def _train_config(argv: list[str], description: str, prog: str):
    """Parse a TrainConfig: optional ``--preset`` first, then tyro flags over it."""
    import tyro

    from gtpo.config import ConfigError, TrainConfig, load_preset

    base = TrainConfig()
    rest = list(argv)
    if "--preset" in rest:
        i = rest.index("--preset")
        if i + 1 >= len(rest):
            raise ConfigError("--preset needs a value: a shipped preset name or a YAML path")
        base = load_preset(rest[i + 1])
        del rest[i : i + 2]
    return tyro.cli(TrainConfig, default=base, args=rest, description=description, prog=prog), rest


def train(argv: list[str]) -> None:
    config, _ = _train_config(argv, "Train with GTPO or GRPO. Flags override --preset NAME_OR_PATH.", "gtpo train")
    from gtpo.trainer import Trainer

    trainer = Trainer(config)
    try:
        metrics = trainer.train()
    finally:
        trainer.close()
    keys = [k for k in metrics if k.startswith(("reward/accuracy", "eval/"))]
    print("final: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in keys))
    print(f"run directory: {config.output_dir}")


def compare(argv: list[str]) -> None:
    from gtpo.compare import VARIANTS, pop_compare_flags, run_comparison

    options, argv = pop_compare_flags(argv)
    if "--output-dir" not in argv and "--output_dir" not in argv:
        argv = [*argv, "--output-dir", "runs/compare"]
    config, _ = _train_config(
        argv,
        "Run GTPO, GRPO and ablations over several seeds on the same data (--variants a,b,... from: "
        + ", ".join(VARIANTS)
        + "; --seeds N, default 3; --parallel P runs P at a time). A rerun continues a killed comparison. "
        "Other flags set the shared base config.",
        "gtpo compare",
    )
    root = Path(config.output_dir)
    run_comparison(config, options.variants, root, seeds=options.seeds, parallel=options.parallel)
    print((root / "compare.md").read_text())
    print(f"plots: {root / 'compare.png'}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    from gtpo.config import ConfigError

    try:
        if command == "train":
            train(rest)
        elif command == "compare":
            compare(rest)
        elif command == "eval":
            from gtpo.eval_cli import main as eval_main

            eval_main(rest)
        elif command == "demo":
            from gtpo.demo import main as demo_main

            demo_main()
        elif command == "build-tiny":
            from gtpo.tiny.build import main as build_main

            build_main(rest)
        else:
            print(f"gtpo: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
            sys.exit(2)
    except ConfigError as err:
        print(f"gtpo {command}: {err}", file=sys.stderr)
        sys.exit(2)
