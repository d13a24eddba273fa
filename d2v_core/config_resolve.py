"""Resolve a run config in three layers: the preset, then a YAML file, then the command line.

The command line is one layer of typed :class:`Override` values (``--set key=value`` items and
the typed flags of ``d2v pretrain``): a dotted path may be given once there, so no value is
silently replaced or discarded by another. Every failure is a :class:`ConfigError` with one line
naming the dotted field path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import yaml
from pydantic import BaseModel, ValidationError

from d2v_core.config import RunConfig
from d2v_core.errors import ConfigError, UnknownComponentError, first_line
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


def merge_layer(base: Mapping[str, Any], over: Mapping[str, Any], defaults: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """``over`` merged into ``base``, except that a layer naming another masker or decoder
    drops the options ``base`` gave the previous one (they would not validate against it).
    ``defaults``: the component a section means when it names none (the modality's masker)."""
    base = dict(base)
    defaults = defaults or {}
    for section in _NAMED_SECTIONS:
        new = over.get(section)
        old = base.get(section)
        if isinstance(new, Mapping) and isinstance(old, Mapping) and "name" in new:
            before = old.get("name") or defaults.get(section)
            if (new["name"] or defaults.get(section)) != before:
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
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise ConfigError(f"cannot parse YAML {str(p)!r}{where}: {problem}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level, not {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Override:
    """One command-line value for a dotted config path, already typed (never re-parsed), and
    where it came from (``"--set optim.lr=1e-4"``, ``"--max-steps"``), for error messages."""

    path: str
    value: Any
    source: str

    def __post_init__(self) -> None:
        if not self.path or any(not part for part in self.path.split(".")):
            raise ConfigError(f"{self.source}: {self.path!r} is not a dotted config path like section.field")


def parse_value(raw: str) -> Any:
    """A ``--set`` value: YAML for numbers, booleans, lists and mappings; text that YAML would
    only read as a string is kept as typed (so ``#`` is never a comment and spaces survive)."""
    text = raw.strip()
    if not text:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        if text[0] in "'\"" and text[-1] == text[0]:
            return value  # explicitly quoted
        try:
            return float(text)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            return text
    return value


def parse_set(item: str) -> Override:
    """``"optim.lr=1e-4"`` -> ``Override("optim.lr", 1e-4, "--set optim.lr=1e-4")``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} must look like section.field=value, e.g. optim.lr=1e-4")
    return Override(key, parse_value(raw), f"--set {item}")


def parse_override(item: str) -> dict[str, Any]:
    """``"optim.lr=1e-4"`` -> ``{"optim": {"lr": 1e-4}}`` (see :func:`parse_value`)."""
    return overrides_layer([parse_set(item)])


def overrides_layer(overrides: Sequence[Override]) -> dict[str, Any]:
    """The command-line layer: every override at its path. A path given twice, or inside
    another given path (``--set masking={...}`` with ``--masker``), is an error, never a silent
    replacement, whatever the order on the command line."""
    seen: dict[tuple[str, ...], Override] = {}
    for o in overrides:
        parts = tuple(o.path.split("."))
        for prev_parts, prev in seen.items():
            n = min(len(parts), len(prev_parts))
            if parts[:n] == prev_parts[:n]:
                raise ConfigError(
                    f"{prev.source} and {o.source} both set {'.'.join(parts[:n])}; give each config value once"
                )
        seen[parts] = o
    out: dict[str, Any] = {}
    for parts, o in seen.items():
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(o.value)
    return out


def _validate_options(model_ref: Any, data: Any, where: str) -> Any:
    """``data`` as an instance of the component's options model (validated here, once; an
    instance of it is kept as it is), or ``{}`` for a component that takes no options."""
    model = load_ref(model_ref, f"{where} options") if model_ref is not None else None
    if model is None:
        if data:
            raise ConfigError(f"{where}: takes no options (got {sorted(dict(data))})")
        return {}
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"{where}: the plugin's option model is not a pydantic model")
    if isinstance(data, model):
        return data
    if isinstance(data, BaseModel):  # the options of another component (the masker was renamed)
        data = data.model_dump()
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"config: {format_validation_error(exc, where)}") from None


def run_loggers(cfg: RunConfig) -> list[str]:
    """The loggers a run writes to, in order: ``jsonl`` (always), ``tensorboard`` (while
    ``runtime.tensorboard``), then ``runtime.loggers`` (a name given twice is used once)."""
    names = ["jsonl", *(["tensorboard"] if cfg.runtime.tensorboard else []), *cfg.runtime.loggers]
    return list(dict.fromkeys(names))


def _logger_options(cfg: RunConfig, registry: Registry) -> dict[str, Any]:
    """Every logger of the run checked to be registered (an unknown name lists the installed
    ones), and its ``runtime.logger_options`` entry validated against its options model (the
    model's defaults for a logger that declares one and is given none)."""
    names = run_loggers(cfg)
    specs = {name: registry.component("logger", name) for name in names}
    stray = sorted(set(cfg.runtime.logger_options) - set(names))
    if stray:
        raise ConfigError(f"config: runtime.logger_options.{stray[0]}: {stray[0]!r} is not one of this run's loggers "
                          f"({', '.join(names)}); add it to runtime.loggers or drop its options")
    given = cfg.runtime.logger_options
    return {name: _validate_options(specs[name].options, given.get(name, {}), f"runtime.logger_options.{name}")
            for name in names if name in given or specs[name].options is not None}


def resolve_options(cfg: RunConfig, registry: Registry) -> RunConfig:
    """``cfg`` with its plugin sections (``encoder``, ``masking.options``, ``decoder.options``,
    ``data.options``) as the options objects of the components it names, the masker's name
    filled in, and every named component checked to exist for the modality. Sections that are
    already such objects are kept, so resolving twice validates nothing twice."""
    spec = registry.modality(cfg.modality)
    masker_name = cfg.masking.name or spec.default_masker
    masker = registry.component("masker", masker_name, modality=spec.name)
    for field in ("per_layer_norm", "post_norm"):
        registry.component("normalizer", getattr(cfg.targets, field))
    sched = cfg.optim.schedule
    sched_spec = registry.component("schedule", sched.name)
    schedule = sched.model_copy(update={"options": _validate_options(sched_spec.options, sched.options, "optim.schedule.options")})
    decoder = cfg.decoder
    if decoder.name is not None:
        decoder_spec = registry.component("decoder", decoder.name, modality=spec.name)
        decoder = decoder.model_copy(
            update={"options": _validate_options(decoder_spec.options, decoder.options, "decoder.options")}
        )
    elif decoder.options:
        raise ConfigError("config: decoder.options are set but decoder.name is not; name a decoder or drop the options")
    runtime = cfg.runtime.model_copy(update={"logger_options": _logger_options(cfg, registry)})
    updates = {
        "encoder": _validate_options(spec.encoder_options, cfg.encoder, "encoder"),
        "masking": cfg.masking.model_copy(
            update={"name": masker_name, "options": _validate_options(masker.options, cfg.masking.options, "masking.options")}
        ),
        "data": cfg.data.model_copy(update={"options": _validate_options(spec.data_options, cfg.data.options, "data.options")}),
        "decoder": decoder,
        "optim": cfg.optim.model_copy(update={"schedule": schedule}),
        "runtime": runtime,
    }
    return cfg.model_copy(update=updates)


def validate_run_config(data: Mapping[str, Any], registry: Registry, where: str = "config") -> RunConfig:
    """A stored or merged config mapping as a resolved :class:`RunConfig` (one-line errors)."""
    try:
        cfg = RunConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"{where}: {format_validation_error(exc)}") from None
    return resolve_options(cfg, registry)


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
    config_file: str | Path | Mapping[str, Any] | None = None,
    overrides: Iterable[Union[str, Override]] = (),
) -> RunConfig:
    """The validated :class:`RunConfig` for a modality (or the one the YAML file names):
    preset, then ``config_file``, then ``overrides`` (``--set`` strings or typed
    :class:`Override` values, one layer in which each path may appear once). ``config_file``
    may also be the already-read mapping (a checkpoint's stored config)."""
    file_data = dict(config_file) if isinstance(config_file, Mapping) else load_yaml_file(config_file) if config_file else {}
    cli = overrides_layer([parse_set(o) if isinstance(o, str) else o for o in overrides])
    modality = modality or file_data.get("modality")
    if not modality:
        raise ConfigError("no modality given: pass --modality NAME or set 'modality:' in the config file")
    spec = registry.modality(str(modality))
    preset = preset or file_data.get("preset")
    preset_name, merged = preset_dict(spec, preset)
    defaults = {"masking": spec.default_masker, "decoder": None}
    for layer in (file_data, cli):
        merged = merge_layer(merged, layer, defaults)
    merged["modality"] = spec.name
    merged["preset"] = preset_name
    return validate_run_config(merged, registry)


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
