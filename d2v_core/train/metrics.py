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
        keep_rows_up_to(self.path, start_step)
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


def _parse_rows(text: str) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a torn last line (a kill in the middle of a write) is dropped."""
    lines = [line for line in text.splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise
    return rows


def keep_rows_up_to(path: Path, step: int) -> None:
    """Before a (resumed) run appends to ``path``: drop the rows after ``step`` (written after the
    checkpoint it resumes from, so they are written again) and a torn last line, atomically."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = _parse_rows(text)
    kept = [r for r in rows if not isinstance(r, dict) or not isinstance(r.get("step"), int) or r["step"] <= step]
    if len(kept) == len(rows) and (not text or text.endswith("\n")) and len(rows) == len([x for x in text.splitlines() if x.strip()]):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(path)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return _parse_rows(path.read_text(encoding="utf-8", errors="replace"))
