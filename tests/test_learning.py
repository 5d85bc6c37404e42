"""Slow (minutes): the embedded default actually learns. Run with ``pytest -m slow``.

This is the promise of ``gtpo train`` with no arguments: on the shipped tiny model and the arithmetic task,
training reward and held-out accuracy rise. The whole default run is used, not a shortened one, so the test
checks what a first-time user sees.
"""

from __future__ import annotations

import dataclasses

import pytest

from gtpo.config import TrainConfig
from gtpo.run.metrics import read_metrics
from gtpo.trainer import Trainer


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["gtpo"])
def test_default_run_raises_reward_and_heldout_accuracy(tmp_path, algo):
    base = TrainConfig()
    config = dataclasses.replace(
        base, output_dir=str(tmp_path), progress=False, algo=dataclasses.replace(base.algo, algo=algo)
    )
    trainer = Trainer(config)
    try:
        trainer.train()
    finally:
        trainer.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    evals = [r["eval/avg@1"] for r in rows if "eval/avg@1" in r]
    rewards = [r["reward/accuracy"] for r in rows if "reward/accuracy" in r]
    quarter = max(len(rewards) // 4, 1)
    first, last = sum(rewards[:quarter]) / quarter, sum(rewards[-quarter:]) / quarter
    assert last > first + 0.05, f"training accuracy {first:.3f} -> {last:.3f}"
    assert evals[-1] > evals[0] + 0.05, f"held-out accuracy {evals[0]:.3f} -> {evals[-1]:.3f}"
