"""``d2v export --format hf`` and ``d2v import --from-hf`` for audio, checked against transformers.

A tiny audio model built by the core (preset ``tiny``, every weight moved off its init value) is
saved as a d2v checkpoint, exported through the CLI, reloaded with
``Data2VecAudioModel.from_pretrained`` and compared with d2v's own encoder output; the directory
is then imported back and used to continue pretraining.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from d2v_cli.testing import run_cli  # noqa: E402
from d2v_core.config_resolve import config_to_yaml, resolve_config  # noqa: E402
from d2v_core.errors import ExportError  # noqa: E402
from d2v_core.inference.embed import encoder_states  # noqa: E402
from d2v_core.inference.pretrained import load_pretrained  # noqa: E402
from d2v_core.model.ema_teacher import EMATeacher  # noqa: E402
from d2v_core.testing import plugin_context  # noqa: E402
from d2v_core.train.build import build_model  # noqa: E402
from d2v_core.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

import d2v_plugin_audio.plugin as audio_plugin  # noqa: E402
from d2v_plugin_audio.data import AudioRecordDecoder  # noqa: E402
from d2v_plugin_audio.hf_export import AudioHFExporter  # noqa: E402
from d2v_plugin_audio.options import AudioDataOptions  # noqa: E402

QUIET = ["--set", "runtime.progress=false", "--set", "runtime.tensorboard=false"]


def random_model(registry, cfg):
    torch.manual_seed(0)
    model = build_model(cfg, registry)
    with torch.no_grad():  # unit LayerNorms and zero biases would hide mapping mistakes
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def checkpoint(model, cfg, run_dir: Path) -> Path:
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    return save_checkpoint(run_dir, 1, model.state_dict(), teacher.state_dict(), {"step": 1}, config_to_yaml(cfg), {})


@pytest.fixture(scope="module")
def loaded():
    with plugin_context(audio_plugin) as plugins:
        assert not plugins.errors(), [p.error for p in plugins.errors()]
        yield plugins


@pytest.fixture(scope="module")
def exported(loaded, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_export")
    cfg = resolve_config(loaded.registry, "audio", "tiny")
    model = random_model(loaded.registry, cfg)
    ckpt = checkpoint(model, cfg, root / "run")
    hf_dir = root / "hf"
    code, _, _ = run_cli(["export", str(ckpt), "--format", "hf", "--out", str(hf_dir)])
    assert code == 0
    return SimpleNamespace(root=root, cfg=cfg, model=model, ckpt=ckpt, hf_dir=hf_dir)


def collated(lengths: list[int], batching: str = "pad", seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Waveforms as the audio collate makes them: ``pad`` right-pads and returns a sample-level
    padding mask, ``crop`` (pretraining) cuts to the shortest and returns None."""
    g = torch.Generator().manual_seed(seed)
    samples = [{"source": torch.randn(n, generator=g), "key": str(i)} for i, n in enumerate(lengths)]
    batch = AudioRecordDecoder(AudioDataOptions(batching=batching)).collate(samples)
    return batch["source"], batch["padding_mask"]


@pytest.mark.parametrize("lengths, batching", [([12000, 13000], "crop"), ([16000, 11111], "pad")], ids=["unpadded", "right_padded"])
def test_transformers_reproduces_the_encoder_output(exported, lengths, batching):
    hf = transformers.Data2VecAudioModel.from_pretrained(str(exported.hf_dir)).eval()
    wav, pad = collated(lengths, batching)
    with torch.no_grad():
        ours, frame_pad = encoder_states(exported.model, {"source": wav, "padding_mask": pad})
        kwargs = {} if pad is None else {"attention_mask": (~pad).long()}
        theirs = hf(wav, **kwargs).last_hidden_state
    assert ours.shape == theirs.shape
    if pad is None:
        assert frame_pad is None
        valid = torch.ones(ours.shape[:2], dtype=torch.bool)
    else:
        valid = hf._get_feature_vector_attention_mask(ours.shape[1], (~pad).long()).bool()
        assert torch.equal(frame_pad, ~valid) and not valid.all()
    assert ours.abs().max() > 0.1  # not a trivially equal (zero) output
    assert (ours - theirs)[valid].abs().max() <= 1e-4


def test_exported_config_and_preprocessor(exported):
    cfg = json.loads((exported.hf_dir / "config.json").read_text())
    assert cfg["model_type"] == "data2vec-audio"
    m = exported.cfg.model
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["intermediate_size"]) == (128, 4, 4, 512)
    assert (cfg["hidden_act"], cfg["feat_extract_activation"], cfg["layer_norm_eps"]) == ("gelu", "gelu", m.norm_eps)
    assert cfg["conv_dim"] == [64] * 7 and cfg["conv_kernel"] == [10, 3, 3, 3, 3, 2, 2] and cfg["conv_stride"] == [5, 2, 2, 2, 2, 2, 2]
    assert (cfg["num_conv_pos_embeddings"], cfg["conv_pos_kernel_size"], cfg["num_conv_pos_embedding_groups"]) == (2, 19, 16)
    assert cfg["mask_time_prob"] > 0 and cfg["conv_bias"] is False
    # spec section 3.4, exactly
    assert json.loads((exported.hf_dir / "preprocessor_config.json").read_text()) == {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
        "padding_value": 0.0, "do_normalize": True, "return_attention_mask": True,
    }
    fe = transformers.AutoFeatureExtractor.from_pretrained(str(exported.hf_dir))
    assert isinstance(fe, transformers.Wav2Vec2FeatureExtractor)
    assert (fe.sampling_rate, fe.do_normalize, fe.return_attention_mask) == (16000, True, True)
    hf = transformers.Data2VecAudioModel.from_pretrained(str(exported.hf_dir))
    assert torch.equal(hf.masked_spec_embed.detach(), exported.model.encoder.mask_embedding.detach())


def test_feature_extractor_pipeline_matches_the_record_decoder(exported, audio):
    """Raw audio through HF's extractor + model vs d2v's decoder + encoder. Normalisation eps
    differs (1e-7 vs 1e-5); at a normal level the outputs still agree closely."""
    clip = audio.speechlike(1.3)[:, 0]
    buf = io.BytesIO()
    sf.write(buf, clip, 16000, format="WAV", subtype="FLOAT")
    decoder = AudioRecordDecoder(AudioDataOptions(min_sample_size=0, max_sample_size=None, batching="pad"))
    batch = decoder.collate([decoder.decode_for_inference({"wav": buf.getvalue(), "__key__": "a"})])
    fe = transformers.AutoFeatureExtractor.from_pretrained(str(exported.hf_dir))
    inputs = fe(clip.astype(np.float64), sampling_rate=16000, return_tensors="pt")
    hf = transformers.Data2VecAudioModel.from_pretrained(str(exported.hf_dir)).eval()
    with torch.no_grad():
        ours, _ = encoder_states(exported.model, batch)
        theirs = hf(inputs["input_values"].float(), attention_mask=inputs["attention_mask"]).last_hidden_state
    assert (batch["source"] - inputs["input_values"]).abs().max() < 2e-3  # the normalisations nearly agree
    assert (ours - theirs).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def imported(exported, loaded):
    run2 = exported.root / "imported"
    code, _, _ = run_cli(["import", "--from-hf", str(exported.hf_dir), "--modality", "audio", "--out", str(run2)])
    assert code == 0
    return run2


def test_import_round_trip(exported, imported, loaded):
    pre = load_pretrained(imported, loaded.registry)
    for part in ("encoder", "transformer"):  # every weight comes back unchanged
        original = getattr(exported.model, part).state_dict()
        back = getattr(pre.model, part).state_dict()
        assert original.keys() == back.keys()
        assert all(torch.equal(original[k], back[k]) for k in original), part
    assert pre.cfg.model.model_dump() == exported.cfg.model.model_dump()
    assert pre.cfg.encoder == exported.cfg.encoder
    assert (pre.cfg.data.options.sample_rate, pre.cfg.data.options.normalize) == (16000, True)
    wav, pad = collated([16000, 9000], seed=3)
    a, pad_a = encoder_states(exported.model, {"source": wav, "padding_mask": pad})
    b, pad_b = encoder_states(pre.model, {"source": wav, "padding_mask": pad})
    assert torch.equal(pad_a, pad_b) and torch.equal(a, b)


@pytest.mark.slow
def test_pretraining_continues_from_an_import(exported, imported):
    run3 = exported.root / "continued"
    args = ["pretrain", "-m", "audio", "--init-from", str(imported), "--max-steps", "2", "--out", str(run3),
            "--set", "data.batch_size=2", *QUIET]  # on the plugin's demo clips
    code, _, err = run_cli(args)
    assert code == 0, err
    assert json.loads((run3 / "summary.json").read_text())["step"] == 2
    after = load_checkpoint(run3)["student"]
    start = exported.model.transformer.state_dict()
    # two warm-up steps move the weights a little; a run that ignored --init-from would be ~0.1 away
    drift = max((after[f"transformer.{k}"] - v).abs().max().item() for k, v in start.items())
    assert drift < 0.02


@pytest.mark.parametrize(
    "override, reason",
    [
        ({"layout": "pre_ln"}, "post-LN only"),
        ({"layout": "pre_ln", "layer_scale_init": 0.1}, "layer scale"),
        ({"qkv_bias": "qv"}, "biases on q, k and v"),
        ({"final_norm": True}, "no LayerNorm after its layers"),
    ],
)
def test_refuses_what_transformers_cannot_represent(loaded, tmp_path, override, reason):
    base = resolve_config(loaded.registry, "audio", "tiny")
    cfg = base.model_copy(update={"model": base.model.model_validate({**base.model.model_dump(), **override})})
    model = build_model(cfg, loaded.registry)
    with pytest.raises(ExportError, match=reason) as info:
        AudioHFExporter().export(model, cfg, {}, tmp_path)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cli_refusal_is_one_line(loaded, tmp_path):
    cfg = resolve_config(loaded.registry, "audio", "tiny", overrides=["model.final_norm=true"])
    ckpt = checkpoint(build_model(cfg, loaded.registry), cfg, tmp_path / "run")
    code, _, err = run_cli(["export", str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert code == 1 and err.count("\n") == 1 and "model.final_norm=true" in err


def test_import_refuses_other_models_and_incomplete_weights(exported, loaded, tmp_path):
    text = tmp_path / "text"
    transformers.Data2VecTextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(text)
    code, _, err = run_cli(["import", "--from-hf", str(text), "--modality", "audio", "--out", str(tmp_path / "a")])
    assert code == 1 and err.count("\n") == 1 and "'data2vec-text'" in err

    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (partial / name).write_bytes((exported.hf_dir / name).read_bytes())
    weights = load_file(str(exported.hf_dir / "model.safetensors"))
    del weights["encoder.layers.1.attention.k_proj.weight"]
    save_file(weights, str(partial / "model.safetensors"), metadata={"format": "pt"})
    code, _, err = run_cli(["import", "--from-hf", str(partial), "--modality", "audio", "--out", str(tmp_path / "b")])
    assert code == 1 and err.count("\n") == 1 and "missing ['encoder.layers.1.attention.k_proj.weight']" in err

    weights["encoder.layers.1.attention.k_proj.weight"] = torch.zeros(128, 64)
    save_file(weights, str(partial / "model.safetensors"), metadata={"format": "pt"})
    code, _, err = run_cli(["import", "--from-hf", str(partial), "--modality", "audio", "--out", str(tmp_path / "c")])
    assert code == 1 and err.count("\n") == 1 and "wrong shape ['encoder.layers.1.attention.k_proj.weight (128, 64)" in err


def test_import_without_masked_spec_embed_keeps_a_fresh_mask_embedding(exported, loaded, tmp_path):
    """A directory saved with mask_time_prob 0 has no masked_spec_embed; everything else loads."""
    from safetensors.torch import load_file, save_file

    src = tmp_path / "nomask"
    config = json.loads((exported.hf_dir / "config.json").read_text())
    src.mkdir()
    (src / "config.json").write_text(json.dumps({**config, "mask_time_prob": 0.0}))
    weights = load_file(str(exported.hf_dir / "model.safetensors"))
    del weights["masked_spec_embed"]
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    exporter = AudioHFExporter()
    cfg = resolve_config(loaded.registry, "audio", "tiny")
    assert "data" not in exporter.import_config(src)  # no preprocessor_config.json: the preset's data options
    model = build_model(cfg, loaded.registry)
    fresh = model.encoder.mask_embedding.detach().clone()
    with pytest.warns(UserWarning, match="no masked_spec_embed"):
        exporter.import_weights(src, model)
    assert torch.equal(model.encoder.mask_embedding, fresh)
    original = exported.model.transformer.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in model.transformer.state_dict().items())


def test_import_from_a_ctc_checkpoint_ignores_the_head(exported, loaded, tmp_path):
    """A fine-tuned ``Data2VecAudioForCTC`` directory stores the encoder under ``data2vec_audio.``
    next to ``lm_head``; the encoder loads, the head is ignored."""
    config = transformers.Data2VecAudioConfig.from_pretrained(str(exported.hf_dir))
    config.vocab_size = 12
    ctc = transformers.Data2VecAudioForCTC(config)
    base = transformers.Data2VecAudioModel.from_pretrained(str(exported.hf_dir))
    ctc.data2vec_audio.load_state_dict(base.state_dict())
    ctc.save_pretrained(tmp_path / "ctc")
    model = build_model(resolve_config(loaded.registry, "audio", "tiny"), loaded.registry)
    AudioHFExporter().import_weights(tmp_path / "ctc", model)
    for part in ("encoder", "transformer"):
        original = getattr(exported.model, part).state_dict()
        assert all(torch.equal(v, original[k]) for k, v in getattr(model, part).state_dict().items()), part
