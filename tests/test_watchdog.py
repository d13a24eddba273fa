"""The stop watchdog: after a signal, a run that keeps finishing steps is left to reach its check
step (where the ranks agree to stop and checkpoint); one that finishes none is ended."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from d2v_core.train.watchdog import StopWatchdog
    signal.signal(signal.SIGTERM, lambda *a: None)  # the trainer's handler only sets a flag
    dog = StopWatchdog(1.0, lambda: "test")
    dog.start()
    os.kill(os.getpid(), signal.SIGTERM)
    beat = sys.argv[1] == "beat"
    end = time.time() + 3.0
    while time.time() < end:  # 3 s of steps of 0.2 s each, or one stuck step
        time.sleep(0.2)
        if beat:
            dog.beat()
    dog.stop()
    print("finished")
    """
)


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)


def test_a_run_that_keeps_stepping_is_not_ended_by_the_watchdog():
    proc = _run("beat")
    assert proc.returncode == 0, proc.stderr
    assert "finished" in proc.stdout


def test_a_run_with_no_finished_step_is_ended_after_the_timeout():
    proc = _run("stuck")
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, proc.stderr)
    assert "finished" not in proc.stdout
    assert "SIGTERM received, but the run did not stop within 1 s" in proc.stderr
