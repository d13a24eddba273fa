"""``d2v import --from-fairseq CKPT --out RUN``: a fairseq data2vec checkpoint as a d2v run.

The core reads the file safely (:mod:`d2v_core.interop.safe_pickle`), picks the plugin
``importer`` that reads its model family, builds the d2v model from the config the importer
derives, applies the importer's key maps to the student and to the EMA teacher (fairseq's
``_ema`` tensors, where the file holds them; otherwise the teacher starts as a copy of the
student), and writes step 0 through :func:`d2v_core.train.checkpoint.save_checkpoint`. Every
check runs before anything is written; a refused import leaves no folder behind.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import ValidationError

from d2v_core.config import RunConfig
from d2v_core.config_resolve import config_to_yaml, deep_merge, format_validation_error, parse_override, preset_dict, resolve_options
from d2v_core.errors import CheckpointError, ConfigError, UnknownComponentError
from d2v_core.interop.key_map import Rename, Rule, apply_key_map, check_complete, source_names
from d2v_core.interop.safe_pickle import FairseqCheckpoint, read_fairseq_checkpoint
from d2v_core.registry import Registry


class FairseqImporter(ABC):
    """A plugin component of kind ``importer``: reads one family of fairseq checkpoints.

    ``model_names``: the fairseq model names it reads (``cfg.model._name`` / ``args.arch``);
    :meth:`accepts` may look further (data2vec 2.0's ``supported_modality``)."""

    model_names: tuple[str, ...] = ()
    #: A short name of the family for messages ("data2vec 1.0 audio").
    family: str = ""

    def accepts(self, ckpt: FairseqCheckpoint) -> bool:
        return ckpt.model_name in self.model_names

    @abstractmethod
    def run_config(self, ckpt: FairseqCheckpoint) -> dict[str, Any]:
        """A partial run config for the checkpoint: architecture (``model``, ``encoder``) and the
        recipe values its config states; may name a ``preset`` for everything else. Raise
        :class:`CheckpointError` for a variant d2v cannot represent."""

    @abstractmethod
    def key_map(self, cfg: RunConfig, ckpt: FairseqCheckpoint) -> Sequence[Rule]:
        """Rules from the checkpoint's student tensor names to ``Data2Vec.state_dict()`` names."""

    def teacher_key_map(self, cfg: RunConfig, ckpt: FairseqCheckpoint) -> Sequence[Rule]:
        """Rules from the checkpoint's EMA tensor names (those :meth:`is_teacher_key` selects) to
        the teacher's names (the student's names of :meth:`Data2Vec.teacher_scope`)."""
        return ()

    def is_teacher_key(self, key: str) -> bool:
        """Whether ``key`` belongs to the EMA teacher (fairseq: ``_ema.*`` / ``encoder._ema.*``;
        data2vec_vision: ``model_ema.*``)."""
        return key.startswith(("_ema.", "model_ema.")) or "._ema." in key

    def validate(self, cfg: RunConfig, ckpt: FairseqCheckpoint) -> None:
        """Check the resolved config against the checkpoint before the model is built (e.g. that
        a text run names a tokenizer whose ids fit the checkpoint's table); raise
        :class:`CheckpointError` or :class:`ConfigError` with what to pass instead. By default
        every config is accepted."""
        return None

    def fresh_keys(self, cfg: RunConfig) -> Sequence[str]:
        """d2v tensors the checkpoint does not hold and that keep their fresh initialisation."""
        return ()

    #: d2v modules only pretraining uses (the regression head, the 2.0 decoder). fairseq's
    #: ``remove_pretraining_modules`` drops them from fine-tuned checkpoints; when the file holds
    #: none of a module's tensors, the module keeps its fresh initialisation (reported), while a
    #: partly present module is an error like any other missing key.
    pretraining_modules: tuple[str, ...] = ("head.", "decoder.")


def rebase(rules: Sequence[Rule], old: str, new: str) -> list[Rule]:
    """The rules whose source starts with ``old``, with that prefix replaced by ``new`` (the
    student's ``encoder.layers.*`` -> the EMA copy's ``_ema.layers.*``)."""
    out: list[Rule] = []
    for r in rules:
        if r.source.startswith(old):
            out.append(type(r)(**{**r.__dict__, "source": new + r.source[len(old):]}))
    return out


@dataclass
class ImportResult:
    path: Path
    family: str
    unused: list[str] = field(default_factory=list)
    teacher_from_ema: bool = False
    #: pretraining-only modules the file lacks (a fine-tuned checkpoint), freshly initialised
    fresh_modules: list[str] = field(default_factory=list)


def find_importer(registry: Registry, ckpt: FairseqCheckpoint, modality: str | None) -> tuple[FairseqImporter, str]:
    """The importer (and its modality) that reads ``ckpt``; ``modality`` restricts the search."""
    seen = []
    for name in registry.names("importer", modality):
        spec = registry.component("importer", name, modality)
        importer = spec.load_factory()()
        seen.append(name)
        if importer.accepts(ckpt):
            mods = [m for m in (spec.modalities or ()) if modality is None or m == modality]
            return importer, (modality or mods[0])
    where = f" for modality {modality!r}" if modality else ""
    raise UnknownComponentError(
        f"{ckpt.path}: no installed importer{where} reads fairseq model {ckpt.model_name!r} "
        f"(installed: {', '.join(seen) or 'none'}); the audio, text and image plugins read data2vec checkpoints"
    )


def _float(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _has_checkpoints(out: Path) -> bool:
    return (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())


def import_fairseq(path: str | Path, out_dir: str | Path, registry: Registry, *, modality: str | None = None,
                   preset: str | None = None, overrides: Sequence[str] = ()) -> ImportResult:
    """Write ``out_dir/checkpoints/step_00000000`` from a fairseq data2vec checkpoint file."""
    from d2v_core.model.ema_teacher import EMATeacher
    from d2v_core.train.build import build_model
    from d2v_core.train.checkpoint import save_checkpoint

    out = Path(out_dir)
    if _has_checkpoints(out):
        raise CheckpointError(f"{out} already holds checkpoints; choose another --out (an import never overwrites a run)")
    ckpt = read_fairseq_checkpoint(path)
    importer, mod = find_importer(registry, ckpt, modality)
    spec = registry.modality(mod)
    partial = importer.run_config(ckpt)
    preset_name, base = preset_dict(spec, preset or partial.pop("preset", None))
    partial.pop("preset", None)
    merged = deep_merge(base, partial)
    for item in overrides:
        merged = deep_merge(merged, parse_override(item))
    merged.update(modality=spec.name, preset=preset_name)
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"imported config: {format_validation_error(exc)} (adjust with --set)") from None
    cfg = resolve_options(cfg, registry)  # the plugin sections as their options objects, validated once
    importer.validate(cfg, ckpt)
    model = build_model(cfg, registry)
    what = f"{ckpt.path} ({importer.family})"

    student_src = {k: v for k, v in ckpt.model.items() if not importer.is_teacher_key(k)}
    rules = list(importer.key_map(cfg, ckpt))
    mapped = apply_key_map(student_src, rules)
    expected = model.state_dict()
    fresh = set(importer.fresh_keys(cfg))
    absent = [p for p in importer.pretraining_modules
              if any(k.startswith(p) for k in expected) and not any(k.startswith(p) for k in mapped.tensors)]
    fresh |= {k for k in expected if k.startswith(tuple(absent))}
    check_complete(mapped.tensors, expected, rules, what, source=student_src, optional=fresh)
    model.load_state_dict({**expected, **_float(mapped.tensors)}, strict=True)

    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    teacher_src = {k: v for k, v in ckpt.model.items() if importer.is_teacher_key(k)}
    unused = list(mapped.unused)
    from_ema = False
    if teacher_src:
        t_rules = list(importer.teacher_key_map(cfg, ckpt))
        t_mapped = apply_key_map(teacher_src, t_rules)
        t_expected = teacher.state_dict()
        for key in [k for k in t_mapped.tensors if k not in t_expected]:  # averaged by fairseq, unused by d2v's teacher
            del t_mapped.tensors[key]
            t_mapped.unused += source_names(key, t_rules)
        if t_mapped.tensors:
            # teacher tensors no rule reads (fairseq's EMA covers only part of the model) stay the student's copy
            from_student = [k for k in t_expected if not source_names(k, t_rules)]
            check_complete(t_mapped.tensors, t_expected, t_rules, f"{what} EMA teacher", source=teacher_src,
                           optional=from_student)
            teacher.load_state_dict({**t_expected, **_float(t_mapped.tensors)})
            from_ema = True
        unused += t_mapped.unused

    created = not out.exists()
    meta = {"imported_from": str(ckpt.path), "modality": spec.name, "fairseq_model": ckpt.model_name,
            "family": importer.family, "unused_keys": unused, "teacher": "fairseq EMA" if from_ema else "copy of the student",
            "fresh_modules": [p.rstrip(".") for p in absent], "fine_tuned_as": ckpt.wrapper}
    try:
        written = save_checkpoint(out, 0, model.state_dict(), teacher.state_dict(),
                                  {"step": 0, "imported_from": str(ckpt.path)}, config_to_yaml(cfg), meta,
                                  extra=model.encoder.extra_state())
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return ImportResult(written, importer.family, unused, from_ema, [p.rstrip(".") for p in absent])


__all__ = ["FairseqImporter", "ImportResult", "Rename", "find_importer", "import_fairseq", "rebase"]
