"""data2vec 2.0 for images: the v2 presets against the spec, the 2-D decoder against a written-out
reference, the sin-cos positions against MAE's formula, a training step with the CLS loss, and
the refused hf export. The ``inverse-block`` masker comes from d2v-plugin-maskers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2v_core.config_resolve import resolve_config
from d2v_core.decoder_options import ConvDecoderOptions
from d2v_core.errors import ExportError
from d2v_core.model.ema_teacher import EMATeacher
from d2v_core.plugin_loader import module_source, plugin_context
from d2v_core.train.build import build_model

import d2v_plugin_image.plugin as image_plugin
from d2v_plugin_image.conv_decoder_2d import ConvDecoder2d
from d2v_plugin_image.hf_export import ImageHFExporter

maskers_plugin = pytest.importorskip("d2v_plugin_maskers.plugin", reason="d2v-plugin-maskers provides inverse-block")


@pytest.fixture
def registry():
    with plugin_context(module_source(image_plugin, name="image"), module_source(maskers_plugin, name="maskers")) as loaded:
        assert not loaded.errors(), [p.error for p in loaded.errors()]
        yield loaded.registry


def test_v2_base_preset_is_the_spec_recipe(registry):
    cfg = resolve_config(registry, "image", "v2-base")
    m = cfg.model
    assert (m.dim, m.depth, m.heads, m.ffn_dim, m.layout, m.final_norm, m.norm_eps) == (768, 12, 12, 3072, "post_ln", False, 1e-6)
    assert (m.dropout, m.attention_dropout, m.drop_path, m.layerdrop, m.qkv_bias) == (0.0, 0.0, 0.0, 0.0, "qkv")
    assert {k: cfg.encoder[k] for k in ("image_size", "patch_size", "position", "input_norm", "init")} == {
        "image_size": 224, "patch_size": 16, "position": "sincos", "input_norm": True, "init": "mae"}
    assert cfg.masking.name == "inverse-block" and cfg.masking.clone_batch == 16
    assert {k: cfg.masking.options[k] for k in ("mask_prob", "mask_length", "mask_prob_adjust")} == {
        "mask_prob": 0.8, "mask_length": 3, "mask_prob_adjust": 0.07}
    d = cfg.decoder
    assert d.name == "conv2d" and {k: d.options[k] for k in ("channels", "kernel", "groups", "layers", "residual", "input_dropout")} == {
        "channels": 768, "kernel": 3, "groups": 16, "layers": 6, "residual": True, "input_dropout": 0.0}
    assert (cfg.targets.top_k, cfg.targets.layer_norm, cfg.targets.post_norm) == (10, "instance", "layer")
    assert (cfg.loss.beta, cfg.loss.scale, cfg.loss.cls_weight) == (0.0, "inv_sqrt_dim", 0.01)
    e = cfg.ema
    assert (e.decay, e.end_decay, e.anneal_end_step, e.teacher_input) == (0.9998, 0.99999, 100_000, "raw")
    o = cfg.optim
    assert (o.lr, tuple(o.betas), o.weight_decay, o.clip_norm) == (1e-3, (0.9, 0.95), 0.05, 4.0)
    assert o.eps == 1e-8  # the yaml sets no adam_eps: fairseq's FairseqAdamConfig default
    assert (o.schedule.name, o.schedule.warmup_steps, cfg.runtime.max_steps, cfg.data.batch_size) == ("cosine", 50_040, 375_300, 256)
    assert tuple(cfg.data.options["crop_scale"]) == (0.2, 1.0) and cfg.data.options["color_jitter"] == 0.0
    assert cfg.runtime.min_target_var == 0.0 and cfg.runtime.min_pred_var == 0.0
    tiny = resolve_config(registry, "image", "v2-tiny")
    assert (tiny.model.dim, tiny.model.depth, tiny.model.heads) == (128, 4, 4) and tiny.masking.clone_batch == 16


def test_v2_presets_need_the_maskers_plugin():
    from d2v_core.errors import UnknownComponentError

    with plugin_context(image_plugin) as loaded:
        with pytest.raises(UnknownComponentError, match="unknown masker 'inverse-block'"):
            resolve_config(loaded.registry, "image", "v2-tiny")


def _reference_decoder_2d(dec: ConvDecoder2d, x: torch.Tensor, grid) -> torch.Tensor:
    """fairseq Decoder2d written out with functional ops and the module's weights."""
    B, T, D = x.shape
    h = x.transpose(1, 2).reshape(B, D, *grid)
    for block in dec.blocks:
        c = block.conv
        y = F.conv2d(h, c.weight, c.bias, padding=c.kernel_size[0] // 2, groups=c.groups)
        if c.kernel_size[0] % 2 == 0:
            y = y[..., :-1, :-1]
        y = F.gelu(F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],)).permute(0, 3, 1, 2))
        h = y + h if y.shape == h.shape else y
    return dec.proj(h.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("kernel, channels", [(3, 64), (4, 32)])
def test_conv_decoder_2d_matches_the_written_out_reference(kernel, channels):
    torch.manual_seed(0)
    dec = ConvDecoder2d(ConvDecoderOptions(channels=channels, kernel=kernel, groups=16, layers=3), 64)
    x = torch.randn(2, 6 * 5, 64)
    out = dec(x, None, (6, 5))
    assert out.shape == x.shape
    torch.testing.assert_close(out, _reference_decoder_2d(dec, x, (6, 5)))
    with pytest.raises(ValueError, match="patch grid"):
        dec(x, None, (5, 5))


def _mae_sincos(grid: int, dim: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed, written out: [sin, cos] of each coordinate, D/2 each."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gh, gw = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    return np.concatenate([one_d(dim // 2, gh), one_d(dim // 2, gw)], axis=1)


def test_sincos_positions_are_maes_up_to_the_order_of_channels(registry):
    cfg = resolve_config(registry, "image", "v2-tiny")
    enc = build_model(cfg, registry).encoder
    ours = enc.pos_embed[0].double().numpy()  # (64, 128), rows in the patches' order
    mae = _mae_sincos(8, 128)
    dist = np.abs(ours.T[:, None, :] - mae.T[None, :, :]).max(-1)  # (ours channel, MAE channel)
    match = dist.argmin(1)
    assert dist.min(1).max() < 1e-5  # every channel is one of MAE's (float32 vs float64)
    assert sorted(match.tolist()) == list(range(128))  # ... and each of MAE's is used once
    assert "pos_embed" not in enc.state_dict()  # fixed: derived from the grid, not saved


def test_v2_step_with_the_cls_loss(registry):
    cfg = resolve_config(registry, "image", "v2-tiny")
    model = build_model(cfg, registry).train()
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    assert "encoder.patch_embed.proj.weight" in teacher.averaged  # the image teacher has its own patch embedding
    shapes = {"t": [], "s": []}
    teacher.model["transformer"].register_forward_hook(lambda m, a, o: shapes["t"].append(tuple(a[0].shape)))
    model.transformer.register_forward_hook(lambda m, a, o: shapes["s"].append(tuple(a[0].shape)))
    out = model({"image": torch.randn(2, 3, 32, 32), "keys": ["a", "b"]}, torch.Generator().manual_seed(0), teacher.model)
    assert shapes["t"] == [(2, 65, 128)] and shapes["s"] == [(32, 1 + 12, 128)]  # 52 of 64 masked, CLS kept
    assert int(out.sample_size) == 32 * 52 and out.cls_sum is not None and float(out.cls_sum) > 0
    out.loss_sum.backward()
    assert model.encoder.cls_token.grad is not None


def test_v2_export_is_refused(registry, tmp_path):
    cfg = resolve_config(registry, "image", "v2-tiny")
    with pytest.raises(ExportError, match="post-LN") as info:
        ImageHFExporter().export(build_model(cfg, registry), cfg, {}, tmp_path)
    assert "\n" not in str(info.value)
    pre_ln = resolve_config(registry, "image", "v2-tiny", overrides=[
        "model.layout=pre_ln", "model.final_norm=true", "model.layer_scale_init=0.1"])
    with pytest.raises(ExportError, match="sincos"):  # a pre-LN model with 2.0's encoder is refused too
        ImageHFExporter().export(build_model(pre_ln, registry), pre_ln, {}, tmp_path)
