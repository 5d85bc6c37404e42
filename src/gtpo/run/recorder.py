"""Everything a run writes about itself and prints: the run directory, metrics, samples, warnings, report.

The trainer calls a ``RunRecorder`` at fixed points (start, each step, each evaluation, stop, end) and stays the
loop it is. The recorder owns the run directory's life: it is checked before anything slow, created only
after everything that can fail on bad input has loaded (so a failed start leaves nothing behind), trimmed to
the checkpoint on resume (so no step is logged twice), and removed again if a fresh run is stopped before its
first step. Only the main rank writes or prints.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gtpo.config import ConfigError, TrainConfig, to_dict
from gtpo.envs.sources import source_kind
from gtpo.run import report
from gtpo.run.checkpoint import check_run_dir, claim_run_dir, latest_checkpoint
from gtpo.run.console import Console
from gtpo.run.export import MODEL_DIR
from gtpo.run.learning_signal import WINDOW, SignalWatch
from gtpo.run.metrics import EVAL_FILE, METRICS_FILE, MetricLogger, append_record, read_metrics
from gtpo.run.stop import TrainingStopped
from gtpo.types import Trajectory

RUN_FILES = (report.CURVES, report.SUMMARY, report.SAMPLES, MODEL_DIR)
"""What a run writes beside metrics and checkpoints; --overwrite deletes these too."""


class RunRecorder:
    """The run directory and console of one run (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, is_main: bool) -> None:
        self.cfg = cfg
        self.is_main = is_main
        self.run_dir = Path(cfg.output_dir)
        self.console = Console(enabled=is_main, progress=cfg.progress)
        self.watch = SignalWatch(min(WINDOW, cfg.steps), protocol=source_kind(cfg.data.train))
        self.notes: list[str] = []
        """Warnings raised during the run (also written to summary.md)."""
        self.logger: MetricLogger | None = None
        self._created: Path | None = None

    def check(self) -> None:
        """Before anything slow: refuse a directory holding an earlier run (without --resume/--overwrite), one
        this process cannot write in, and --resume without a checkpoint."""
        if self.is_main:
            check_run_dir(self.run_dir, resume=self.cfg.resume, overwrite=self.cfg.overwrite)
        if self.cfg.resume and latest_checkpoint(self.run_dir) is None:
            raise ConfigError(
                f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}; run without --resume to start"
            )

    def open(self) -> None:
        """Claim the directory (--overwrite deletes the earlier run only now that everything has loaded), write
        the resolved config, open the metric log; undo all of it if any of it fails."""
        if not self.is_main:
            return
        cfg = self.cfg
        created = _missing_root(self.run_dir)
        new_files = [p for p in (self.run_dir / "config.json", self.run_dir / METRICS_FILE) if not p.exists()]
        try:
            claim_run_dir(self.run_dir, resume=cfg.resume, overwrite=cfg.overwrite, extra=RUN_FILES)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # The config describes the run, not how this process was started: no resume/overwrite flags.
            saved = to_dict(dataclasses.replace(cfg, resume=False, overwrite=False))
            (self.run_dir / "config.json").write_text(json.dumps(saved, indent=2))
            self.logger = MetricLogger(self.run_dir, cfg.loggers, saved)
        except BaseException as err:
            _remove(created)
            for path in new_files:
                path.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise ConfigError(f"output_dir {self.run_dir}: cannot write there ({err.strerror or err})") from err
            raise
        self._created = created

    def resumed(self, step: int, checkpoint: Path) -> None:
        """Drop what was logged after the checkpoint (those steps run again) and say where the run continues."""
        if not self.is_main:
            return
        records = read_metrics(self.run_dir / METRICS_FILE) if (self.run_dir / METRICS_FILE).exists() else []
        later = [r["step"] for r in records if r.get("step", 0) > step]
        _keep_until(self.run_dir / METRICS_FILE, step)
        _keep_until(self.run_dir / report.SAMPLES, step)
        _keep_until(self.run_dir / EVAL_FILE, step)
        redo = (min(later), max(later)) if later else None
        self.console.resumed(str(self.run_dir), step, self.cfg.steps, str(checkpoint), redo)
        self.console.history([r for r in records if r.get("step", 0) <= step])

    # ---------------------------------------------------------------------------------------- the run
    def start(self, held_out: int) -> None:
        cfg, r = self.cfg, self.cfg.rollout
        evals = f"{held_out} held-out problems every {cfg.eval_every} steps" if held_out and cfg.eval_every else ""
        self.console.start(
            f"{cfg.algo.algo.upper()} on {cfg.model.name_or_path}, data {cfg.data.train}: {cfg.steps} steps of "
            f"{r.problems_per_step} problems x {r.group_size} samples; {evals or 'no held-out evaluation'}",
            str(self.run_dir),
            model=cfg.export != "none",
        )

    def warn(self, text: str) -> None:
        """A warning on screen now and in summary.md at the end."""
        self.console.warn(text)
        self.notes.append(f"warning: {text}")

    def already_finished(self, step: int) -> None:
        self.console.line(
            f"gtpo: {self.run_dir} is already finished (its checkpoint is at step {step} of {self.cfg.steps}); "
            "nothing to do, nothing changed. Raise --steps to train further."
        )

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Log one step (or the step-0 evaluation), show it, and check that training still gets a signal."""
        if self.logger is not None:
            self.logger.log(step, metrics)
            if report.eval_key(metrics):  # the curves so far, at every evaluation
                report.plot_curves(read_metrics(self.run_dir / METRICS_FILE), self.run_dir / report.CURVES)
        self.console.step_done(step, metrics)
        if "reward/accuracy" in metrics:
            for warning in self.watch.observe(step, metrics):
                self.console.warn(warning)
                self.notes.append(f"warning: {warning}")

    def evaluation(
        self,
        step: int,
        metrics: dict[str, float],
        record: dict[str, Any],
        heldout: Sequence[Trajectory],
        seconds: float,
        batch: tuple[Sequence[Trajectory], Any] | None,
    ) -> dict[str, float]:
        """An evaluation's ``metrics`` (``EvalReport.metrics``) with its time; its per-problem ``record``
        (``eval_record``) goes to eval_problems.jsonl (what ``gtpo compare`` pairs runs by); a few of its
        ``heldout`` trajectories, and one group of the step's training batch with its rewards and advantages, go
        to samples.jsonl."""
        metrics = {**metrics, "perf/eval_s": seconds}
        if self.is_main and self.logger is not None:
            append_record(self.run_dir / EVAL_FILE, record)
            samples = [report.trajectory_record(step, "heldout", t) for t in report.pick_samples(heldout)]
            if batch is not None and step > 0:
                trajectories, credit = batch
                for i in report.pick_group(trajectories):
                    rewards = None if credit.turn_rewards is None else credit.turn_rewards[i]
                    adv: torch.Tensor = credit.turn_advantages[i]
                    samples.append(report.trajectory_record(step, "train", trajectories[i], rewards, adv))
            report.append_samples(self.run_dir / report.SAMPLES, samples)
        return metrics

    def stopped(self, signum: int, step: int, progressed: bool) -> TrainingStopped:
        """After a stop request: the report so far and the checkpoint to resume from; a fresh run stopped
        before its first step leaves nothing behind (there is nothing to resume)."""
        checkpoint = latest_checkpoint(self.run_dir)
        if self.is_main and checkpoint is None and not progressed:
            self.close()
            _remove(self._created)
            for name in (METRICS_FILE, EVAL_FILE, "config.json", report.SAMPLES, report.CURVES):
                (self.run_dir / name).unlink(missing_ok=True)
        else:
            self.finish(final=False)
        return TrainingStopped(signum, step, str(checkpoint) if checkpoint else None)

    def finish(self, final: bool) -> None:
        """curves.png and summary.md from the whole metric log, and the closing summary on screen."""
        if not self.is_main:
            return
        records = read_metrics(self.run_dir / METRICS_FILE)
        title = f"{self.cfg.algo.algo.upper()} run {self.run_dir.name}" + ("" if final else " (stopped early)")
        report.plot_curves(records, self.run_dir / report.CURVES)
        table = report.write_summary(self.run_dir, records, title, self.notes)
        names = (report.SUMMARY, report.CURVES, report.SAMPLES, MODEL_DIR, METRICS_FILE)
        self.console.summary(table, [str(self.run_dir / n) for n in names if (self.run_dir / n).exists()])

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None


def _missing_root(path: Path) -> Path | None:
    """The topmost folder of ``path`` that does not exist yet (what creating it would add), or None."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _remove(created: Path | None) -> None:
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)


def _keep_until(path: Path, step: int) -> None:
    """Keep the JSONL records of steps <= ``step``: later ones are logged again by the resumed run."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
