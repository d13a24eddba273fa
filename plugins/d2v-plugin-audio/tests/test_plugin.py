"""Registration, presets and the conformance kit on the whole audio modality."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from d2v_core import testing
from d2v_core.config_resolve import resolve_config
from d2v_core.errors import ConfigError
from d2v_core.specs import load_ref
from d2v_core.testing import check_feature_encoder, check_modality, check_record_decoder, plugin_context

import d2v_plugin_audio.plugin as audio_plugin


@pytest.fixture
def registry():
    with plugin_context(audio_plugin) as loaded:
        assert not loaded.errors(), [p.error for p in loaded.errors()]
        yield loaded.registry


def test_registers_the_modality_and_the_span_masker(registry):
    spec = registry.modality("audio")
    assert spec.default_masker == "span" and spec.default_preset == "tiny"
    assert spec.extensions == ("flac", "wav", "ogg")
    assert registry.component("masker", "span", modality="audio").modalities == ("audio",)
    check_modality(spec, registry)


def test_registration_modules_do_not_import_torch():
    code = (
        "import sys, d2v_plugin_audio.plugin, d2v_plugin_audio.presets, d2v_plugin_audio.options, "
        "d2v_plugin_audio.demo_data; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_base_preset_is_the_papers_recipe(registry):
    cfg = resolve_config(registry, "audio", "base")
    m = cfg.model
    assert (m.dim, m.depth, m.heads, m.ffn_dim, m.layout) == (768, 12, 12, 3072, "post_ln")
    assert (m.dropout, m.attention_dropout, m.activation_dropout, m.layerdrop) == (0.1, 0.1, 0.0, 0.05)
    assert cfg.encoder.conv_kernels == [10, 3, 3, 3, 3, 2, 2] and cfg.encoder.conv_strides == [5, 2, 2, 2, 2, 2, 2]
    assert (cfg.encoder.conv_channels, cfg.encoder.pos_conv_depth, cfg.encoder.pos_conv_kernel) == (512, 5, 19)
    assert cfg.masking.name == "span"
    assert cfg.masking.options.mask_prob == 0.65 and cfg.masking.options.mask_length == 10
    t = cfg.targets
    assert (t.top_k, t.source, t.per_layer_norm, t.post_norm) == (8, "ffn", "instance", "none")
    assert (cfg.loss.beta, cfg.loss.scale, cfg.loss.head) == (0.0, "inv_sqrt_dim", "linear")
    e = cfg.ema
    assert (e.decay, e.end_decay, e.anneal_end_step, e.teacher_input) == (0.999, 0.9999, 30000, "features")
    o = cfg.optim
    assert (o.lr, tuple(o.betas), o.eps, o.weight_decay, o.clip_norm) == (5e-4, (0.9, 0.98), 1e-6, 0.01, 0.0)
    assert o.schedule.name == "tri_stage" and tuple(o.schedule.phase_ratio) == (0.03, 0.9, 0.07)
    assert (o.schedule.init_lr_scale, o.schedule.final_lr_scale) == (0.01, 0.01)
    assert cfg.runtime.max_steps == 400000
    d = cfg.data.options
    assert (d.min_sample_size, d.max_sample_size, d.normalize, d.batching) == (32000, 320000, True, "crop")


def test_large_preset_sizes(registry):
    m = resolve_config(registry, "audio", "large").model
    assert (m.dim, m.depth, m.heads, m.ffn_dim) == (1024, 24, 16, 4096)


def test_teacher_patterns_name_real_encoder_parameters(registry):
    import fnmatch

    cfg = resolve_config(registry, "audio", "tiny")
    names = [f"encoder.{n}" for n, _ in testing.build_encoder(registry.modality("audio"), cfg).named_parameters()]
    copied = {n for n in names for p in cfg.ema.copy_params if fnmatch.fnmatch(n, p)}
    excluded = {n for n in names for p in cfg.ema.exclude_params if fnmatch.fnmatch(n, p)}
    assert copied == {n for n in names if n.startswith("encoder.pos_conv_embed.")} and copied
    assert excluded == {n for n in names if n.startswith(("encoder.feature_extractor.", "encoder.feature_projection."))} | {
        "encoder.mask_embedding"
    }
    # what the teacher averages on the encoder side: only the input LayerNorm (fairseq encoder.layer_norm)
    assert set(names) - copied - excluded == {"encoder.layer_norm.weight", "encoder.layer_norm.bias"}


def test_bad_encoder_options_fail_with_the_field_named(registry):
    with pytest.raises(ConfigError, match="encoder"):
        resolve_config(registry, "audio", "tiny", overrides=["encoder.conv_strides=[5,2]"])
    with pytest.raises(ConfigError, match="conv_bais"):
        resolve_config(registry, "audio", "tiny", overrides=["encoder.conv_bais=true"])
    cfg = resolve_config(registry, "audio", "tiny", overrides=["encoder.pos_conv_groups=3"])
    with pytest.raises(ConfigError, match="pos_conv_groups"):
        testing.build_encoder(registry.modality("audio"), cfg)
    with pytest.raises(ConfigError, match="min_sample_size"):
        resolve_config(registry, "audio", "tiny", overrides=["data.options.min_sample_size=64000"])


def test_feature_encoder_conformance_on_a_padded_batch(registry, clip_bytes):
    cfg = resolve_config(registry, "audio", "tiny", overrides=["data.options.batching=pad", "data.options.min_sample_size=4000"])
    spec = registry.modality("audio")
    decoder = testing.build_record_decoder(spec, cfg)
    records = [{"__key__": str(i), "wav": clip_bytes(s, seed=i)} for i, s in enumerate([1.0, 0.6, 0.8])]
    batch = check_record_decoder(decoder, records)
    encoder = testing.build_encoder(spec, cfg)
    assert encoder.num_prefix_tokens == 0 and encoder.dim == 128
    feats = check_feature_encoder(encoder, batch)
    assert feats.x.shape == (3, 49, 128)
    assert feats.padding_mask.sum(-1).tolist() == [0, 49 - 29, 49 - 39]  # 9600 -> 29, 12800 -> 39 frames


def test_feature_encoder_conformance_on_a_cropped_batch(registry, clip_bytes):
    cfg = resolve_config(registry, "audio", "tiny", overrides=["data.options.min_sample_size=4000"])
    spec = registry.modality("audio")
    decoder = testing.build_record_decoder(spec, cfg)
    batch = check_record_decoder(decoder, [{"__key__": str(i), "flac": clip_bytes(s, fmt="FLAC")} for i, s in enumerate([0.7, 0.5])])
    assert batch["padding_mask"] is None and batch["source"].shape == (2, 8000)
    feats = check_feature_encoder(testing.build_encoder(spec, cfg), batch)
    assert feats.padding_mask is None and feats.x.shape == (2, 24, 128)


def test_mask_embedding_replaces_masked_frames(registry):
    cfg = resolve_config(registry, "audio", "tiny")
    encoder = testing.build_encoder(registry.modality("audio"), cfg)
    emb = encoder.mask_embedding.detach()
    assert emb.shape == (128,) and 0.0 <= emb.min() and emb.max() <= 1.0  # uniform_(0, 1) init
    x = torch.randn(2, 10, 128)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 3:6] = True
    y = encoder.apply_mask(x, mask)
    assert torch.equal(y[0, 3], emb) and torch.equal(y[~mask], x[~mask])


def test_demo_data_ships_readable_speech(registry):
    folder = Path(load_ref(registry.modality("audio").demo_data)())
    files = sorted(folder.glob("*.flac"))
    assert len(files) >= 10 and sum(f.stat().st_size for f in files) <= 1_100_000
    cfg = resolve_config(registry, "audio", "tiny")
    decoder = testing.build_record_decoder(registry.modality("audio"), cfg)
    for f in files[:3]:
        wav = decoder.decode({"__key__": f.stem, "flac": f.read_bytes()}, torch.Generator().manual_seed(0))["source"]
        assert 16000 <= wav.shape[0] <= 32000
