"""Declarative descriptions of what a plugin provides (no torch needed to build them).

Factories and option models may be given as objects or as ``"package.module:attribute"``
strings; strings are imported only when the component is used, which keeps plugin discovery
fast and lets a broken component fail only when it is asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from d2v_core.errors import PluginError

Ref = Union[str, Callable[..., Any], type]

COMPONENT_KINDS = ("masker", "normalizer", "decoder", "exporter", "importer", "schedule", "logger")


def load_ref(ref: Ref, what: str = "object") -> Any:
    """Resolve a ``"module:attr"`` reference (or return a non-string ref unchanged)."""
    if not isinstance(ref, str):
        return ref
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"{what} reference {ref!r} must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        raise PluginError(f"cannot import {module_name!r} for {what}: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"{what} reference {ref!r}: {module_name!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ComponentSpec:
    """A swappable component: a masker, normaliser, decoder (v2), exporter, importer, LR schedule
    or metrics logger.

    The factory's signature depends on the kind (``interfaces.py``): ``masker``
    ``factory(options)``, ``decoder``, ``schedule`` and ``logger`` ``factory(options, ctx)``, ``normalizer`` and ``exporter``
    ``factory()``; ``options`` is an instance of ``options`` (a :class:`d2v_core.Options` model)
    validated once from the run config, or ``None`` when the component takes none.
    ``modalities`` limits which modalities may use it (``None``: any).
    """

    kind: str
    name: str
    factory: Ref
    options: Ref | None = None
    description: str = ""
    modalities: tuple[str, ...] | None = None
    plugin: str = ""
    distribution: str = ""

    def __post_init__(self) -> None:
        if self.kind not in COMPONENT_KINDS:
            raise TypeError(f"ComponentSpec.kind must be one of {COMPONENT_KINDS}, got {self.kind!r}")
        if not isinstance(self.name, str) or not self.name:
            raise TypeError("ComponentSpec.name must be a non-empty string")

    def load_factory(self) -> Callable[..., Any]:
        return load_ref(self.factory, f"{self.kind} {self.name!r}")

    def load_options(self) -> type | None:
        return None if self.options is None else load_ref(self.options, f"{self.kind} {self.name!r} options")

    def supports(self, modality: str) -> bool:
        return self.modalities is None or modality in self.modalities


@dataclass(frozen=True)
class ModalitySpec:
    """A modality: the defaults and factories the core needs to pretrain on one kind of data.

    - ``encoder(options, ctx) -> FeatureEncoder``: ``options`` an instance of ``encoder_options``
      (a :class:`d2v_core.Options` model), ``ctx`` a :class:`d2v_core.BuildContext`.
    - ``record_decoder(options, encoder_options, ctx) -> RecordDecoder``: ``options`` an instance
      of ``data_options``, ``encoder_options`` the encoder's (see ``interfaces.py``).
    - ``presets``: preset name -> config dict (or a reference to such a mapping); each dict is a
      partial :class:`d2v_core.config.RunConfig`.
    - ``demo_data() -> path``: small data shipped with the plugin, used when no ``--data`` is given.
    - ``extensions``: file extensions that hold one record's payload (for folders and shards).
    """

    name: str
    encoder: Ref
    encoder_options: Ref
    record_decoder: Ref
    data_options: Ref
    default_masker: str
    presets: Ref | Mapping[str, Any]
    description: str = ""
    default_preset: str = "tiny"
    demo_data: Ref | None = None
    extensions: tuple[str, ...] = ()
    plugin: str = ""
    distribution: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise TypeError("ModalitySpec.name must be a non-empty string without '/'")

    def load_presets(self) -> Mapping[str, Any]:
        presets = load_ref(self.presets, f"modality {self.name!r} presets") if isinstance(self.presets, str) else self.presets
        if callable(presets):
            presets = presets()
        if not isinstance(presets, Mapping):
            raise PluginError(f"modality {self.name!r}: presets must be a mapping of name -> config dict")
        return presets

    def preset_names(self) -> list[str]:
        return sorted(self.load_presets())
