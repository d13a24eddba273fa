"""Progress of a counted job on the console: a rich bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from d2v_core.train.metrics import format_eta


class CountProgress:
    """``with CountProgress(total, "embedded", "record") as p: p.advance(n)``.

    On a terminal a rich bar; otherwise one line each time another tenth of ``total`` is done
    (``embedded 160/1600 records (41.2/s, eta 0:00:35)``), so a log file shows the job moving."""

    def __init__(self, total: int, verb: str, noun: str, stream: TextIO | None = None) -> None:
        self.total, self.verb, self.noun = total, verb, noun
        self.stream = stream if stream is not None else sys.stderr
        self.done, self._next_line = 0, max(1, total // 10)
        self._bar: Any = None  # a rich Progress on a terminal

    def __enter__(self) -> "CountProgress":
        self._t0 = time.time()
        if getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(f"{self.verb} {self.noun}s"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=Console(file=self.stream), transient=True)
            self._task = self._bar.add_task(self.verb, total=self.total)
            self._bar.start()
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
        elif self.done >= self._next_line or self.done == self.total:
            self._next_line = self.done + max(1, self.total // 10)
            elapsed = max(time.time() - self._t0, 1e-9)
            rate = self.done / elapsed
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            print(f"{self.verb} {self.done}/{self.total} {self.noun}s ({rate:.3g}/s, eta {format_eta(eta)})",
                  file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
