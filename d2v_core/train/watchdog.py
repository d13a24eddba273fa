"""Signals always win: a thread that ends the process when a stop signal is not obeyed in time.

The trainer's SIGINT/SIGTERM handler only sets a flag, and Python runs that handler in the main
thread between bytecodes: a record decoder that never returns, or a collective waiting for a
rank that stopped answering (SIGSTOP, a dead host), would keep the process alive forever. The C
handler also writes the signal number to ``signal.set_wakeup_fd``'s pipe, even while the main
thread is stuck in C code; this thread reads it and, if the run then makes no progress (no
finished step, :meth:`StopWatchdog.beat`) for ``timeout`` seconds, prints one line and exits with
128 + the signal number. A run that keeps stepping is left to reach its next check step, where
all ranks agree to stop and write a checkpoint. The checkpoints
already written are complete; one being written is a ``.tmp-`` directory, never loaded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable


class StopWatchdog:
    """Between :meth:`start` and :meth:`stop` (both on the main thread), a stop signal that is
    not obeyed within ``timeout`` seconds ends the process; ``describe()`` says where the run
    stands, for the message."""

    def __init__(self, timeout: float, describe: Callable[[], str]) -> None:
        self.timeout, self.describe = timeout, describe
        self._done = threading.Event()
        self._beats = 0  # finished steps; read by the watchdog thread (an int: no lock needed)
        self._fds: tuple[int, int] | None = None
        self._previous = -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            self._previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: no signal handlers here either
            os.close(read_fd)
            os.close(write_fd)
            return
        self._fds = (read_fd, write_fd)
        self._thread = threading.Thread(target=self._watch, name="d2v-stop-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        assert self._fds is not None
        while True:
            try:
                data = os.read(self._fds[0], 64)
            except OSError:
                return
            if self._done.is_set() or not data:
                return
            signums = [b for b in data if b in (signal.SIGINT, signal.SIGTERM)]
            if not signums or self._stalled() is False:
                continue
            name = signal.Signals(signums[0]).name
            sys.stderr.write(
                f"error: {name} received, but the run did not stop within {self.timeout:g} s and no step finished (runtime.stop_timeout_s): "
                f"a record decoder or another rank does not respond; exiting without a new checkpoint ({self.describe()})\n"
            )
            sys.stderr.flush()
            os._exit(128 + signums[0])

    def beat(self) -> None:
        """A step finished (main thread)."""
        self._beats += 1

    def _stalled(self) -> bool:
        """Wait until the run ends (False) or makes no progress for ``timeout`` seconds (True)."""
        while True:
            seen = self._beats
            if self._done.wait(self.timeout):
                return False
            if self._beats == seen:
                return True

    def stop(self) -> None:
        self._done.set()
        if self._fds is None:
            return
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(self._previous)
        with contextlib.suppress(OSError):
            os.write(self._fds[1], b"\0")  # wake the thread so that it sees the run is over
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = None
