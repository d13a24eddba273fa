"""Build d2v's wheels and install them the way a user does, one plugin per environment.

Used by ``tests/test_wheels_installed.py`` and the plugin guide's test. An environment is three
layers, each a plain folder on ``sys.path``:

1. **torch**: torch and the packages it requires, linked (not copied) from the environment that
   runs the tests. Nothing else is there, so every other import must come from a layer below.
   Installing torch afresh would download ~3.7 GB per environment.
2. **core**: a virtual environment where pip installed the core wheel with its declared
   dependencies only (from the package index; pip's cache keeps repeats cheap).
3. **plugin**: a virtual environment that sees the two layers above (a ``.pth`` file) and where pip
   installed one plugin's wheel with its declared dependencies only.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = {
    "audio": "plugins/d2v-plugin-audio",
    "image": "plugins/d2v-plugin-image",
    "text": "plugins/d2v-plugin-text",
    "maskers": "plugins/d2v-plugin-maskers",
    "example": "plugins/d2v-plugin-example",
    "mlflow": "plugins/d2v-plugin-mlflow",
}
_IGNORE = shutil.ignore_patterns(".venv", "tests", "__pycache__", "build", "dist", "*.egg-info", "runs", "*.pyc")


class InstallCheckError(AssertionError):
    """A command in an installed environment failed; the message has its output."""


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """Run ``cmd``; its combined output, or :class:`InstallCheckError` with it on failure."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise InstallCheckError(f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n{out[-4000:]}")
    return out


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for commands in a test environment: nothing leaks in from this one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYTEST", "COV_"))}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PIP_NO_INPUT": "1", **extra})
    return env


def build_wheel(source: Path, out: Path, scratch: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of ``source`` (the checkout stays free of build files)."""
    copy = scratch / source.name
    if source == ROOT:
        copy.mkdir(parents=True)
        for name in ("pyproject.toml", "README.md", "d2v_core", "cli"):
            src = ROOT / name
            (shutil.copytree(src, copy / name, ignore=_IGNORE) if src.is_dir() else shutil.copy2(src, copy / name))
    else:
        shutil.copytree(source, copy, ignore=_IGNORE)
    before = set(out.glob("*.whl"))
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(copy)])
    (made,) = set(out.glob("*.whl")) - before
    return made


def _requirements(dist: md.Distribution) -> list[str]:
    names = []
    for r in dist.requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def link_torch_layer(layer: Path, roots: tuple[str, ...] = ("torch",)) -> list[str]:
    """Link ``roots`` and everything they require (recursively) from this environment into ``layer``."""
    layer.mkdir(parents=True, exist_ok=True)
    todo, seen = list(roots), set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = md.distribution(name)
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            target = layer / top
            if not target.exists() and (base / top).exists():
                target.symlink_to(base / top)
        todo.extend(_requirements(dist))
    return sorted(seen)


def site_packages(env_dir: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))


def make_env(env_dir: Path, layers: list[Path]) -> Path:
    """A virtual environment without pip that also sees ``layers``; returns its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    sp = site_packages(env_dir)
    (sp / "_d2v_test_layers.pth").write_text("".join(f"{p}\n" for p in layers), encoding="utf-8")
    return env_dir / "bin" / "python"


def pip_install(python: Path, *wheels: Path, find_links: Path | None = None) -> str:
    """This environment's pip installs ``wheels`` and their declared dependencies into ``python``'s env."""
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-warn-script-location"]
    if find_links is not None:
        cmd += ["--find-links", str(find_links)]
    return run(cmd + [str(w) for w in wheels], env=clean_env())


def d2v(python: Path, *args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """``d2v ARGS`` in the environment of ``python``."""
    return run([str(python), "-m", "d2v_cli.app", *args], cwd=cwd, env=clean_env(**(env or {})), timeout=timeout)


def plugin_env(base: Path, env_dir: Path) -> Path:
    """A fresh environment on the torch and core layers of ``base`` (the ``core_env`` fixture)."""
    return make_env(env_dir, [base / "torch", site_packages(base / "core")])
