"""``d2v_cli.testing.run_cli``, the in-process runner every test of the CLI uses (the plugins' too)."""

from __future__ import annotations

import sys

import pytest

from d2v_cli.testing import CliResult, run_cli
from d2v_core import __version__


def test_stdout_stderr_and_exit_code_are_kept_apart():
    before = sys.stdout, sys.stderr
    assert run_cli(["--version"]) == CliResult(0, f"d2v {__version__}\n", "")
    code, out, err = run_cli(["config", "show", "--modality", "vectors", "--no-such-flag"])
    assert code == 2 and out == "" and "No such option: --no-such-flag" in err  # click's usage error
    assert (sys.stdout, sys.stderr) == before  # the process's streams are given back


def test_a_d2v_error_is_one_line_and_debug_adds_the_traceback(example_plugins):
    result = run_cli(["config", "show", "--modality", "nosuch"])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result
    debug = run_cli(["--debug", "config", "show", "--modality", "nosuch"])
    assert debug.exit_code == 2 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.endswith(result.stderr)


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (3, 3), ("a message", 1)])
def test_exit_status_is_what_the_process_would_exit_with(monkeypatch, code, status):
    import d2v_cli.app

    def exits(args):
        raise SystemExit(code)

    monkeypatch.setattr(d2v_cli.app, "main", exits)
    assert run_cli([]).exit_code == status
