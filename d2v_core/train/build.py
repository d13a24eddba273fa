"""Build a run's components from its config and the plugin registry."""

from __future__ import annotations

from d2v_core.config import RunConfig
from d2v_core.interfaces import Decoder, FeatureEncoder, Masker, RecordDecoder
from d2v_core.model.data2vec import Data2Vec
from d2v_core.registry import Registry
from d2v_core.specs import load_ref


def build_masker(cfg: RunConfig, registry: Registry) -> Masker:
    spec = registry.component("masker", cfg.masking.name or registry.modality(cfg.modality).default_masker, cfg.modality)
    options = spec.load_options()
    masker = spec.load_factory()(options.model_validate(cfg.masking.options) if options is not None else None)
    if not isinstance(masker, Masker):
        raise TypeError(f"masker {spec.name!r} from {spec.distribution} is not a d2v Masker")
    return masker


def build_encoder(cfg: RunConfig, registry: Registry) -> FeatureEncoder:
    spec = registry.modality(cfg.modality)
    encoder = load_ref(spec.encoder, f"modality {spec.name!r} encoder")(cfg)
    if not isinstance(encoder, FeatureEncoder):
        raise TypeError(f"modality {spec.name!r}: encoder factory returned {type(encoder).__name__}, not a FeatureEncoder")
    return encoder


def build_decoder(cfg: RunConfig, registry: Registry) -> Decoder | None:
    """data2vec 2.0's decoder named by ``cfg.decoder`` (``None`` for data2vec 1.0)."""
    if cfg.decoder.name is None:
        return None
    spec = registry.component("decoder", cfg.decoder.name, cfg.modality)
    options = spec.load_options()
    decoder = spec.load_factory()(options.model_validate(cfg.decoder.options) if options is not None else None, cfg.model.dim)
    if not isinstance(decoder, Decoder):
        raise TypeError(f"decoder {spec.name!r} from {spec.distribution} is not a d2v Decoder")
    return decoder


def build_model(cfg: RunConfig, registry: Registry) -> Data2Vec:
    """The student model with its masker, target normalisers and (2.0) decoder."""
    norms = [registry.component("normalizer", n).load_factory()() for n in (cfg.targets.layer_norm, cfg.targets.post_norm)]
    return Data2Vec(build_encoder(cfg, registry), cfg, build_masker(cfg, registry), *norms, decoder=build_decoder(cfg, registry))


def build_record_decoder(cfg: RunConfig, registry: Registry) -> RecordDecoder:
    spec = registry.modality(cfg.modality)
    decoder = load_ref(spec.record_decoder, f"modality {spec.name!r} record decoder")(cfg)
    if not isinstance(decoder, RecordDecoder):
        raise TypeError(f"modality {spec.name!r}: record decoder factory returned {type(decoder).__name__}")
    return decoder
