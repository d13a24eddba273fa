"""``d2v export --format hf`` and ``d2v import --from-hf`` for images, checked against transformers'
own ``Data2VecVisionModel`` and ``BeitImageProcessor`` (spec sections 3.2 and 3.4)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from d2v_cli.testing import run_cli  # noqa: E402
from d2v_core.config_resolve import config_to_yaml, resolve_config  # noqa: E402
from d2v_core.errors import ExportError  # noqa: E402
from d2v_core.inference.embed import encoder_states  # noqa: E402
from d2v_core.inference.exchange import find_exporter  # noqa: E402
from d2v_core.inference.pretrained import load_pretrained  # noqa: E402
from d2v_core.plugin_loader import plugin_context  # noqa: E402
from d2v_core.train.build import build_model  # noqa: E402
from d2v_core.train.checkpoint import latest_checkpoint, save_checkpoint  # noqa: E402

import d2v_plugin_image.plugin as plugin_module  # noqa: E402
from d2v_plugin_image.hf_export import ImageHFExporter  # noqa: E402
from d2v_plugin_image.transforms import EvalTransform  # noqa: E402

transformers = pytest.importorskip("transformers")

DEPTH = 3  # the tiny preset's targets.top_k is 3


@pytest.fixture(scope="module")
def registry():
    with plugin_context(plugin_module) as loaded:
        assert not loaded.errors(), loaded.errors()
        yield loaded.registry


def tiny_config(registry, *overrides: str):
    return resolve_config(registry, "image", "tiny", overrides=[f"model.depth={DEPTH}", *overrides])


def random_model(cfg, registry, seed: int = 0):
    """The tiny model with every encoder/transformer weight random, none at its init value:
    layer scale around 0.5, LayerNorm gains around 1, a non-zero relative position table."""
    torch.manual_seed(seed)
    model = build_model(cfg, registry).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.teacher_scope().named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(("gamma_1", "gamma_2")):
                p.copy_(0.5 + 0.2 * noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif "relative_position_bias_table" in name or "bias" in name and p.dim() == 1:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.05 * noise)
    return model


def save_run(model, cfg, run_dir):
    return save_checkpoint(run_dir, 1, model.state_dict(), model.teacher_scope().state_dict(), {"step": 1},
                           config_to_yaml(cfg), {"modality": "image"})


def images(n: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def load_hf(path):
    return transformers.Data2VecVisionModel.from_pretrained(str(path)).eval()


@pytest.fixture(scope="module")
def exported(registry, tmp_path_factory):
    """A random tiny model saved as a d2v run, and its export through ``d2v export``."""
    root = tmp_path_factory.mktemp("hf")
    cfg = tiny_config(registry)
    model = random_model(cfg, registry)
    save_run(model, cfg, root / "run")
    code, _, err = run_cli(["export", str(root / "run"), "--format", "hf", "--out", str(root / "hf")])
    assert code == 0, err
    return model, cfg, root


def test_exporter_is_registered_for_image(registry):
    assert isinstance(find_exporter(registry, "image", "hf"), ImageHFExporter)


def test_export_matches_data2vec_vision_model(exported):
    model, _, root = exported
    hf = load_hf(root / "hf")
    c = hf.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (128, DEPTH, 4, 512)
    assert (c.image_size, c.patch_size, c.layer_norm_eps) == (32, 4, 1e-6)
    assert c.use_shared_relative_position_bias and not c.use_relative_position_bias
    assert not c.use_absolute_position_embeddings and not c.use_mean_pooling and c.use_mask_token
    x = images()
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state
    ours, _ = encoder_states(model, {"image": x})
    assert ours.shape == expected.shape == (3, 65, 128)
    assert (ours - expected).abs().max().item() <= 1e-4
    assert ours.std().item() > 0.5  # a real signal, not two near-zero tensors


def masked_student(model, x, mask):  # noqa: ANN001, ANN201
    """The final states of d2v's masked student (the training step's path: mask embedding at the
    masked patches, every patch encoded), CLS dropped."""
    feats = model.encoder.embed({"image": x})
    states, _ = model._dense_student(feats.x, feats.padding_mask, mask, torch.Generator().manual_seed(0))
    return states[:, 1:]


def test_every_layer_and_the_mask_token_match(exported):
    model, _, root = exported
    hf = load_hf(root / "hf")
    x = images(seed=2)
    mask = torch.rand(3, 64, generator=torch.Generator().manual_seed(3)) < 0.6
    with torch.no_grad():
        out = hf(pixel_values=x, bool_masked_pos=mask, output_hidden_states=True)
        student = masked_student(model, x, mask)
        # layer outputs (the data2vec_vision targets) of the unmasked input
        plain = hf(pixel_values=x, output_hidden_states=True).hidden_states
    assert (student - out.last_hidden_state[:, 1:]).abs().max().item() <= 1e-4
    for layer in range(DEPTH + 1):  # 0: the Transformer input (CLS + patches)
        ours, _ = encoder_states(model, {"image": x}, layer=layer)
        assert (ours - plain[layer]).abs().max().item() <= 1e-4, layer


def test_preprocessor_is_the_eval_transform(exported):
    _, _, root = exported
    config = json.loads((root / "hf" / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "BeitImageProcessor"
    rng = np.random.default_rng(0)
    transform = EvalTransform(32)
    pil_backend = transformers.BeitImageProcessorPil.from_pretrained(str(root / "hf"))
    default = transformers.AutoImageProcessor.from_pretrained(str(root / "hf"))
    # 32x32 and 48x40 (resized to 38x32: an even margin, so both centre crops agree)
    for height, width in [(32, 32), (48, 40), (20, 20)]:
        img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        ours = transform(img)
        assert (pil_backend(img, return_tensors="pt").pixel_values[0] - ours).abs().max().item() <= 1e-5
        # the torchvision backend resizes tensors, not PIL images: close, not equal
        assert (default(img, return_tensors="pt").pixel_values[0] - ours).abs().max().item() <= 0.05


def test_import_round_trip_and_continue_pretraining(exported, registry, tmp_path):
    model, cfg, root = exported
    with plugin_context(plugin_module):
        code, _, err = run_cli(["import", "--from-hf", str(root / "hf"), "--modality", "image", "--out", str(tmp_path / "run2")])
        assert code == 0, err
        pre = load_pretrained(tmp_path / "run2", registry)
        m = pre.cfg.model
        assert (m.dim, m.depth, m.heads, m.ffn_dim, m.norm_eps, m.layout, m.qkv_bias, m.final_norm) == (
            128, DEPTH, 4, 512, 1e-6, "pre_ln", "qv", True)
        assert pre.cfg.encoder.image_size == 32 and pre.cfg.encoder.patch_size == 4
        x = images(seed=4)
        ours, _ = encoder_states(model, {"image": x})
        again, _ = encoder_states(pre.model, {"image": x})
        assert (ours - again).abs().max().item() <= 1e-6
        mask = torch.rand(3, 64, generator=torch.Generator().manual_seed(5)) < 0.5
        with torch.no_grad():
            assert torch.allclose(masked_student(model, x, mask), masked_student(pre.model, x, mask), atol=1e-6)
        ckpt = latest_checkpoint(tmp_path / "run2").path
        student, teacher = load_file(str(ckpt / "student.safetensors")), load_file(str(ckpt / "teacher.safetensors"))
        assert all(torch.equal(student[k], teacher[k]) for k in teacher)  # the teacher starts as the student

        # the architecture (depth 3, not the preset's 4) comes from the imported checkpoint's config
        code, _, err = run_cli(["pretrain", "-m", "image", "--init-from", str(tmp_path / "run2"), "--max-steps", "2",
                                "--data", plugin_module.demo_data(), "--out", str(tmp_path / "run3"),
                                "--set", "data.batch_size=8", "--set", "runtime.progress=false",
                                "--set", "runtime.tensorboard=false"])
        assert code == 0, err
        assert latest_checkpoint(tmp_path / "run3").step == 2


@pytest.mark.parametrize("overrides", [
    ("model.qkv_bias=none",),
    ("model.qkv_bias=qkv",),  # the key bias is dropped: softmax ignores q . b_k, the same for every key
    ("model.layer_scale_init=null", "model.norm_eps=1e-5"),
], ids=["no-bias", "qkv-bias", "no-layer-scale"])
def test_other_layouts_export_exactly(registry, tmp_path, overrides):
    cfg = tiny_config(registry, *overrides)
    model = random_model(cfg, registry, seed=7)
    if cfg.model.qkv_bias == "qkv":
        with torch.no_grad():
            for layer in model.transformer.layers:
                layer.attn.qkv.bias[128:256].normal_(0, 2.0)  # a large key bias
    ImageHFExporter().export(model, cfg, {}, tmp_path)
    hf = load_hf(tmp_path)
    assert hf.config.layer_norm_eps == cfg.model.norm_eps
    assert (hf.encoder.layer[0].lambda_1 is None) == (cfg.model.layer_scale_init is None)
    x = images(seed=8)
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state
    ours, _ = encoder_states(model, {"image": x})
    assert (ours - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("overrides, message", [
    (("model.layout=post_ln", "model.layer_scale_init=null"), "model.layout=post_ln"),
    (("model.final_norm=false",), "model.final_norm=false"),
])
def test_unrepresentable_models_are_refused_in_one_line(registry, tmp_path, overrides, message):
    cfg = tiny_config(registry, *overrides)
    save_run(random_model(cfg, registry), cfg, tmp_path / "run")
    with plugin_context(plugin_module):
        code, _, err = run_cli(["export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert not list((tmp_path / "hf").glob("*"))  # nothing written (the core may also remove the folder)


def test_non_square_grid_is_refused(registry, tmp_path):
    cfg = tiny_config(registry)
    model = random_model(cfg, registry)
    model.encoder.grid = (8, 4)  # the encoder only builds square grids; the guard protects other encoders
    with pytest.raises(ExportError, match="8x4"):
        ImageHFExporter().export(model, cfg, {}, tmp_path)


def _hf_dir(path, **changes):
    """A small transformers Data2VecVisionModel directory (the pretrained data2vec_vision layout + ``changes``)."""
    fields = dict(hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=4, intermediate_size=64, image_size=16,
                  patch_size=4, use_mask_token=True, use_absolute_position_embeddings=False,
                  use_relative_position_bias=False, use_shared_relative_position_bias=True, use_mean_pooling=False,
                  layer_scale_init_value=0.1)
    cfg = transformers.Data2VecVisionConfig(**{**fields, **changes})
    transformers.Data2VecVisionModel(cfg, add_pooling_layer=False).save_pretrained(str(path))
    return path


def test_import_refuses_what_d2v_cannot_represent(tmp_path):
    exporter = ImageHFExporter()
    with pytest.raises(ExportError, match="absolute position embeddings"):
        exporter.import_config(_hf_dir(tmp_path / "abs", use_absolute_position_embeddings=True))
    with pytest.raises(ExportError, match="per-layer relative position biases"):
        exporter.import_config(_hf_dir(tmp_path / "rel", use_relative_position_bias=True,
                                       use_shared_relative_position_bias=False))
    with pytest.raises(ExportError, match="no config.json"):
        exporter.import_config(tmp_path)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ExportError, match="'bert' model"):
        exporter.import_config(tmp_path / "bert")


def test_import_refuses_missing_weights(registry, tmp_path):
    src = _hf_dir(tmp_path / "hf")
    weights = load_file(str(src / "model.safetensors"))
    del weights["encoder.layer.1.attention.attention.key.weight"]
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    with plugin_context(plugin_module):
        code, _, err = run_cli(["import", "--from-hf", str(src), "--modality", "image", "--out", str(tmp_path / "run")])
    assert code == 1 and "encoder.layer.1.attention.attention.key.weight" in err and err.count("\n") == 1, err


def test_import_of_a_transformers_classifier_reproduces_its_encoder(registry, tmp_path):
    """A directory written by transformers itself (an image classifier without a mask token):
    the imported d2v model gives Data2VecVisionModel's outputs; the heads are left out."""
    from d2v_core.inference.exchange import import_checkpoint

    fields = dict(hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=4, intermediate_size=64, image_size=16,
                  patch_size=4, use_mask_token=False, use_absolute_position_embeddings=False,
                  use_relative_position_bias=False, use_shared_relative_position_bias=True, use_mean_pooling=False,
                  layer_scale_init_value=0.1, layer_norm_eps=1e-12, num_labels=3)
    torch.manual_seed(0)
    classifier = transformers.Data2VecVisionForImageClassification(transformers.Data2VecVisionConfig(**fields))
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(0.3 * torch.randn_like(p))  # layer scale, LayerNorms and the zero table all move
    classifier.save_pretrained(str(tmp_path / "hf"))
    with pytest.warns(UserWarning, match="no mask_token"):
        import_checkpoint(tmp_path / "hf", "image", tmp_path / "run", registry)
    pre = load_pretrained(tmp_path / "run", registry)
    assert pre.cfg.model.norm_eps == 1e-12 and pre.cfg.model.layer_scale_init == 0.1
    hf = load_hf(tmp_path / "hf")
    assert hf.encoder.relative_position_bias.relative_position_bias_table.abs().min() > 0
    x = images(size=16, seed=9)
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state
    ours, _ = encoder_states(pre.model, {"image": x})
    assert (ours - expected).abs().max().item() <= 1e-4
