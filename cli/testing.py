"""Run ``d2v`` in-process from tests: the core's tests and any plugin's (which get this module with
the ``d2v`` distribution they depend on).

    from d2v_cli.testing import run_cli
    code, out, err = run_cli(["config", "show", "--modality", "audio"])
    assert code == 0, err

The command runs through :func:`d2v_cli.app.main`, the console entry point, so its error boundary
(one-line errors, exit codes, ``--debug``) is what a test sees. Plugins registered in-process
(``d2v_core.testing.plugin_context``) are the ones it uses.
"""

from __future__ import annotations

import contextlib
import io
from typing import NamedTuple

__all__ = ["CliResult", "run_cli"]


class CliResult(NamedTuple):
    """What ``d2v ARGS`` did: its exit code and everything it printed to stdout and stderr."""

    exit_code: int
    stdout: str
    stderr: str


def run_cli(args: list[str]) -> CliResult:
    """Run ``d2v ARGS`` in this process and capture its output (``sys.stdout`` and ``sys.stderr``
    while it runs; not what a child process writes to the file descriptors)."""
    from d2v_cli.app import main  # on call: importing this module loads no command

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exc:  # main() always exits; click's usage errors exit 2
            code = _exit_status(exc.code)
    return CliResult(code, out.getvalue(), err.getvalue())


def _exit_status(code: str | int | None) -> int:
    """The status a process exits with after ``sys.exit(code)``: None is 0, a message is 1."""
    if code is None:
        return 0
    return int(code) if isinstance(code, int) else 1
