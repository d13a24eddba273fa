"""Metrics sinks: JSONL per logged step, TensorBoard events, and the console: a rich progress
bar on a terminal, one plain line per logged step anywhere else (files, pipes, CI logs)."""

from __future__ import annotations

import json
import math
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

# what the console shows of a logged step, in this order
SHOWN = ("loss", "rel_loss", "lr", "tau", "target_var", "samples_per_s")


def format_eta(seconds: float) -> str:
    """``h:mm:ss`` of a remaining time (``?`` before it can be estimated)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    return str(timedelta(seconds=int(round(seconds))))


def plain_line(step: int, max_steps: int, values: dict[str, Any], eta_s: float) -> str:
    """One log line: ``step 20/100 loss 1.234 rel_loss 0.5 lr 0.0001 ... samples/s 12.3 eta 0:01:05``."""
    parts = [f"step {step}/{max_steps}"]
    for k in SHOWN:
        if k in values:
            parts.append(f"{'samples/s' if k == 'samples_per_s' else k} {values[k]:.4g}")
    parts.append(f"eta {format_eta(eta_s)}")
    return " ".join(parts)


class MetricsLogger:
    """Writes ``metrics.jsonl`` (one object per logged step) and TensorBoard event files under
    ``run_dir``, and shows step, loss, rel_loss, lr, tau, target_var, samples/s and ETA: as a rich
    progress bar when ``progress`` and ``stream`` is a terminal, otherwise as one plain line per
    logged step (never cut to a width). Only rank 0 creates one (others print nothing)."""

    def __init__(self, run_dir: Path, max_steps: int, start_step: int = 0, tensorboard: bool = True, progress: bool = True,
                 stream: TextIO | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but keep logging if it is broken
                self._tb = None
        self._progress = None
        self._stream = stream if stream is not None else sys.stdout
        self._max_steps, self._start_step = max_steps, start_step
        if progress and getattr(self._stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(), transient=False, console=Console(file=self._stream),
            )
            self._task = self._progress.add_task("pretrain", total=max_steps, completed=start_step, info="")
            self._progress.start()
        self._t0 = time.time()

    def log(self, step: int, values: dict[str, Any]) -> None:
        row = {"step": step, "time": round(time.time() - self._t0, 3), **values}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, step)
        if self._progress is not None:
            info = " ".join(f"{k}={values[k]:.4g}" for k in SHOWN if k in values)
            self._progress.update(self._task, completed=step, info=info)
        else:
            done = step - self._start_step
            eta = (self._max_steps - step) * (time.time() - self._t0) / done if done > 0 else float("nan")
            print(plain_line(step, self._max_steps, values, eta), file=self._stream, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        self._file.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
