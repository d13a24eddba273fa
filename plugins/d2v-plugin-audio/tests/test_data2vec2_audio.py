"""data2vec 2.0 for audio: the v2 presets against the spec, ALiBi in the encoder, the teacher's
scope, a training step, and the refused hf export."""

from __future__ import annotations

import pytest
import torch

from d2v_core.config_resolve import resolve_config
from d2v_core.errors import ExportError
from d2v_core.model.alibi import alibi_slopes
from d2v_core.model.ema_teacher import EMATeacher
from d2v_core.testing import plugin_context
from d2v_core.train.build import build_model

import d2v_plugin_audio.plugin as audio_plugin
from d2v_plugin_audio.hf_export import AudioHFExporter


@pytest.fixture
def registry():
    with plugin_context(audio_plugin) as loaded:
        yield loaded.registry


def test_v2_base_preset_is_the_spec_recipe(registry):
    cfg = resolve_config(registry, "audio", "v2-base")
    m = cfg.model
    assert (m.dim, m.depth, m.heads, m.ffn_dim, m.layout, m.norm_eps) == (768, 12, 12, 3072, "post_ln", 1e-5)
    assert (m.dropout, m.attention_dropout, m.layerdrop) == (0.1, 0.1, 0.05)
    assert cfg.encoder.alibi is True and cfg.encoder.pos_conv_depth == 5 and cfg.encoder.pos_conv_kernel == 19
    assert cfg.masking.name == "block-1d" and cfg.masking.clone_batch == 8
    assert {k: getattr(cfg.masking.options, k) for k in ("mask_prob", "mask_length", "mask_prob_adjust")} == {
        "mask_prob": 0.5, "mask_length": 5, "mask_prob_adjust": 0.05}
    d = cfg.decoder
    assert d.name == "conv1d" and d.mask_noise_std == 0.01
    assert {k: getattr(d.options, k) for k in ("channels", "kernel", "groups", "layers", "residual", "projection_layers", "input_dropout")} == {
        "channels": 384, "kernel": 7, "groups": 16, "layers": 4, "residual": True, "projection_layers": 1, "input_dropout": 0.1}
    assert (cfg.targets.top_k, cfg.targets.source, cfg.targets.per_layer_norm, cfg.targets.post_norm) == (8, "ffn", "instance", "none")
    assert (cfg.loss.beta, cfg.loss.scale) == (0.0, "inv_sqrt_dim")
    e = cfg.ema
    assert (e.decay, e.end_decay, e.anneal_end_step, e.teacher_input, e.copy_params) == (0.999, 0.99999, 75000, "features", [])
    o = cfg.optim
    assert (o.lr, tuple(o.betas), o.eps, o.weight_decay, o.clip_norm) == (7.5e-4, (0.9, 0.98), 1e-6, 0.01, 0.0)
    assert (o.schedule.name, o.schedule.warmup_steps, cfg.runtime.max_steps) == ("cosine", 8000, 400_000)
    # plain adam (not composite) in the yaml: fairseq ignores the model's no-decay overrides
    assert not o.no_decay_1d and o.no_decay == []
    tiny = resolve_config(registry, "audio", "v2-tiny")
    v1_tiny = resolve_config(registry, "audio", "tiny")
    assert tiny.model == v1_tiny.model  # the same encoder size, for the v1/v2 comparison
    # d2v's own short-run choices (docs/benchmarks.md, issue 20): 4 clones, tiny's schedule, the
    # teacher at 0.999 from the first step
    assert tiny.masking.clone_batch == 4 and tiny.encoder.alibi is True
    assert (tiny.ema.decay, tiny.ema.end_decay) == (0.999, 0.999)
    assert tiny.optim.schedule == v1_tiny.optim.schedule and tiny.masking.options == cfg.masking.options


def test_encoder_adds_alibi_scaled_per_head(registry):
    cfg = resolve_config(registry, "audio", "v2-tiny")
    model = build_model(cfg, registry)
    enc = model.encoder
    with torch.no_grad():
        enc.alibi_scale.copy_(torch.tensor([0.5, 1.0, 2.0, -1.0]).view(1, 4, 1, 1))
    ctx = enc.contextualize(torch.randn(2, 6, cfg.model.dim), None)
    slopes = alibi_slopes(4)
    scale = [0.5, 1.0, 2.0, 0.0]  # a negative scale is clamped to 0 (fairseq)
    expected = torch.tensor([[[-scale[h] * slopes[h] * abs(i - j) for j in range(6)] for i in range(6)] for h in range(4)])
    torch.testing.assert_close(ctx.attn_bias[0], expected)
    ctx.attn_bias.sum().backward()
    assert enc.alibi_scale.grad is not None  # the scale is learned


def test_teacher_averages_positional_parts_and_skips_the_local_encoder(registry):
    cfg = resolve_config(registry, "audio", "v2-tiny")
    model = build_model(cfg, registry)
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    assert "encoder.alibi_scale" in teacher.averaged and "encoder.layer_norm.weight" in teacher.averaged
    assert any(n.startswith("encoder.pos_conv_embed.") for n in teacher.averaged) and not teacher.copied
    assert all(n.startswith(("encoder.feature_extractor.", "encoder.feature_projection.", "encoder.mask_embedding"))
               for n in teacher.excluded)


def test_v2_step_on_clips(registry):
    cfg = resolve_config(registry, "audio", "v2-tiny")
    model = build_model(cfg, registry).train()
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    shapes = {"t": [], "s": []}
    teacher.model["transformer"].register_forward_hook(lambda m, a, o: shapes["t"].append(tuple(a[0].shape)))
    model.transformer.register_forward_hook(lambda m, a, o: shapes["s"].append(tuple(a[0].shape)))
    batch = {"source": torch.randn(2, 16000), "keys": ["a", "b"]}
    out = model(batch, torch.Generator().manual_seed(0), teacher.model)
    T = int(model.encoder.output_lengths(16000))  # 49 frames
    M = cfg.masking.clone_batch  # 4 at v2-tiny (pinned in the preset test): each clip M times
    assert shapes["t"] == [(2, T, 128)] and shapes["s"] == [(2 * M, T - int(0.5 * T), 128)]
    assert int(out.sample_size) == 2 * M * int(0.5 * T)
    out.loss_sum.backward()
    assert model.decoder.proj.weight.grad is not None


def test_v2_export_is_refused_for_alibi(registry, tmp_path):
    cfg = resolve_config(registry, "audio", "v2-tiny")
    with pytest.raises(ExportError, match="ALiBi") as info:
        AudioHFExporter().export(build_model(cfg, registry), cfg, {}, tmp_path)
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())
