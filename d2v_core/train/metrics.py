"""Metrics output: the core's loggers (JSONL per logged step, TensorBoard events), the writer
that passes each log step to the run's loggers, and the console: a rich progress bar on a
terminal, one plain line per logged step anywhere else (files, pipes, CI logs)."""

from __future__ import annotations

import json
import math
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

from d2v_core.errors import first_line
from d2v_core.loggers import LoggerContext, MetricsLogger

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


LoggerFactory = Callable[[LoggerContext], MetricsLogger]


class JsonlLogger(MetricsLogger):
    """The core's ``jsonl`` logger, always on: ``metrics.jsonl``, one object per logged step
    (``step``, ``time`` in seconds since this process started logging, then the values). A
    resumed run first drops the rows after the step it resumes from (they are written again)."""

    def __init__(self, ctx: LoggerContext) -> None:
        self.path = ctx.run_dir / "metrics.jsonl"
        keep_rows_up_to(self.path, ctx.start_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._t0 = time.time()

    def log(self, step: int, scalars: Mapping[str, Any]) -> None:
        row = {"step": step, "time": round(time.time() - self._t0, 3), **scalars}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self, status: str = "finished") -> None:
        self._file.close()


class TensorBoardLogger(MetricsLogger):
    """The core's ``tensorboard`` logger (on while ``runtime.tensorboard``): event files under
    ``<run>/tensorboard``, every finite number as the scalar ``train/<name>``."""

    def __init__(self, ctx: LoggerContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(ctx.run_dir / "tensorboard"))

    def log(self, step: int, scalars: Mapping[str, Any]) -> None:
        for k, v in scalars.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self._tb.add_scalar(f"train/{k}", v, step)

    def close(self, status: str = "finished") -> None:
        self._tb.close()


def build_jsonl_logger(options: Any, ctx: LoggerContext) -> MetricsLogger:
    return JsonlLogger(ctx)


def build_tensorboard_logger(options: Any, ctx: LoggerContext) -> MetricsLogger:
    return TensorBoardLogger(ctx)


class MetricsWriter:
    """The trainer's one writer (rank 0): passes each log step's values to the run's loggers
    (``metrics.jsonl``, TensorBoard, a plugin's tracker) and shows step, loss, rel_loss, lr, tau,
    target_var, samples/s and ETA, as a rich progress bar when ``progress`` and ``stream`` is a
    terminal, otherwise as one plain line per logged step (never cut to a width).

    ``loggers``: ``(name, factory(ctx))`` pairs, opened here (default: JSONL only). A logger that
    raises (when opened or in any call) is reported once on ``errors`` (stderr) and left out for
    the rest of the run: a broken tracker never stops training."""

    def __init__(self, ctx: LoggerContext, loggers: Sequence[tuple[str, LoggerFactory]] | None = None, *,
                 config: Mapping[str, Any] | None = None, progress: bool = True, stream: TextIO | None = None,
                 errors: TextIO | None = None) -> None:
        self._errors = errors
        self.loggers: dict[str, MetricsLogger] = {}
        self.failed: dict[str, str] = {}  # logger name -> the error that turned it off
        for name, factory in loggers if loggers is not None else [("jsonl", JsonlLogger)]:
            logger = self._call(name, "open", factory, ctx)
            if isinstance(logger, MetricsLogger):
                self.loggers[name] = logger
            elif name not in self.failed:
                self._fail(name, "open", TypeError(f"the factory returned {type(logger).__name__}, not a d2v MetricsLogger"))
        if config is not None:
            self._each("log_config", config)
        self._progress = None
        self._stream = stream if stream is not None else sys.stdout
        self._max_steps, self._start_step = ctx.max_steps, ctx.start_step
        if progress and getattr(self._stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(), transient=False, console=Console(file=self._stream),
            )
            self._task = self._progress.add_task("pretrain", total=ctx.max_steps, completed=ctx.start_step, info="")
            self._progress.start()
        self._t0 = time.time()

    # -- one failing logger never stops the others or the run -----------------------------------
    def _fail(self, name: str, what: str, exc: BaseException) -> None:
        self.loggers.pop(name, None)
        self.failed[name] = f"{type(exc).__name__}: {first_line(exc)}"
        print(f"d2v: logger {name!r} failed ({what}): {self.failed[name]}; it is off for the rest of this run",
              file=self._errors or sys.stderr, flush=True)

    def _call(self, name: str, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - any error of a sink is reported, then the sink is dropped
            self._fail(name, what, exc)
            return None

    def _each(self, method: str, *args: Any) -> None:
        for name, logger in list(self.loggers.items()):
            self._call(name, method if method != "log" else f"log at step {args[0]}", getattr(logger, method), *args)

    # -- the trainer's calls ---------------------------------------------------------------------
    def log(self, step: int, values: dict[str, Any]) -> None:
        self._each("log", step, values)
        if self._progress is not None:
            info = " ".join(f"{k}={values[k]:.4g}" for k in SHOWN if k in values)
            self._progress.update(self._task, completed=step, info=info)
        else:
            done = step - self._start_step
            eta = (self._max_steps - step) * (time.time() - self._t0) / done if done > 0 else float("nan")
            print(plain_line(step, self._max_steps, values, eta), file=self._stream, flush=True)

    def close(self, status: str | None = None) -> None:
        """Close every logger; ``status`` (default: ``"failed"`` while an error propagates,
        ``"killed"`` for an interrupt, else ``"finished"``) is passed to each."""
        if status is None:
            exc = sys.exc_info()[1]
            status = "finished" if exc is None else "killed" if isinstance(exc, KeyboardInterrupt) else "failed"
        if self._progress is not None:
            self._progress.stop()
        self._each("close", status)
        self.loggers.clear()


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
