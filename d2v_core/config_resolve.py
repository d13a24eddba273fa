"""Resolve a run config: preset, then a YAML file, then ``--set key=value`` overrides.

Every failure is a :class:`ConfigError` with one line naming the dotted field path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import BaseModel, ValidationError

from d2v_core.config import RunConfig
from d2v_core.errors import ConfigError, UnknownComponentError
from d2v_core.registry import Registry
from d2v_core.specs import ModalitySpec, load_ref


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


#: Sections that name a component: their options belong to the component named.
_NAMED_SECTIONS = ("masking", "decoder")


def merge_layer(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``, except that a layer naming another masker or decoder
    drops the options ``base`` gave the previous one (they would not validate against it)."""
    base = dict(base)
    for section in _NAMED_SECTIONS:
        new = over.get(section)
        old = base.get(section)
        if isinstance(new, Mapping) and isinstance(old, Mapping) and "name" in new and new["name"] != old.get("name"):
            base[section] = {k: v for k, v in old.items() if k != "options"}
    return deep_merge(base, over)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    parts = []
    for e in err.errors():
        path = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, (dict, list)) else f" (got {got!r})"
        parts.append(f"{path}: {msg}{shown}" if path else f"{msg}{shown}")
    return "; ".join(parts)


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"cannot parse YAML {str(p)!r}{where}: {problem}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def parse_override(item: str) -> dict[str, Any]:
    """``"optim.lr=1e-4"`` -> ``{"optim": {"lr": 1e-4}}``; the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} must look like section.field=value, e.g. optim.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _validate_options(model_ref: Any, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    model = load_ref(model_ref, f"{where} options") if model_ref is not None else None
    if model is None:
        if data:
            raise ConfigError(f"{where}: takes no options (got {sorted(data)})")
        return {}
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"{where}: the plugin's option model is not a pydantic model")
    try:
        return model.model_validate(dict(data)).model_dump(mode="python")
    except ValidationError as exc:
        raise ConfigError(f"config: {format_validation_error(exc, where)}") from None


def preset_dict(spec: ModalitySpec, preset: str | None) -> tuple[str, dict[str, Any]]:
    name = preset or spec.default_preset
    name = name.split("/", 1)[1] if name.startswith(f"{spec.name}/") else name
    presets = spec.load_presets()
    if name not in presets:
        raise UnknownComponentError(
            f"unknown preset {spec.name}/{name} (available: {', '.join(f'{spec.name}/{p}' for p in sorted(presets))})"
        )
    value = presets[name]
    return name, dict(value() if callable(value) else value)


def resolve_config(
    registry: Registry,
    modality: str | None,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> RunConfig:
    """The validated :class:`RunConfig` for a modality (or the one the YAML file names)."""
    file_data = load_yaml_file(config_file) if config_file else {}
    # a mapping is taken as is: flag values (paths, names) are literal strings, not YAML
    over = [dict(o) if isinstance(o, Mapping) else parse_override(o) for o in overrides]
    modality = modality or file_data.get("modality")
    if not modality:
        raise ConfigError("no modality given: pass --modality NAME or set 'modality:' in the config file")
    spec = registry.modality(str(modality))
    preset = preset or file_data.get("preset")
    preset_name, merged = preset_dict(spec, preset)
    for layer in (file_data, *over):
        merged = merge_layer(merged, layer)
    merged["modality"] = spec.name
    merged["preset"] = preset_name
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"config: {format_validation_error(exc)}") from None

    masker_name = cfg.masking.name or spec.default_masker
    masker = registry.component("masker", masker_name, modality=spec.name)
    for field in ("layer_norm", "post_norm"):
        registry.component("normalizer", getattr(cfg.targets, field))
    decoder = cfg.decoder
    if decoder.name is not None:
        decoder_spec = registry.component("decoder", decoder.name, modality=spec.name)
        decoder = decoder.model_copy(
            update={"options": _validate_options(decoder_spec.options, decoder.options, "decoder.options")}
        )
    elif decoder.options:
        raise ConfigError("config: decoder.options are set but decoder.name is not; name a decoder or drop the options")
    updates = {
        "encoder": _validate_options(spec.encoder_options, cfg.encoder, "encoder"),
        "masking": cfg.masking.model_copy(
            update={"name": masker_name, "options": _validate_options(masker.options, cfg.masking.options, "masking.options")}
        ),
        "data": cfg.data.model_copy(update={"options": _validate_options(spec.data_options, cfg.data.options, "data.options")}),
        "decoder": decoder,
    }
    return cfg.model_copy(update=updates)


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
