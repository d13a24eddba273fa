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


@pytest.fixture
def cli():
    """``cli(["config", "show", ...]) -> (exit code, stdout, stderr)``: :func:`d2v_cli.testing.run_cli`."""
    from d2v_cli.testing import run_cli

    return run_cli


@pytest.fixture(scope="session")
def core_env(tmp_path_factory):
    """The seven wheels (``dist/``), a torch layer and the core wheel installed with its declared
    dependencies (``core/``): made once per test session and shared by every xdist worker (see
    ``tests/wheel_env.py``)."""
    from filelock import FileLock

    sys.path.insert(0, str(Path(__file__).parent))
    import wheel_env

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    shared = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    base = shared / "d2v-wheels"
    with FileLock(str(shared / "d2v-wheels.lock")):
        if not (base / "ready").exists():
            import shutil

            shutil.rmtree(base, ignore_errors=True)
            dist = base / "dist"
            dist.mkdir(parents=True)
            for folder in (wheel_env.ROOT, *(wheel_env.ROOT / p for p in wheel_env.PLUGINS.values())):
                wheel_env.build_wheel(folder, dist, base / "src")
            wheel_env.link_torch_layer(base / "torch")
            python = wheel_env.make_env(base / "core", [base / "torch"])
            wheel_env.pip_install(python, *dist.glob("d2v-*.whl"))
            (base / "ready").touch()
    return base
