"""Build a run's components from its resolved config and the plugin registry.

Each factory gets its validated options and a :class:`~d2v_core.interfaces.BuildContext`
(see ``interfaces.py`` for the signature of each kind), never the whole ``RunConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from d2v_core.config import RunConfig
from d2v_core.config_resolve import resolve_options, run_loggers
from d2v_core.interfaces import BuildContext, Decoder, FeatureEncoder, Masker, Normalizer, RecordDecoder, ScheduleContext
from d2v_core.loggers import LoggerContext, MetricsLogger
from d2v_core.model.data2vec import Data2Vec
from d2v_core.registry import Registry
from d2v_core.specs import load_ref


def build_context(cfg: RunConfig) -> BuildContext:
    """The typed context factories get: modality, width, heads, dropout, eps, data source,
    activation checkpointing."""
    m = cfg.model
    return BuildContext(modality=cfg.modality, dim=m.dim, heads=m.heads, dropout=m.dropout, norm_eps=m.norm_eps,
                        train_data=cfg.data.train, activation_checkpointing=m.activation_checkpointing)


def _options(section: Any) -> Any:
    """A resolved section's options object (``None`` for a component that declares none)."""
    return section if not isinstance(section, dict) else None


def _check(obj: Any, kind: type, what: str) -> Any:
    if not isinstance(obj, kind):
        raise TypeError(f"{what} returned {type(obj).__name__}, not a d2v {kind.__name__}")
    return obj


@dataclass
class Components:
    """Everything a run builds from plugins: the student model (encoder, masker, target
    normalisers, 2.0 decoder inside it) and the record decoder of its data."""

    model: Data2Vec
    record_decoder: RecordDecoder


def _masker(cfg: RunConfig, registry: Registry) -> Masker:
    spec = registry.component("masker", cfg.masking.name or registry.modality(cfg.modality).default_masker, cfg.modality)
    return _check(spec.load_factory()(_options(cfg.masking.options)), Masker, f"masker {spec.name!r} from {spec.distribution}")


def _normalizer(name: str, registry: Registry) -> Normalizer:
    spec = registry.component("normalizer", name)
    return _check(spec.load_factory()(), Normalizer, f"normalizer {name!r}")


def _decoder(cfg: RunConfig, registry: Registry, ctx: BuildContext) -> Decoder | None:
    """data2vec 2.0's decoder named by ``cfg.decoder`` (``None`` for data2vec 1.0)."""
    if cfg.decoder.name is None:
        return None
    spec = registry.component("decoder", cfg.decoder.name, cfg.modality)
    return _check(spec.load_factory()(_options(cfg.decoder.options), ctx), Decoder, f"decoder {spec.name!r} from {spec.distribution}")


def _model(cfg: RunConfig, registry: Registry, ctx: BuildContext) -> Data2Vec:
    spec = registry.modality(cfg.modality)
    encoder = _check(load_ref(spec.encoder, f"modality {spec.name!r} encoder")(_options(cfg.encoder), ctx),
                     FeatureEncoder, f"modality {spec.name!r}: encoder factory")
    per_layer, post = _normalizer(cfg.targets.per_layer_norm, registry), _normalizer(cfg.targets.post_norm, registry)
    return Data2Vec(encoder, cfg, _masker(cfg, registry), per_layer, post, decoder=_decoder(cfg, registry, ctx))


def _record_decoder(cfg: RunConfig, registry: Registry, ctx: BuildContext) -> RecordDecoder:
    spec = registry.modality(cfg.modality)
    factory = load_ref(spec.record_decoder, f"modality {spec.name!r} record decoder")
    return _check(factory(_options(cfg.data.options), _options(cfg.encoder), ctx), RecordDecoder,
                  f"modality {spec.name!r}: record decoder factory")


def build_components(cfg: RunConfig, registry: Registry) -> Components:
    """The model and record decoder of ``cfg`` (its plugin sections resolved first if they are
    still plain mappings)."""
    cfg = resolve_options(cfg, registry)
    ctx = build_context(cfg)
    return Components(_model(cfg, registry, ctx), _record_decoder(cfg, registry, ctx))


def build_model(cfg: RunConfig, registry: Registry) -> Data2Vec:
    """Only the student model of :func:`build_components` (benchmarks, export, tests)."""
    cfg = resolve_options(cfg, registry)
    return _model(cfg, registry, build_context(cfg))


def build_record_decoder(cfg: RunConfig, registry: Registry) -> RecordDecoder:
    """Only the record decoder of :func:`build_components` (data benchmarks)."""
    cfg = resolve_options(cfg, registry)
    return _record_decoder(cfg, registry, build_context(cfg))


def build_schedule(cfg: RunConfig, registry: Registry) -> Callable[[int], float]:
    """The learning rate of each update (``optim.schedule``, a ``schedule`` component)."""
    cfg = resolve_options(cfg, registry)
    spec = registry.component("schedule", cfg.optim.schedule.name)
    ctx = ScheduleContext(peak_lr=cfg.optim.lr, max_steps=cfg.runtime.max_steps, schedule=cfg.optim.schedule)
    schedule = spec.load_factory()(_options(cfg.optim.schedule.options), ctx)
    if not callable(schedule):
        raise TypeError(f"schedule {spec.name!r} from {spec.distribution} returned {type(schedule).__name__}, not a function of the step")
    return schedule


def build_masker(cfg: RunConfig, registry: Registry) -> Masker:
    """Only the masker (benchmarks)."""
    return _masker(resolve_options(cfg, registry), registry)


def _open_logger(spec: Any, options: Any, ctx: LoggerContext) -> MetricsLogger:
    return spec.load_factory()(options, ctx)


def logger_factories(cfg: RunConfig, registry: Registry) -> list[tuple[str, Callable[[LoggerContext], MetricsLogger]]]:
    """``(name, open(ctx))`` for each logger of the run (``run_loggers``), for the trainer's
    :class:`~d2v_core.train.metrics.MetricsWriter` to open on rank 0 (the factory is imported
    only then, so a broken plugin logger is reported and left out, not fatal)."""
    cfg = resolve_options(cfg, registry)
    options = cfg.runtime.logger_options
    return [(name, partial(_open_logger, registry.component("logger", name), _options(options.get(name, {}))))
            for name in run_loggers(cfg)]
