"""What a training run prints: where it goes, progress, one lasting line per evaluation, warnings, a summary.

Lines go to stdout through ``tqdm.write``, so they stay on screen above a progress bar instead of being
overwritten by it; progress bars and warnings go to stderr. Only the main rank prints. The step-0 evaluation
(300 problems in the default run, the first minute or two) has its own bar, so a run never sits silent.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from gtpo.run.report import duration, eval_key


class Console:
    """Prints for one run; ``enabled=False`` (other ranks) prints nothing, ``progress=False`` draws no bars."""

    def __init__(self, enabled: bool = True, progress: bool = True) -> None:
        self.enabled = enabled
        self.progress = progress and enabled
        self._bar: Any = None
        self._baseline: tuple[int, float] | None = None
        self._since_eval: list[tuple[int, dict[str, float]]] = []

    # ------------------------------------------------------------------------------------------- lines
    def line(self, text: str, err: bool = False) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        stream = sys.stderr if err else sys.stdout
        tqdm.write(text, file=stream)
        stream.flush()  # a log file or pipe sees each line when it happens, not at exit

    def warn(self, text: str) -> None:
        self.line(f"warning: {text}", err=True)

    def start(self, description: str, run_dir: str, model: bool = True) -> None:
        """``model``: the run ends by writing its policy to ``model/`` (not under ``--export none``)."""
        files = ["metrics.jsonl", "curves.png", "summary.md", "samples.jsonl", *(["model/"] if model else [])]
        self.line(f"gtpo: {description}")
        self.line(f"gtpo: writing to {run_dir}/ ({', '.join(files)})")

    def resumed(self, run_dir: str, step: int, total: int, checkpoint: str, redo: tuple[int, int] | None) -> None:
        again = f"; steps {redo[0]}-{redo[1]} were not checkpointed and run again" if redo else ""
        self.line(f"gtpo: resuming {run_dir} at step {step} of {total} from {checkpoint}{again}")

    def history(self, records: list[dict[str, Any]]) -> None:
        """Earlier records of a resumed run: the step-0 baseline the evaluation lines compare against."""
        for record in records:
            key = eval_key(record)
            if key and self._baseline is None:
                self._baseline = (record["step"], record[key])

    # ---------------------------------------------------------------------------------------- progress
    def eval_progress(self, step: int, total: int) -> Callable[[int], None]:
        """A callback that advances an evaluation bar by n problems (step 0 only: later ones are short
        beside the run's own bar). Call ``close_eval_progress`` after."""
        if not self.progress or step != 0:
            return lambda n: None
        from tqdm.auto import tqdm

        self._eval_bar = tqdm(total=total, desc="step-0 evaluation", unit="problem", leave=False)
        return self._eval_bar.update

    def close_eval_progress(self) -> None:
        bar = getattr(self, "_eval_bar", None)
        if bar is not None:
            bar.close()
            self._eval_bar = None

    def open_bar(self, initial: int, total: int) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(initial=initial, total=total, desc="gtpo", unit="step")

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -------------------------------------------------------------------------------------------- steps
    def step_done(self, step: int, metrics: dict[str, float]) -> None:
        """Advance the bar; on an evaluation step print its line (it stays on screen)."""
        if "reward/accuracy" in metrics:
            self._since_eval.append((step, metrics))
            if self._bar is not None:
                self._bar.update(1)
                keys = {"reward/accuracy": "acc", "reward/mean": "reward", "rollout/turns_mean": "turns"}
                self._bar.set_postfix({short: f"{metrics[k]:.3f}" for k, short in keys.items() if k in metrics})
        key = eval_key(metrics)
        if key is not None:
            self.line(self._evaluation_line(step, key, metrics))
            self._since_eval = []

    def _evaluation_line(self, step: int, key: str, metrics: dict[str, float]) -> str:
        accuracy = metrics[key]
        text = f"step {step:>4}  held-out {key.removeprefix('eval/')} {accuracy:.3f}"
        if metrics.get("eval/ci95_low") is not None:
            text += f" [{metrics['eval/ci95_low']:.3f}, {metrics['eval/ci95_high']:.3f}]"
        if self._baseline is None:
            self._baseline = (step, accuracy)
        elif step != self._baseline[0]:
            text += f"  {accuracy - self._baseline[1]:+.3f} since step {self._baseline[0]}"
        train = [m for _, m in self._since_eval]
        if train:
            first = self._since_eval[0][0]
            span = f"step {step}" if len(train) == 1 else f"steps {first}-{step}"
            acc = sum(m["reward/accuracy"] for m in train) / len(train)
            step_s = sum(m.get("perf/step_s", 0.0) for m in train) / len(train)
            text += f"  | training accuracy {acc:.3f} ({span}), {step_s:.1f} s/step"
        if metrics.get("perf/eval_s") is not None:
            text += f"  | evaluated in {duration(metrics['perf/eval_s'])}"
        return text

    # ---------------------------------------------------------------------------------------------- end
    def summary(self, table: str, files: list[str]) -> None:
        self.line("")
        self.line(table.rstrip("\n"))
        self.line("")
        for entry in files:
            self.line(f"  {entry}")
