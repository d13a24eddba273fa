"""Conformance kit: checks any plugin package runs in its own tests.

    from d2v_core import testing
    testing.check_masker(masker, length=200)
    testing.check_feature_encoder(encoder, batch)
    testing.check_modality(spec)             # presets validate, factories load
    testing.check_logger(spec, tmp_path)     # a `logger` component takes the trainer's calls

Also re-exports :func:`plugin_context` for registering plugins in-process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from d2v_core.config_resolve import resolve_config
from d2v_core.interfaces import FeatureEncoder, Features, Masker, MaskRequest, RecordDecoder
from d2v_core.loggers import LoggerContext, MetricsLogger
from d2v_core.plugin_loader import plugin_context
from d2v_core.registry import Registry
from d2v_core.specs import ComponentSpec, ModalitySpec, load_ref

__all__ = ["check_masker", "check_feature_encoder", "check_modality", "check_record_decoder", "check_logger", "plugin_context"]


def check_masker(
    masker: Masker,
    *,
    batch_size: int = 8,
    length: int = 200,
    grid: tuple[int, ...] | None = None,
    draws: int = 50,
    ratio_tolerance: float = 0.03,
    padded: bool = True,
) -> float:
    """Shape, dtype, determinism, no masking in padding, equal counts (if declared), and the
    measured mask ratio within ``ratio_tolerance`` of ``expected_ratio``. Returns the ratio."""
    assert isinstance(masker, Masker), f"{type(masker).__name__} is not a d2v Masker"
    req = MaskRequest(batch_size, length, None, grid)
    a = masker(req, torch.Generator().manual_seed(1))
    b = masker(req, torch.Generator().manual_seed(1))
    assert a.shape == (batch_size, length), f"mask shape {tuple(a.shape)} != {(batch_size, length)}"
    assert a.dtype == torch.bool, f"mask dtype {a.dtype} is not torch.bool"
    assert torch.equal(a, b), "same generator seed gave different masks"
    gen = torch.Generator().manual_seed(2)
    masked = total = 0
    for _ in range(draws):
        m = masker(req, gen)
        if masker.equal_counts:
            counts = m.sum(-1)
            assert (counts == counts[0]).all(), f"declared equal counts per row, got {counts.tolist()}"
        masked += int(m.sum())
        total += m.numel()
    ratio = masked / total
    assert abs(ratio - masker.expected_ratio) <= ratio_tolerance, (
        f"measured mask ratio {ratio:.4f} differs from declared {masker.expected_ratio:.4f} by more than {ratio_tolerance}"
    )
    if padded and grid is None:
        lengths = torch.linspace(length // 2, length, batch_size).long()
        pad = torch.arange(length)[None, :] >= lengths[:, None]
        m = masker(MaskRequest(batch_size, length, pad, grid), torch.Generator().manual_seed(3))
        assert not (m & pad).any(), "masker masked padded steps"
        assert m.sum() > 0, "masker masked nothing on a padded batch"
    return ratio


def check_feature_encoder(encoder: FeatureEncoder, batch: dict[str, Any]) -> Features:
    """``embed`` gives (B, T, D) float features with a matching bool padding mask, ``apply_mask``
    keeps shapes and changes only masked steps, ``contextualize`` gives P + T tokens, and the
    student path is differentiable."""
    assert isinstance(encoder, FeatureEncoder), f"{type(encoder).__name__} is not a d2v FeatureEncoder"
    feats = encoder.embed(batch)
    x = feats.x
    assert x.dim() == 3 and x.shape[-1] == encoder.dim, f"features {tuple(x.shape)} are not (B, T, {encoder.dim})"
    assert x.is_floating_point(), "features must be floating point"
    if feats.padding_mask is not None:
        assert feats.padding_mask.dtype == torch.bool and feats.padding_mask.shape == x.shape[:2], "bad padding mask"
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    mask[:, ::3] = True
    if feats.padding_mask is not None:
        mask &= ~feats.padding_mask
    y = encoder.apply_mask(x, mask, torch.Generator().manual_seed(0))
    assert y.shape == x.shape, "apply_mask changed the shape"
    assert torch.equal(y[~mask], x[~mask]), "apply_mask changed unmasked steps"
    ctx = encoder.contextualize(y, feats.padding_mask)
    assert ctx.x.shape[1] == x.shape[1] + encoder.num_prefix_tokens, "contextualize returned the wrong number of tokens"
    ctx.x.float().sum().backward()
    assert any(p.grad is not None for p in encoder.parameters()), "no gradient reached the encoder"
    return feats


def check_record_decoder(decoder: RecordDecoder, records: list[dict]) -> dict:
    """Decode and collate ``records`` (all valid) into a batch dict with ``keys``."""
    assert isinstance(decoder, RecordDecoder)
    samples = [decoder.decode(r, torch.Generator().manual_seed(0)) for r in records]
    batch = decoder.collate(samples)
    assert isinstance(batch, dict) and "keys" in batch, "collate must return a dict with 'keys'"
    return batch


def check_modality(spec: ModalitySpec, registry: Registry | None = None) -> None:
    """Every preset resolves to a valid config, and every factory and option model loads."""
    reg = registry
    if reg is None:
        from d2v_core.plugin_loader import get_registry

        reg = get_registry()
    for ref in (spec.encoder, spec.encoder_options, spec.record_decoder, spec.data_options):
        load_ref(ref, f"modality {spec.name!r}")
    names = spec.preset_names()
    assert spec.default_preset in names, f"default preset {spec.default_preset!r} not among {names}"
    for preset in names:
        resolve_config(reg, spec.name, preset)


def build_encoder(spec: ModalitySpec, cfg: Any) -> FeatureEncoder:
    """The modality's encoder for ``cfg``, built as the core builds it: ``cfg.encoder`` validated
    against the spec's options model, then ``factory(options, BuildContext)``."""
    from d2v_core.config_resolve import _validate_options
    from d2v_core.train.build import build_context

    return load_ref(spec.encoder)(_validate_options(spec.encoder_options, cfg.encoder, "encoder"), build_context(cfg))


def build_record_decoder(spec: ModalitySpec, cfg: Any) -> RecordDecoder:
    """The modality's record decoder for ``cfg``, built as the core builds it."""
    from d2v_core.config_resolve import _validate_options
    from d2v_core.train.build import build_context

    return load_ref(spec.record_decoder)(
        _validate_options(spec.data_options, cfg.data.options, "data.options"),
        _validate_options(spec.encoder_options, cfg.encoder, "encoder"), build_context(cfg),
    )


def check_logger(spec: ComponentSpec, run_dir: Path, options: Any = None) -> MetricsLogger:
    """A ``logger`` component opened as rank 0 opens it (``factory(options, LoggerContext)``;
    ``options``: a mapping validated against its options model, default ``{}``), then given the
    trainer's calls: ``log_config`` once, ``log`` at two steps (the keys a log step has, one of
    them not finite), ``close``. Returns the closed logger for the plugin's own checks."""
    from d2v_core.config_resolve import _validate_options

    assert spec.kind == "logger", f"{spec.name!r} is a {spec.kind}, not a logger"
    opts = _validate_options(spec.options, options or {}, f"runtime.logger_options.{spec.name}")
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = spec.load_factory()(opts if not isinstance(opts, dict) else None, LoggerContext(run_dir, max_steps=4, modality="check"))
    assert isinstance(logger, MetricsLogger), f"logger {spec.name!r}: the factory returned {type(logger).__name__}, not a MetricsLogger"
    logger.log_config({"modality": "check", "optim": {"lr": 0.001, "betas": [0.9, 0.98]}, "runtime": {"loggers": [spec.name]}})
    for step, loss in ((2, 1.5), (4, float("nan"))):
        logger.log(step, {"loss": loss, "rel_loss": 0.5, "lr": 1e-3, "tau": 0.999, "target_var": 1.0, "samples_per_s": 10.0})
    logger.close("finished")
    return logger

