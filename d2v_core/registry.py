"""The registry of modalities and components that plugins fill through ``d2v_register``."""

from __future__ import annotations

from dataclasses import replace

from d2v_core.errors import DuplicateComponentError, UnknownComponentError
from d2v_core.specs import COMPONENT_KINDS, ComponentSpec, ModalitySpec


def _install_hint(kind: str, name: str) -> str:
    # no guessed package name: a modality's distribution may be called anything
    return f"install the plugin that provides this {kind} (d2v list-plugins shows what is installed)"


class Registry:
    """Name -> spec tables for modalities and each component kind.

    A plugin registers into a :meth:`staging` copy; :meth:`merge` applies the staged entries
    only if none of them clashes with a name another distribution already registered.
    """

    def __init__(self) -> None:
        self._modalities: dict[str, ModalitySpec] = {}
        self._components: dict[str, dict[str, ComponentSpec]] = {k: {} for k in COMPONENT_KINDS}
        self._owner: tuple[str, str] = ("", "")  # (plugin, distribution) stamped on new entries
        self._refused: dict[tuple[str, str], str] = {}  # names two plugins registered: why neither is used

    # -- registration (called from plugins' d2v_register) ---------------------------------
    def add_modality(self, spec: ModalitySpec) -> None:
        if not isinstance(spec, ModalitySpec):
            raise TypeError(f"add_modality expects a ModalitySpec, got {type(spec).__name__}")
        spec = replace(spec, plugin=spec.plugin or self._owner[0], distribution=spec.distribution or self._owner[1])
        self._check_free("modality", spec.name, self._modalities.get(spec.name), spec)
        self._modalities[spec.name] = spec

    def add_component(self, spec: ComponentSpec) -> None:
        if not isinstance(spec, ComponentSpec):
            raise TypeError(f"add_component expects a ComponentSpec, got {type(spec).__name__}")
        spec = replace(spec, plugin=spec.plugin or self._owner[0], distribution=spec.distribution or self._owner[1])
        table = self._components[spec.kind]
        self._check_free(spec.kind, spec.name, table.get(spec.name), spec)
        table[spec.name] = spec

    @staticmethod
    def _check_free(kind: str, name: str, old, new) -> None:  # type: ignore[no-untyped-def]
        if old is not None:
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered twice: by {old.distribution or old.plugin or '?'} "
                f"(plugin {old.plugin!r}) and by {new.distribution or new.plugin or '?'} (plugin {new.plugin!r}); "
                f"uninstall one of them or block it with D2V_DISABLE_PLUGINS"
            )

    # -- staging ---------------------------------------------------------------------------
    def staging(self, plugin: str, distribution: str) -> "Registry":
        """An empty registry whose entries are stamped with this plugin and distribution."""
        staged = Registry()
        staged._owner = (plugin, distribution)
        return staged

    def merge(self, staged: "Registry") -> list[str]:
        """Apply ``staged`` all-or-nothing; returns what it provided (``"masker:span"``, ...)."""
        for mspec in staged._modalities.values():
            self._check_free("modality", mspec.name, self._modalities.get(mspec.name), mspec)
        for kind, table in staged._components.items():
            for cspec in table.values():
                self._check_free(kind, cspec.name, self._components[kind].get(cspec.name), cspec)
        self._modalities.update(staged._modalities)
        for kind, table in staged._components.items():
            self._components[kind].update(table)
        return staged.provides()

    def refuse(self, kind: str, name: str, message: str) -> None:
        """Record that ``name`` clashed between plugins: looking it up raises ``message``
        (the core's own entry of that name, if any, stays)."""
        self._refused[(kind, name)] = message

    def provides(self) -> list[str]:
        out = [f"modality:{n}" for n in sorted(self._modalities)]
        for kind in COMPONENT_KINDS:
            out += [f"{kind}:{n}" for n in sorted(self._components[kind])]
        return out

    # -- lookup ----------------------------------------------------------------------------
    def modality(self, name: str) -> ModalitySpec:
        spec = self._modalities.get(name)
        if spec is None and ("modality", name) in self._refused:
            raise DuplicateComponentError(self._refused[("modality", name)])
        if spec is None:
            installed = ", ".join(sorted(self._modalities)) or "none"
            raise UnknownComponentError(
                f"unknown modality {name!r} (installed: {installed}); {_install_hint('modality', name)}"
            )
        return spec

    def component(self, kind: str, name: str, modality: str | None = None) -> ComponentSpec:
        table = self._components[kind]
        spec = table.get(name)
        if spec is None and (kind, name) in self._refused:
            raise DuplicateComponentError(self._refused[(kind, name)])
        usable = sorted(n for n, s in table.items() if modality is None or s.supports(modality))
        if spec is None:
            raise UnknownComponentError(
                f"unknown {kind} {name!r}" + (f" for modality {modality!r}" if modality else "")
                + f" (installed: {', '.join(usable) or 'none'}); {_install_hint(kind, name)}"
            )
        if modality is not None and not spec.supports(modality):
            raise UnknownComponentError(
                f"{kind} {name!r} does not support modality {modality!r} (it supports: "
                f"{', '.join(spec.modalities or ())}); usable here: {', '.join(usable) or 'none'}"
            )
        return spec

    def modalities(self) -> list[str]:
        return sorted(self._modalities)

    def names(self, kind: str, modality: str | None = None) -> list[str]:
        return sorted(n for n, s in self._components[kind].items() if modality is None or s.supports(modality))

    def entries(self) -> list[ModalitySpec | ComponentSpec]:
        """Every registered modality and component (the loader compares plugins' names with it)."""
        return [*self._modalities.values(), *(spec for table in self._components.values() for spec in table.values())]
