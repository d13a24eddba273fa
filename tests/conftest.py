"""Shared fixtures: in-process plugins and a helper to run the CLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = ROOT / "plugins" / "d2v-plugin-example"
if str(EXAMPLE_PLUGIN) not in sys.path:  # the example plugin, usable in-process without installing
    sys.path.insert(0, str(EXAMPLE_PLUGIN))

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def example_plugins():
    """The example 'vectors' modality registered in-process (nothing installed)."""
    from d2v_core.plugin_loader import plugin_context
    from d2v_plugin_example import plugin

    with plugin_context(plugin) as loaded:
        yield loaded


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``d2v ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from d2v_cli.app import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def cli(capsys):
    """``cli(["config", "show", ...]) -> (exit code, stdout, stderr)``."""
    return lambda args: run_cli(args, capsys)
