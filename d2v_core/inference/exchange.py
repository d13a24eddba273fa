"""Export a checkpoint through a plugin's exporter (e.g. to a transformers directory), and import
such a directory as a d2v checkpoint to continue pretraining from."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import ValidationError

from d2v_core.config import RunConfig
from d2v_core.config_resolve import config_to_yaml, deep_merge, format_validation_error, parse_override, preset_dict
from d2v_core.errors import ConfigError, ExportError, UnknownComponentError
from d2v_core.interfaces import Exporter
from d2v_core.model.ema_teacher import EMATeacher
from d2v_core.registry import Registry
from d2v_core.train.build import build_model
from d2v_core.train import run_folder
from d2v_core.train.checkpoint import save_checkpoint


def find_exporter(registry: Registry, modality: str, fmt: str) -> Exporter:
    """The exporter a plugin registered for ``modality`` and ``fmt``."""
    found = []
    for name in registry.names("exporter", modality):
        exporter = registry.component("exporter", name, modality).load_factory()()
        found.append(f"{name} ({exporter.format})")
        if exporter.format == fmt:
            return exporter
    raise UnknownComponentError(
        f"no {fmt!r} exporter for modality {modality!r} (installed: {', '.join(found) or 'none'}); "
        f"the modality's plugin provides exporters"
    )


def _check_empty(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite")


def export_checkpoint(path: str | Path, fmt: str, out_dir: str | Path, registry: Registry, overwrite: bool = False) -> Path:
    from d2v_core.inference.pretrained import load_pretrained

    out = Path(out_dir)
    _check_empty(out, overwrite)
    pre = load_pretrained(path, registry)
    exporter = find_exporter(registry, pre.cfg.modality, fmt)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        exporter.export(pre.model, pre.cfg, pre.extra, out)
    except BaseException:
        if created:  # a refused or failed export leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def import_checkpoint(src_dir: str | Path, modality: str, out_dir: str | Path, registry: Registry,
                      preset: str | None = None, fmt: str = "hf", overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Write ``out_dir/checkpoints/step_00000000`` from a model directory; continue pretraining
    from it with ``d2v pretrain --init-from OUT``."""
    src = Path(src_dir)
    if not src.is_dir():
        raise ConfigError(f"{src} is not a directory")
    refuse_remote_code(src)
    spec = registry.modality(modality)
    exporter = find_exporter(registry, spec.name, fmt)
    preset_name, base = preset_dict(spec, preset)
    merged = deep_merge(base, exporter.import_config(src))
    for item in overrides:  # e.g. targets.top_k=2 for a model shallower than the preset's
        merged = deep_merge(merged, parse_override(item))
    merged.update(modality=spec.name, preset=preset_name)
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"imported config: {format_validation_error(exc)} (adjust with --set)") from None
    model = build_model(cfg, registry)
    exporter.import_weights(src, model)
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    with run_folder.locked(out_dir):
        return save_checkpoint(out_dir, 0, model.state_dict(), teacher.state_dict(), {"step": 0, "imported_from": str(src)},
                               config_to_yaml(cfg), {"imported_from": str(src), "modality": spec.name},
                               extra=model.encoder.extra_state())


#: Keys of a transformers directory's JSON files that make ``from_pretrained`` import and run
#: Python files shipped in the directory (with ``trust_remote_code``, or after a y/N prompt).
REMOTE_CODE_KEYS = ("auto_map", "custom_pipelines")


def refuse_remote_code(src: Path) -> None:
    """Refuse a model directory that asks transformers to run its own code: d2v imports only
    the Data2Vec architectures transformers ships (and passes ``trust_remote_code=False``)."""
    import json

    for f in sorted(src.glob("*.json")):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not JSON the importer can use anyway; the importer reports it
        found = [k for k in REMOTE_CODE_KEYS if isinstance(data, dict) and k in data]
        if found:
            raise ExportError(
                f"refusing {src}: {f.name} has {found[0]!r}, which makes transformers run Python code from the directory; "
                "d2v imports only transformers' own Data2Vec models (remove the key if the model is a standard one)"
            )
