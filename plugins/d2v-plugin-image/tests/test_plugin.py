"""Registration, presets against the data2vec_vision recipe (spec 1.2), demo data, light imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from d2v_core import testing
from d2v_core.config_resolve import resolve_config
from d2v_core.errors import UnknownComponentError
from d2v_core.specs import load_ref

import d2v_plugin_image.plugin as plugin_module


@pytest.fixture(scope="module")
def registry():
    with testing.plugin_context(plugin_module) as loaded:
        assert not loaded.errors(), loaded.errors()
        yield loaded.registry


def test_registers_image_modality_and_block_masker(registry):
    spec = registry.modality("image")
    assert spec.default_masker == "block" and spec.default_preset == "tiny"
    assert set(spec.extensions) == {"jpg", "jpeg", "png", "webp"}
    assert registry.component("masker", "block", modality="image").supports("image")
    with pytest.raises(UnknownComponentError):
        registry.component("masker", "block", modality="audio")
    assert plugin_module.D2V_PLUGIN_API_VERSION == "1.0"


def test_check_modality():
    """Every preset resolves; the data2vec 2.0 presets name ``inverse-block`` from d2v-plugin-maskers."""
    from d2v_core.plugin_loader import module_source

    maskers = pytest.importorskip("d2v_plugin_maskers.plugin")
    with testing.plugin_context(module_source(plugin_module, name="image"), module_source(maskers, name="maskers")) as loaded:
        testing.check_modality(loaded.registry.modality("image"), loaded.registry)


def test_base_preset_is_the_data2vec_vision_recipe(registry):
    cfg = resolve_config(registry, "image", "base")
    m = cfg.model
    assert (m.dim, m.depth, m.heads, m.ffn_dim) == (768, 12, 12, 3072)
    assert (m.layout, m.layer_scale_init, m.qkv_bias, m.final_norm, m.norm_eps, m.init) == ("pre_ln", 1e-4, "qv", True, 1e-6, "beit")
    assert (m.drop_path, m.attention_dropout, m.dropout) == (0.25, 0.05, 0.0)
    assert cfg.encoder.model_dump() == {"image_size": 224, "patch_size": 16, "init_std": 0.02, "position": "relative",
                           "input_norm": False, "init": "beit"}
    assert cfg.masking.name == "block" and cfg.masking.options.mask_ratio * 196 == pytest.approx(120)
    assert cfg.masking.options.min_num_patches == 16 and cfg.masking.options.max_aspect == pytest.approx(1 / 0.3)
    t = cfg.targets
    assert (t.top_k, t.source, t.per_layer_norm, t.post_norm) == (6, "block", "layer", "layer")
    assert (cfg.loss.beta, cfg.loss.scale, cfg.loss.head) == (2.0, "inv_dim", "linear")
    e = cfg.ema
    assert (e.decay, e.end_decay, e.teacher_input) == (0.9998, 0.9998, "raw") and not e.copy_params and not e.exclude_params
    assert e.teacher_precision == "fp32"  # data2vec_vision: the teacher sees the image in fp32
    o = cfg.optim
    assert (o.lr, o.betas, o.eps, o.weight_decay, o.clip_norm, o.no_decay_1d) == (2e-3, (0.9, 0.999), 1e-8, 0.05, 3.0, True)
    assert "encoder.cls_token" in o.no_decay
    # ImageNet-1k: 1,281,167 // 2048 = 625 steps per epoch; 10 warm-up epochs, 800 epochs.
    assert cfg.data.batch_size == 2048
    assert (o.schedule.name, o.schedule.warmup_steps, o.schedule.min_lr) == ("cosine", 6250, 1e-5)
    assert cfg.runtime.max_steps == 500_000
    assert cfg.data.options.crop_scale == (0.08, 1.0) and cfg.data.options.color_jitter == 0.4
    assert cfg.data.options.hflip == 0.5 and cfg.data.options.interpolation == "bicubic"


def test_large_preset(registry):
    cfg = resolve_config(registry, "image", "large")
    m = cfg.model
    assert (m.dim, m.depth, m.heads, m.ffn_dim, m.layer_scale_init) == (1024, 24, 16, 4096, 1e-5)
    assert (m.drop_path, m.attention_dropout) == (0.2, 0.15)
    assert cfg.optim.lr == 1e-3 and cfg.data.batch_size == 4096
    assert cfg.targets.top_k == 6  # layers 18..23 of 24
    assert cfg.optim.schedule.warmup_steps == 80 * (1_281_167 // 4096)


def test_tiny_preset_builds_a_small_model(registry):
    cfg = resolve_config(registry, "image", "tiny")
    spec = registry.modality("image")
    enc = testing.build_encoder(spec, cfg)
    assert enc.grid == (8, 8) and cfg.model.dim <= 256
    dec = testing.build_record_decoder(spec, cfg)
    masker = load_ref(registry.component("masker", "block").factory)(
        load_ref(registry.component("masker", "block").options).model_validate(cfg.masking.options)
    )
    files = sorted(Path(plugin_module.demo_data()).glob("*.png"))[:4]
    batch = dec.collate([dec.decode({"__key__": f.stem, "png": f.read_bytes()}, torch.Generator().manual_seed(0)) for f in files])
    feats = testing.check_feature_encoder(enc, batch)
    from d2v_core.interfaces import MaskRequest

    mask = masker(MaskRequest(4, feats.x.shape[1], feats.padding_mask, feats.grid), torch.Generator().manual_seed(0))
    assert mask.shape == (4, 64) and mask.sum(1).max().item() == 39


def test_demo_data_is_a_folder_of_readable_pngs():
    from d2v_plugin_image.image_io import decode_image

    folder = Path(plugin_module.demo_data())
    files = sorted(folder.iterdir())
    assert 20 <= len(files) <= 40 and all(f.suffix == ".png" for f in files)
    for f in files:
        assert decode_image(f.read_bytes()).size == (32, 32)


def test_registration_modules_do_not_import_torch():
    code = (
        "import sys, d2v_plugin_image.plugin, d2v_plugin_image.presets, d2v_plugin_image.options; "
        "bad = [m for m in ('torch', 'timm', 'torchvision', 'PIL') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_installed_entry_point_names_the_plugin_module():
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("d2v-plugin-image")
    except PackageNotFoundError:
        pytest.skip("d2v-plugin-image is not installed")
    eps = [ep for ep in dist.entry_points if ep.group == "d2v"]
    assert [(ep.name, ep.value) for ep in eps] == [("image", "d2v_plugin_image.plugin")]
