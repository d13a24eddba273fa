"""The package root's ``__all__`` is the whole plugin API: every plugin in this repository (its
non-test code) imports nothing else from d2v_core, every name of it resolves, and the docs list it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import d2v_core

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FILES = sorted(p for p in ROOT.glob("plugins/*/d2v_plugin_*/**/*.py"))


def core_imports(path: Path) -> list[tuple[int, str]]:
    """(line, what) for every import of d2v_core outside the root API in ``path``."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "d2v_core":
            if node.module != "d2v_core":
                bad.append((node.lineno, f"from {node.module} import ..."))
            else:
                bad += [(node.lineno, f"d2v_core.{a.name} (not in __all__)") for a in node.names if a.name not in d2v_core.__all__]
        elif isinstance(node, ast.Import):
            bad += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] == "d2v_core"]
    return bad


def test_every_plugin_is_walked():
    dists = {p.relative_to(ROOT).parts[1] for p in PLUGIN_FILES}
    assert {"d2v-plugin-audio", "d2v-plugin-image", "d2v-plugin-text", "d2v-plugin-maskers", "d2v-plugin-example"} <= dists


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(ROOT / "plugins")))
def test_plugins_import_only_the_root_api(path):
    assert core_imports(path) == []


def test_the_walk_catches_a_private_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from d2v_core import Masker\nfrom d2v_core.config import RunConfig\nimport d2v_core.train\n"
                 "def f():\n    from d2v_core import NotAName\n")
    assert [line for line, _ in core_imports(f)] == [2, 3, 5]


@pytest.mark.parametrize("name", d2v_core.__all__)
def test_every_public_name_resolves_and_is_documented(name):
    getattr(d2v_core, name)
    docs = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert f"`{name}`" in docs, f"{name} is in d2v_core.__all__ but docs/architecture.md does not list it"


def _repo_registry():
    import importlib

    from d2v_core.plugin_loader import module_source, plugin_context

    names = ("audio", "image", "text", "maskers", "example")
    return plugin_context(*(module_source(importlib.import_module(f"d2v_plugin_{n}.plugin"), name=n) for n in names))


def test_every_factory_in_the_repo_takes_the_documented_arguments():
    """Each factory accepts exactly the arguments ``interfaces.FACTORY_ARGS`` (and the plugin
    guide) say the core passes: no more required, no fewer accepted."""
    import inspect

    from d2v_core.interfaces import FACTORY_ARGS
    from d2v_core.specs import COMPONENT_KINDS, load_ref

    def takes(factory, n: int) -> bool:
        sig = inspect.signature(factory)
        try:
            sig.bind(*range(n))
        except TypeError:
            return False
        return True

    checked = []
    with _repo_registry() as loaded:
        reg = loaded.registry
        assert not loaded.errors(), [p.error for p in loaded.errors()]
        for name in reg.modalities():
            spec = reg.modality(name)
            for kind, ref in (("encoder", spec.encoder), ("record_decoder", spec.record_decoder)):
                n = len(FACTORY_ARGS[kind])
                assert takes(load_ref(ref), n) and (not takes(load_ref(ref), n + 1) or _varargs(load_ref(ref))), (name, kind)
                checked.append(f"{name}:{kind}")
        for kind in COMPONENT_KINDS:
            for cname in reg.names(kind):
                factory = reg.component(kind, cname).load_factory()
                assert takes(factory, len(FACTORY_ARGS[kind])), (kind, cname, len(FACTORY_ARGS[kind]))
                checked.append(f"{kind}:{cname}")
    assert {"audio:encoder", "text:record_decoder", "masker:span", "decoder:conv2d", "normalizer:instance"} <= set(checked)


def _varargs(factory) -> bool:
    import inspect

    return any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(factory).parameters.values())


def test_the_plugin_guide_lists_the_factory_signatures():
    from d2v_core.interfaces import FACTORY_ARGS

    guide = (ROOT / "docs" / "plugin-guide.md").read_text(encoding="utf-8")
    for kind, args in FACTORY_ARGS.items():
        assert f"factory({', '.join(args)})" in guide, kind
