"""Discover plugins through entry points, load them fail-soft, and keep what went wrong.

Environment:
- ``D2V_STRICT_PLUGINS=1``: any plugin failure raises :class:`PluginError`.
- ``D2V_LOAD_PLUGINS=a,b``: load only these plugins (entry-point or distribution names).
- ``D2V_DISABLE_PLUGINS=a``: never load these.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Iterable, Iterator

import pluggy

from d2v_core import PLUGIN_API_VERSION, hookspecs
from d2v_core.errors import DuplicateComponentError, PluginError
from d2v_core.registry import Registry

CORE_PLUGIN = "core"


@dataclass
class PluginSource:
    """Where a plugin comes from: an installed entry point or an in-process module."""

    name: str
    distribution: str
    version: str
    module: str
    load: Callable[[], object]


@dataclass
class PluginStatus:
    """One row of ``d2v list-plugins``."""

    name: str
    distribution: str
    version: str
    module: str
    status: str  # ok | error | disabled | not-selected
    provides: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class LoadedPlugins:
    registry: Registry
    plugins: list[PluginStatus]
    manager: pluggy.PluginManager

    def errors(self) -> list[PluginStatus]:
        return [p for p in self.plugins if p.status == "error"]


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


def installed_sources() -> list[PluginSource]:
    """Entry points in the ``d2v`` group, with the distribution that declares each."""
    sources = []
    for ep in md.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        sources.append(
            PluginSource(
                name=ep.name,
                distribution=dist.metadata["Name"] if dist is not None else "?",
                version=dist.version if dist is not None else "?",
                module=ep.value,
                load=ep.load,
            )
        )
    return sorted(sources, key=lambda s: s.name)


def module_source(module: ModuleType | object, name: str | None = None, distribution: str = "(in-process)") -> PluginSource:
    """A plugin given as an object (module or class instance with hook methods), for tests."""
    mod_name = getattr(module, "__name__", type(module).__name__)
    return PluginSource(
        name=name or mod_name.rsplit(".", 1)[-1],
        distribution=distribution,
        version=str(getattr(module, "__version__", "0")),
        module=mod_name,
        load=lambda: module,
    )


def _check_api_version(plugin: object) -> None:
    declared = getattr(plugin, "D2V_PLUGIN_API_VERSION", None)
    if declared is None:
        raise PluginError(f"does not declare D2V_PLUGIN_API_VERSION (this d2v provides plugin API {PLUGIN_API_VERSION})")
    if str(declared).split(".")[0] != PLUGIN_API_VERSION.split(".")[0]:
        raise PluginError(
            f"needs plugin API {declared}, but this d2v provides {PLUGIN_API_VERSION}; "
            f"install a release of the plugin built for API {PLUGIN_API_VERSION.split('.')[0]}.x or a d2v that provides {declared}"
        )


def _register_one(pm: pluggy.PluginManager, registry: Registry, source: PluginSource) -> list[str]:
    return registry.merge(_stage_one(pm, registry, source))


def _stage_one(pm: pluggy.PluginManager, registry: Registry, source: PluginSource) -> Registry:
    """Load one plugin and run its ``d2v_register`` into a staging registry (not merged yet)."""
    plugin = source.load()
    _check_api_version(plugin)
    pm.register(plugin, name=source.name)
    try:
        pm.check_pending()
        impls = [i for i in pm.hook.d2v_register.get_hookimpls() if i.plugin_name == source.name]
        if not impls:
            raise PluginError("implements no d2v_register hook")
        staged = registry.staging(source.name, source.distribution)
        for impl in impls:
            result = impl.function(registry=staged)
            if result is not None:
                raise PluginError(f"d2v_register returned {type(result).__name__}; it must register through the registry and return None")
        return staged
    except BaseException:
        pm.unregister(name=source.name)
        raise


def load_plugins(
    sources: Iterable[PluginSource] | None = None,
    *,
    strict: bool | None = None,
    only: set[str] | None = None,
    disabled: set[str] | None = None,
) -> LoadedPlugins:
    """Load the core's built-in components, then each plugin; one failure never stops the rest."""
    from d2v_core import builtin_plugin

    strict = os.environ.get("D2V_STRICT_PLUGINS", "") not in ("", "0") if strict is None else strict
    only = _env_list("D2V_LOAD_PLUGINS") if only is None else only
    disabled = (_env_list("D2V_DISABLE_PLUGINS") or set()) if disabled is None else disabled
    sources = installed_sources() if sources is None else list(sources)

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    core = module_source(builtin_plugin, name=CORE_PLUGIN, distribution="d2v")
    from d2v_core import __version__

    core.version = __version__
    statuses = [PluginStatus(CORE_PLUGIN, "d2v", __version__, core.module, "ok", _register_one(pm, registry, core))]

    staged: list[tuple[PluginSource, PluginStatus, Registry]] = []
    for src in sources:
        row = PluginStatus(src.name, src.distribution, src.version, src.module, "ok")
        statuses.append(row)
        names = {src.name, src.distribution}
        if names & disabled:
            row.status = "disabled"
            continue
        if only is not None and not names & only:
            row.status = "not-selected"
            continue
        try:
            staged.append((src, row, _stage_one(pm, registry, src)))
        except Exception as exc:  # noqa: BLE001 - a plugin may fail in any way; keep and show it
            _fail(row, src, exc, strict)
    # A name two plugins register is refused for both: which one would win must never depend
    # on the order plugins are found in (an impostor sorting first would take over the name).
    clashes = _clashes(registry, staged)
    for src, row, stage in staged:
        mine = [c for c in clashes if src.name in c[1]]
        try:
            if mine:
                pm.unregister(name=src.name)
                raise DuplicateComponentError(mine[0][2])
            row.provides = registry.merge(stage)
        except Exception as exc:  # noqa: BLE001 - as above
            _fail(row, src, exc, strict)
    for (kind, name), _, message in clashes:
        registry.refuse(kind, name, message)
    return LoadedPlugins(registry, statuses, pm)


def _fail(row: PluginStatus, src: PluginSource, exc: Exception, strict: bool) -> None:
    row.status = "error"
    row.error = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
    if strict:
        raise PluginError(f"plugin {src.name!r} ({src.distribution} {src.version}) failed: {row.error}") from exc


def _clashes(registry: Registry, staged: list[tuple[PluginSource, PluginStatus, Registry]]) -> list[tuple[tuple[str, str], set[str], str]]:
    """``((kind, name), {plugins}, message)`` for each name registered by more than one plugin
    (or by a plugin and the core, whose own entry stays)."""
    owners: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for entry in registry:
        owners.setdefault(_key(entry), []).append((entry.plugin, entry.distribution))
    for src, _, stage in staged:
        for entry in stage:
            owners.setdefault(_key(entry), []).append((src.name, src.distribution))
    out = []
    for (kind, name), who in owners.items():
        if len(who) < 2:
            continue
        listed = " and ".join(f"{dist} (plugin {plugin!r})" for plugin, dist in who)
        others = [plugin for plugin, dist in who if plugin != CORE_PLUGIN]
        kept = "d2v keeps its own" if len(others) < len(who) else "d2v uses none of them"
        message = (
            f"{kind} {name!r} is registered by {len(who)} distributions, {listed}; {kept}: uninstall one, "
            f"or keep one with D2V_DISABLE_PLUGINS=<the other plugin's name>"
        )
        out.append(((kind, name), set(others), message))
    return out


def _key(entry: object) -> tuple[str, str]:
    return (getattr(entry, "kind", "modality"), entry.name)  # type: ignore[attr-defined]


_current: LoadedPlugins | None = None


def get_plugins() -> LoadedPlugins:
    """The process-wide plugin set (loaded once)."""
    global _current
    if _current is None:
        _current = load_plugins()
    return _current


def get_registry() -> Registry:
    return get_plugins().registry


@contextlib.contextmanager
def plugin_context(*plugins: object, installed: bool = False, strict: bool = False) -> Iterator[LoadedPlugins]:
    """Use these in-process plugins (modules or objects with hookimpls) instead of, or on top of
    (``installed=True``), the installed ones, e.g. in tests. Restores the previous set on exit."""
    global _current
    sources = installed_sources() if installed else []
    sources += [p if isinstance(p, PluginSource) else module_source(p) for p in plugins]
    previous = _current
    _current = load_plugins(sources, strict=strict, only=None if installed else None, disabled=set())
    try:
        yield _current
    finally:
        _current = previous


def add_cli_commands(loaded: LoadedPlugins, app: object) -> None:
    """Call each loaded plugin's ``d2v_cli_commands(app)``; a failure is kept on its status row."""
    rows = {p.name: p for p in loaded.plugins}
    for impl in loaded.manager.hook.d2v_cli_commands.get_hookimpls():
        try:
            impl.function(app=app)
        except Exception as exc:  # noqa: BLE001 - never let one plugin break the CLI
            row = rows.get(impl.plugin_name)
            if row is not None:
                row.status, row.error = "error", f"d2v_cli_commands: {type(exc).__name__}: {exc}"
