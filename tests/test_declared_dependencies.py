"""Every distribution declares exactly what it imports.

Each distribution's modules are parsed (no import), their top-level absolute imports mapped to
the distributions that provide them, and compared with its ``pyproject.toml``: an import must be a
declared dependency (or one of an extra, for optional features such as ``hf`` export), and a
declared dependency must be imported, unless it is a constraint listed below with its reason.
The installed check (each plugin's wheel alone in a fresh environment) is
``tests/test_wheels_installed.py``.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

# distribution folder -> the import packages it ships
DISTRIBUTIONS = {
    ".": ("d2v_core", "cli"),
    "plugins/d2v-plugin-audio": ("d2v_plugin_audio",),
    "plugins/d2v-plugin-image": ("d2v_plugin_image",),
    "plugins/d2v-plugin-text": ("d2v_plugin_text",),
    "plugins/d2v-plugin-maskers": ("d2v_plugin_maskers",),
    "plugins/d2v-plugin-example": ("d2v_plugin_example",),
    "plugins/d2v-plugin-mlflow": ("d2v_plugin_mlflow",),
}
# declared but not imported by name, on purpose
CONSTRAINTS = {
    "d2v": {
        "tensorboard": "imported as torch.utils.tensorboard",
        "torchvision": "timm imports it; pinned to the build for torch 2.11 so that no install replaces torch",
    },
    "d2v-plugin-mlflow": {
        "sqlalchemy": "mlflow's SQLite tracking store (the default store) imports it; mlflow-skinny does not require it",
        "alembic": "mlflow's SQLite tracking store migrates its tables with it; mlflow-skinny does not require it",
    },
}
# import names that are this project's own distributions
OWN = {"d2v_core": "d2v", "d2v_cli": "d2v", "cli": "d2v"}


def _imports(package_dir: Path) -> dict[str, str]:
    """Top-level names of absolute imports in every module under ``package_dir`` -> one file using it."""
    found: dict[str, str] = {}
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _declared(pyproject: dict) -> tuple[set[str], set[str]]:
    project = pyproject["project"]
    deps = {canonicalize_name(Requirement(r).name) for r in project.get("dependencies", [])}
    extras = {canonicalize_name(Requirement(r).name) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    return deps, extras


def _distribution_of(module: str, own_packages: tuple[str, ...], name: str) -> str | None:
    """The distribution an import comes from; None for the standard library and the dist itself."""
    if module in sys.stdlib_module_names or module == "__future__" or module in own_packages:
        return None
    if module in OWN:
        return None if OWN[module] == name else OWN[module]
    if module.startswith("d2v_plugin_"):
        return canonicalize_name(module)
    providers = md.packages_distributions().get(module)
    if not providers:
        raise AssertionError(f"import {module!r}: no installed distribution provides it")
    return canonicalize_name(providers[0])


def undeclared_imports(folder: str, deps: set[str], extras: set[str]) -> dict[str, str]:
    """Imported distributions that ``deps`` and ``extras`` leave out -> a file importing it."""
    name = canonicalize_name(tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]["name"])
    missing = {}
    for package in DISTRIBUTIONS[folder]:
        for module, where in _imports(ROOT / folder / package).items():
            dist = _distribution_of(module, DISTRIBUTIONS[folder], name)
            if dist is not None and dist not in deps | extras:
                missing.setdefault(dist, where)
    return missing


@pytest.mark.parametrize("folder", sorted(DISTRIBUTIONS))
def test_every_import_is_declared(folder):
    deps, extras = _declared(tomllib.loads((ROOT / folder / "pyproject.toml").read_text()))
    assert undeclared_imports(folder, deps, extras) == {}


@pytest.mark.parametrize("folder", sorted(DISTRIBUTIONS))
def test_every_dependency_is_imported(folder):
    pyproject = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())
    name = canonicalize_name(pyproject["project"]["name"])
    deps, _ = _declared(pyproject)
    used = set()
    for package in DISTRIBUTIONS[folder]:
        for module in _imports(ROOT / folder / package):
            dist = _distribution_of(module, DISTRIBUTIONS[folder], name)
            if dist:
                used.add(dist)
    unused = deps - used - set(CONSTRAINTS.get(name, {}))
    assert unused == set(), f"{name} declares {sorted(unused)} but imports none of them"


def test_a_removed_dependency_is_reported():
    """The check can fail: the text plugin without sentencepiece, the core without timm."""
    deps, extras = _declared(tomllib.loads((ROOT / "plugins/d2v-plugin-text/pyproject.toml").read_text()))
    missing = undeclared_imports("plugins/d2v-plugin-text", deps - {"sentencepiece"}, extras)
    assert set(missing) == {"sentencepiece"} and missing["sentencepiece"].endswith(".py")
    deps, extras = _declared(tomllib.loads((ROOT / "pyproject.toml").read_text()))
    assert set(undeclared_imports(".", deps - {"timm"}, extras)) == {"timm"}


def test_no_install_can_move_torch():
    """torch and torchaudio are a matched pair: every torch-built package is pinned to torch 2.11's build."""
    pins = {}
    for folder in DISTRIBUTIONS:
        for r in tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]["dependencies"]:
            req = Requirement(r)
            if req.name in ("torch", "torchvision", "torchaudio") and str(req.specifier):
                pins[(folder, req.name)] = str(req.specifier)
    assert pins[(".", "torch")] == "==2.11.*"
    assert pins[(".", "torchvision")] == "==0.26.*"
    assert pins[("plugins/d2v-plugin-image", "torchvision")] == "==0.26.*"
    assert pins[("plugins/d2v-plugin-audio", "torchaudio")] == "==2.11.0"
