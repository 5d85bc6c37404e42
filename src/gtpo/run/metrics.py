"""Metric sinks: JSONL always, TensorBoard and Weights & Biases when asked.

Metric names are namespaced (``reward/...``, ``rollout/...``, ``loss/...``, ``perf/...``, ``eval/...``).
One JSON object per line, flushed at once, so a killed run keeps every step it finished.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
"""Each run directory's metric log, one JSON object per line."""
EVAL_FILE = "eval_problems.jsonl"
"""Each run directory's per-problem held-out results, one JSON object per evaluation
(``gtpo.eval.evaluate.eval_record``); ``gtpo compare`` pairs runs by problem with them."""


class MetricLogger:
    """Writes ``{"step": N, ...metrics}`` lines to ``run_dir/metrics.jsonl`` and the optional sinks."""

    def __init__(self, run_dir: Path, loggers: Iterable[str], config: dict[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        self._wandb = None
        loggers = set(loggers)
        if "tensorboard" in loggers:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError(
                    "loggers includes 'tensorboard' but it is not installed: pip install 'gtpo[tensorboard]'"
                ) from err
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if "wandb" in loggers:
            try:
                import wandb
            except ImportError as err:
                raise ImportError(
                    "loggers includes 'wandb' but it is not installed: pip install 'gtpo[wandb]'"
                ) from err
            self._wandb = wandb.init(project="gtpo", dir=str(run_dir), config=config or {})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it (a killed run keeps every record it finished)."""
    with Path(path).open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (tolerates a torn last line from a killed run)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
