"""Plugin discovery: broken plugins are reported without stopping the rest; strict mode; selection;
installation through real entry points (a dist-info on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from d2v_core import ComponentSpec, hookimpl
from d2v_core.errors import DuplicateComponentError, PluginError, UnknownComponentError
from d2v_core.plugin_loader import PluginSource, load_plugins, module_source


def make_plugin(name: str, register=None, api: str | None = "1.0"):
    mod = types.ModuleType(f"fake_{name}")
    if api is not None:
        mod.D2V_PLUGIN_API_VERSION = api
    if register is not None:
        mod.d2v_register = hookimpl(register)
    return mod


def masker_plugin(name: str, masker: str):
    def register(registry):
        registry.add_component(ComponentSpec("masker", masker, "x:y"))

    return make_plugin(name, register)


def failing_import_source(name: str) -> PluginSource:
    def load():
        raise ImportError("No module named 'missing_dependency'")

    return PluginSource(name, f"d2v-plugin-{name}", "0.1", f"{name}.plugin", load)


def statuses(loaded):
    return {p.name: p for p in loaded.plugins}


def test_broken_plugins_are_reported_and_the_rest_still_load():
    def bad_return(registry):
        return ["not", "none"]

    def raises(registry):
        raise RuntimeError("boom in hook")

    def wrong_type(registry):
        registry.add_modality({"name": "dict-is-not-a-spec"})

    sources = [
        module_source(masker_plugin("good", "good-masker"), "good"),
        failing_import_source("importfail"),
        module_source(make_plugin("badreturn", bad_return), "badreturn"),
        module_source(make_plugin("raises", raises), "raises"),
        module_source(make_plugin("wrongtype", wrong_type), "wrongtype"),
        module_source(make_plugin("future", lambda registry: None, api="2.0"), "future"),
        module_source(make_plugin("noversion", lambda registry: None, api=None), "noversion"),
    ]
    loaded = load_plugins(sources, strict=False, only=None, disabled=set())
    st = statuses(loaded)
    assert st["good"].status == "ok" and st["good"].provides == ["masker:good-masker"]
    assert loaded.registry.names("masker") == ["good-masker"]
    assert "missing_dependency" in st["importfail"].error
    assert "must register through the registry and return None" in st["badreturn"].error
    assert "boom in hook" in st["raises"].error
    assert "ModalitySpec" in st["wrongtype"].error
    assert "needs plugin API 2.0" in st["future"].error and "provides 1.0" in st["future"].error
    assert "D2V_PLUGIN_API_VERSION" in st["noversion"].error
    for name in ("importfail", "badreturn", "raises", "wrongtype", "future", "noversion"):
        assert st[name].status == "error"


def test_failed_plugin_registers_nothing():
    def half(registry):
        registry.add_component(ComponentSpec("masker", "half", "x:y"))
        raise RuntimeError("fails after registering")

    loaded = load_plugins([module_source(make_plugin("half", half), "half")], strict=False, only=None, disabled=set())
    assert loaded.registry.names("masker") == []


def modality_plugin(name: str, modality: str, masker: str):
    from d2v_core import ModalitySpec

    def register(registry):
        registry.add_modality(ModalitySpec(name=modality, encoder="x:y", encoder_options=None, record_decoder="x:y",
                                            data_options=None, default_masker=masker, presets={}))
        registry.add_component(ComponentSpec("masker", masker, "x:y"))

    return make_plugin(name, register)


@pytest.mark.parametrize("order", ["official-first", "impostor-first"])
def test_a_duplicate_name_is_refused_for_both_whatever_the_order(order):
    """An impostor that sorts before ``audio`` and registers ``audio``/``span`` must not win, nor
    may it get the official plugin rejected: both are refused, and the message names both."""
    official = PluginSource("audio", "d2v-plugin-audio", "1.0", "audio", lambda: modality_plugin("audio", "audio", "span"))
    impostor = PluginSource("aaa", "d2v-plugin-aaa", "6.6", "aaa", lambda: modality_plugin("aaa", "audio", "span"))
    sources = [official, impostor] if order == "official-first" else [impostor, official]
    loaded = load_plugins(sources, strict=False, only=None, disabled=set())
    st = statuses(loaded)
    assert st["audio"].status == st["aaa"].status == "error"
    for row in (st["audio"], st["aaa"]):
        assert "d2v-plugin-audio (plugin 'audio')" in row.error and "d2v-plugin-aaa (plugin 'aaa')" in row.error
    with pytest.raises(DuplicateComponentError, match=r"modality 'audio' is registered by 2 distributions.*d2v-plugin-aaa"):
        loaded.registry.modality("audio")
    with pytest.raises(DuplicateComponentError, match=r"masker 'span' is registered by 2 distributions"):
        loaded.registry.component("masker", "span")
    with pytest.raises(PluginError) as info:
        load_plugins(sources, strict=True, only=None, disabled=set())
    assert "d2v-plugin-audio (plugin 'audio')" in str(info.value) and "d2v-plugin-aaa (plugin 'aaa')" in str(info.value)


def test_a_clash_is_resolved_by_disabling_one_plugin():
    official = PluginSource("audio", "d2v-plugin-audio", "1.0", "audio", lambda: modality_plugin("audio", "audio", "span"))
    impostor = PluginSource("aaa", "d2v-plugin-aaa", "6.6", "aaa", lambda: modality_plugin("aaa", "audio", "span"))
    loaded = load_plugins([impostor, official], strict=True, only=None, disabled={"d2v-plugin-aaa"})
    assert loaded.registry.modality("audio").distribution == "d2v-plugin-audio"
    assert statuses(loaded)["aaa"].status == "disabled"


def test_a_plugin_reusing_a_core_name_is_refused_and_the_core_keeps_it():
    def register(registry):
        registry.add_component(ComponentSpec("normalizer", "instance", "x:y"))

    loaded = load_plugins([module_source(make_plugin("norm", register), "norm", "d2v-plugin-norm")], strict=False,
                          only=None, disabled=set())
    assert statuses(loaded)["norm"].status == "error" and "d2v keeps its own" in statuses(loaded)["norm"].error
    assert loaded.registry.component("normalizer", "instance").distribution == "d2v"


def test_duplicate_name_names_both_distributions():
    a = PluginSource("a", "d2v-plugin-a", "1.0", "a", lambda: masker_plugin("a", "span"))
    b = PluginSource("b", "d2v-plugin-b", "2.0", "b", lambda: masker_plugin("b", "span"))
    loaded = load_plugins([a, b], strict=False, only=None, disabled=set())
    st = statuses(loaded)
    assert st["a"].status == st["b"].status == "error"
    assert all("d2v-plugin-a" in st[n].error and "d2v-plugin-b" in st[n].error for n in "ab")
    assert loaded.registry.names("masker") == []


def test_strict_mode_makes_any_failure_fatal(monkeypatch):
    with pytest.raises(PluginError, match="importfail"):
        load_plugins([failing_import_source("importfail")], strict=True, only=None, disabled=set())
    monkeypatch.setenv("D2V_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError):
        load_plugins([failing_import_source("importfail")])


def test_env_selects_and_disables(monkeypatch):
    sources = [module_source(masker_plugin("p1", "m1"), "p1"), module_source(masker_plugin("p2", "m2"), "p2")]
    monkeypatch.setenv("D2V_LOAD_PLUGINS", "p1")
    st = statuses(load_plugins(sources))
    assert st["p1"].status == "ok" and st["p2"].status == "not-selected"
    monkeypatch.delenv("D2V_LOAD_PLUGINS")
    monkeypatch.setenv("D2V_DISABLE_PLUGINS", "p1")
    loaded = load_plugins(sources)
    assert statuses(loaded)["p1"].status == "disabled"
    assert loaded.registry.names("masker") == ["m2"]


def test_unknown_component_lists_what_is_installed(example_plugins):
    reg = example_plugins.registry
    with pytest.raises(UnknownComponentError, match=r"unknown modality 'audio2' \(installed: vectors\); install the plugin that provides this modality"):
        reg.modality("audio2")
    with pytest.raises(UnknownComponentError, match=r"installed: random"):
        reg.component("masker", "nope", modality="vectors")


# -- real installation: a distribution on sys.path with an entry point ----------------------------

def _install_fake_distribution(site: Path, dist: str, module: str, body: str) -> None:
    (site / f"{module}.py").write_text(textwrap.dedent(body))
    info = site / f"{dist.replace('-', '_')}-0.3.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text(f"[d2v]\nfakeplug = {module}\n")


PLUGIN_BODY = """
from d2v_core import ComponentSpec, hookimpl
D2V_PLUGIN_API_VERSION = "1.0"

@hookimpl
def d2v_register(registry):
    registry.add_component(ComponentSpec("masker", "fake-masker", "x:y", description="installed"))
"""


def _list_plugins_json(extra_path: Path | None) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(extra_path) if extra_path else None, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "d2v_cli.app", "list-plugins", "--json"], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def test_installing_and_uninstalling_a_distribution_changes_list_plugins(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install_fake_distribution(site, "d2v-plugin-fake", "d2v_fake_plugin", PLUGIN_BODY)
    rows = {r["name"]: r for r in _list_plugins_json(site)}
    assert rows["fakeplug"]["distribution"] == "d2v-plugin-fake"
    assert rows["fakeplug"]["version"] == "0.3.0"
    assert rows["fakeplug"]["provides"] == ["masker:fake-masker"]
    import shutil

    shutil.rmtree(site)  # uninstall
    assert "fakeplug" not in {r["name"] for r in _list_plugins_json(None)}


def test_broken_installed_plugin_does_not_break_the_cli(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install_fake_distribution(site, "d2v-plugin-broken", "d2v_broken_plugin", "raise ImportError('needs libfoo')\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    for args in (["--help"], ["--version"], ["list-plugins"]):
        res = subprocess.run([sys.executable, "-m", "d2v_cli.app", *args], capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in _list_plugins_json(site)}
    assert rows["fakeplug"]["status"] == "error" and "needs libfoo" in rows["fakeplug"]["error"]
    strict = subprocess.run([sys.executable, "-m", "d2v_cli.app", "list-plugins"], capture_output=True, text=True,
                            env={**env, "D2V_STRICT_PLUGINS": "1"})
    assert strict.returncode != 0
    assert strict.stderr.startswith("error: plugin 'fakeplug'") and "Traceback" not in strict.stderr
