"""Import of fairseq data2vec 1.0 audio checkpoints, against a transcription of fairseq's forward;
through the CLI, the imported run embeds, probes, continues pretraining and exports to
transformers' Data2VecAudioModel with fairseq's outputs.

The fixture holds the tensors of fairseq's ``Data2VecAudioModel`` at a small size, named and
shaped as its modules create them:

- ``examples/data2vec/models/data2vec_audio.py`` L109-L145: ``feature_extractor``
  (``ConvFeatureExtractionModel``), ``post_extract_proj`` Linear(C, D), ``mask_emb`` (D,),
  ``encoder`` (``TransformerEncoder``), ``layer_norm`` LayerNorm(C), ``final_proj`` Linear(D, D);
  ``state_dict`` L189-L195 adds the teacher's ``fp32_params`` under ``_ema``.
- ``fairseq/models/wav2vec/wav2vec2.py`` L856-L880 (conv block ``Sequential(conv, Dropout,
  Sequential(TransposeLast, Fp32LayerNorm, TransposeLast), GELU)``: keys ``.0`` and ``.2.1``),
  L1019-L1047 (``pos_conv``: ``Sequential(Conv1d, SamePad, TransposeLast, LayerNorm(no affine),
  TransposeLast, GELU)`` per block, kernel ``max(3, conv_pos // depth)``), L1292-L1308
  (``self_attn`` with ``q/k/v/out_proj``, ``self_attn_layer_norm``, ``fc1``, ``fc2``,
  ``final_layer_norm``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from d2v_cli.testing import run_cli
from d2v_core.errors import CheckpointError
from d2v_core.inference.embed import encoder_states
from d2v_core.inference.pretrained import load_pretrained
from d2v_core.interop.fairseq_fixtures import save_fairseq_checkpoint
from d2v_core.interop.fairseq_import import import_fairseq
from d2v_core.plugin_loader import get_registry
from d2v_core.train.checkpoint import load_checkpoint

D, DEPTH, HEADS, FFN = 32, 3, 4, 64
CONV = [(16, 10, 5), (16, 3, 2), (24, 3, 2), (24, 2, 2)]
POS_DEPTH, CONV_POS, POS_GROUPS = 2, 10, 4  # kernel max(3, 10 // 2) = 5

MODEL_CFG = {
    "_name": "data2vec_audio", "extractor_mode": "layer_norm", "encoder_layers": DEPTH, "encoder_embed_dim": D,
    "encoder_ffn_embed_dim": FFN, "encoder_attention_heads": HEADS, "activation_fn": "gelu", "layer_type": "transformer",
    "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.05,
    "dropout_input": 0.0, "dropout_features": 0.0, "feature_grad_mult": 1.0, "layer_norm_first": False,
    "conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)] + [(24, 3, 2)] + [(24, 2, 2)]", "conv_bias": False,
    "conv_pos": CONV_POS, "conv_pos_groups": POS_GROUPS, "pos_conv_depth": POS_DEPTH, "required_seq_len_multiple": 2,
    "mask_prob": 0.65, "mask_length": 10, "loss_beta": 0.0, "loss_scale": None, "instance_norm_target_layer": True,
    "average_top_k_layers": 2, "ema_decay": 0.999, "ema_end_decay": 0.9999,
    "ema_anneal_end_step": "${optimization.max_update}", "ema_transformer_only": True, "ema_layers_only": True,
}


def fairseq_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under fairseq's names and shapes (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    s: dict[str, torch.Tensor] = {}
    c_in = 1
    for j, (c, k, _) in enumerate(CONV):
        s[f"feature_extractor.conv_layers.{j}.0.weight"] = r(c, c_in, k, scale=0.5)
        s[f"feature_extractor.conv_layers.{j}.2.1.weight"] = 1 + r(c)
        s[f"feature_extractor.conv_layers.{j}.2.1.bias"] = r(c)
        c_in = c
    s["layer_norm.weight"], s["layer_norm.bias"] = 1 + r(c_in), r(c_in)
    s["post_extract_proj.weight"], s["post_extract_proj.bias"] = r(D, c_in), r(D)
    s["mask_emb"] = torch.rand(D, generator=g)
    s["final_proj.weight"], s["final_proj.bias"] = r(D, D), r(D)
    enc = encoder_state(r)
    s.update({f"encoder.{k}": v for k, v in enc.items()})
    s.update({f"_ema.{k}": v + r(*v.shape, scale=0.05) for k, v in enc.items()})  # a teacher that differs
    return s


def encoder_state(r) -> dict[str, torch.Tensor]:  # noqa: ANN001
    k = max(3, CONV_POS // POS_DEPTH)
    s = {}
    for j in range(POS_DEPTH):
        s[f"pos_conv.{j}.0.weight"], s[f"pos_conv.{j}.0.bias"] = r(D, D // POS_GROUPS, k), r(D)
    s["layer_norm.weight"], s["layer_norm.bias"] = 1 + r(D), r(D)
    for i in range(DEPTH):
        p = f"layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            s[p + f"self_attn.{proj}.weight"], s[p + f"self_attn.{proj}.bias"] = r(D, D), r(D)
        s[p + "self_attn_layer_norm.weight"], s[p + "self_attn_layer_norm.bias"] = 1 + r(D), r(D)
        s[p + "fc1.weight"], s[p + "fc1.bias"] = r(FFN, D), r(FFN)
        s[p + "fc2.weight"], s[p + "fc2.bias"] = r(D, FFN), r(D)
        s[p + "final_layer_norm.weight"], s[p + "final_layer_norm.bias"] = 1 + r(D), r(D)
    return s


# ---- fairseq's forward, transcribed (eval mode: dropout and LayerDrop off) -------------------

def fs_encoder(s: dict, prefix: str, x: torch.Tensor, pad: torch.Tensor | None):
    """wav2vec2.py ``TransformerEncoder.extract_features`` L1084-L1178 (layer_norm_first False):
    returns the output (B, T, D) and each layer's ``layer_result`` (the FFN output, L1370)."""
    if pad is not None:
        x = x.masked_fill(pad.unsqueeze(-1), 0.0)  # index_put(x, padding_mask, 0)
    y = x.transpose(1, 2)
    k = max(3, CONV_POS // POS_DEPTH)
    for j in range(POS_DEPTH):
        y = F.conv1d(y, s[f"{prefix}pos_conv.{j}.0.weight"], s[f"{prefix}pos_conv.{j}.0.bias"], padding=k // 2, groups=POS_GROUPS)
        if k % 2 == 0:
            y = y[:, :, :-1]  # SamePad
        y = F.gelu(F.layer_norm(y.transpose(1, 2), (D,)).transpose(1, 2))
    x = x + y.transpose(1, 2)
    x = F.layer_norm(x, (D,), s[f"{prefix}layer_norm.weight"], s[f"{prefix}layer_norm.bias"])
    B, T, _ = x.shape
    pad_length = (-T) % 2  # pad_to_multiple(required_seq_len_multiple=2)
    if pad_length:
        x = F.pad(x, (0, 0, 0, pad_length))
        pad = torch.zeros(B, T, dtype=torch.bool) if pad is None else pad
        pad = F.pad(pad, (0, pad_length), value=True)
    results = []
    for i in range(DEPTH):
        p = f"{prefix}layers.{i}."
        x, fc = fs_layer(s, p, x, pad)
        results.append(fc)
    if pad_length:
        x, results = x[:, :-pad_length], [t[:, :-pad_length] for t in results]
    return x, results


def fs_layer(s: dict, p: str, x: torch.Tensor, pad: torch.Tensor | None):
    """``TransformerSentenceEncoderLayer.forward`` post-LN branch (wav2vec2.py L1352-L1377) with
    fairseq ``MultiheadAttention`` (q scaled by head_dim ** -0.5, key padding masked to -inf)."""
    B, T, _ = x.shape
    hd = D // HEADS

    def lin(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.linear(t, s[p + name + ".weight"], s[p + name + ".bias"])

    q = lin("self_attn.q_proj", x) * hd ** -0.5
    k, v = lin("self_attn.k_proj", x), lin("self_attn.v_proj", x)
    q, k, v = (t.view(B, T, HEADS, hd).transpose(1, 2) for t in (q, k, v))
    w = q @ k.transpose(-1, -2)
    if pad is not None:
        w = w.masked_fill(pad[:, None, None, :], float("-inf"))
    a = (w.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    x = x + lin("self_attn.out_proj", a)
    x = F.layer_norm(x, (D,), s[p + "self_attn_layer_norm.weight"], s[p + "self_attn_layer_norm.bias"])
    h = lin("fc2", F.gelu(lin("fc1", x)))
    x = F.layer_norm(x + h, (D,), s[p + "final_layer_norm.weight"], s[p + "final_layer_norm.bias"])
    return x, h


def fs_features(s: dict, wav: torch.Tensor, sample_pad: torch.Tensor | None):
    """data2vec_audio.py ``forward`` L298-L348 up to the encoder (mask=False): conv stack,
    LayerNorm(C), the frame padding mask (L315-L333), ``post_extract_proj``."""
    x = wav.unsqueeze(1)
    for j, (c, _, st) in enumerate(CONV):  # the kernel size is the weight's
        x = F.conv1d(x, s[f"feature_extractor.conv_layers.{j}.0.weight"], stride=st)
        x = F.layer_norm(x.transpose(1, 2), (c,), s[f"feature_extractor.conv_layers.{j}.2.1.weight"],
                         s[f"feature_extractor.conv_layers.{j}.2.1.bias"]).transpose(1, 2)
        x = F.gelu(x)
    x = F.layer_norm(x.transpose(1, 2), (CONV[-1][0],), s["layer_norm.weight"], s["layer_norm.bias"])
    pad = None
    if sample_pad is not None and sample_pad.any():
        lengths = (1 - sample_pad.long()).sum(-1)
        for _, k, st in CONV:  # _get_feat_extract_output_lengths
            lengths = torch.floor((lengths - k) / st + 1).long()
        pad = torch.zeros(x.shape[:2])
        pad[torch.arange(x.shape[0]), lengths - 1] = 1
        pad = (1 - pad.flip([-1]).cumsum(-1).flip([-1])).bool()
    return F.linear(x, s["post_extract_proj.weight"], s["post_extract_proj.bias"]), pad


def fs_targets(s: dict, feats: torch.Tensor, pad: torch.Tensor | None, top_k: int) -> torch.Tensor:
    """data2vec_audio.py L380-L420: the EMA encoder on the unmasked features, the top-K
    ``layer_result``s instance-normalised over time (TBC -> BCT), averaged."""
    _, results = fs_encoder(s, "_ema.", feats, pad)
    y = [F.instance_norm(t.transpose(1, 2).float()).transpose(1, 2) for t in results[-top_k:]]
    return sum(y) / len(y)


@pytest.fixture
def registry():
    return get_registry()


@pytest.mark.parametrize("form", ["dictconfig", "dict", "args"])
def test_import_matches_fairseq_forward_with_padding(tmp_path, registry, form):
    if form == "dictconfig":
        pytest.importorskip("omegaconf")
    s = fairseq_state()
    ckpt = save_fairseq_checkpoint(tmp_path / "checkpoint_best.pt", s, MODEL_CFG, form=form)
    result = import_fairseq(ckpt, tmp_path / "run", registry)
    assert result.family == "data2vec 1.0 audio" and result.teacher_from_ema and result.unused == []

    pre = load_pretrained(tmp_path / "run", registry)
    cfg = pre.cfg
    assert (cfg.model.dim, cfg.model.depth, cfg.model.heads, cfg.model.ffn_dim) == (D, DEPTH, HEADS, FFN)
    assert cfg.encoder.pos_conv_kernel == 5 and cfg.encoder.conv_channels == [16, 16, 24, 24]
    assert cfg.targets.top_k == 2 and cfg.targets.per_layer_norm == "instance"
    if form != "args":  # "${optimization.max_update}" resolved against the checkpoint's own config
        assert cfg.ema.anneal_end_step == 400000

    lengths = torch.tensor([4000, 2890])
    wav = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1))
    sample_pad = torch.arange(4000)[None, :] >= lengths[:, None]
    wav = wav.masked_fill(sample_pad, 0.0)
    with torch.no_grad():
        feats_fs, pad_fs = fs_features(s, wav, sample_pad)
        out_fs, _ = fs_encoder(s, "encoder.", feats_fs, pad_fs)
        out, pad = encoder_states(pre.model, {"source": wav, "padding_mask": sample_pad})
    assert pad_fs is not None and pad_fs.any() and torch.equal(pad, pad_fs)
    assert out.shape == out_fs.shape
    valid = ~pad
    assert (out - out_fs)[valid].abs().max() <= 1e-5
    assert (out - out_fs).abs().max() <= 1e-5  # padded frames are computed the same way too

    # the teacher is fairseq's EMA copy: its targets equal fairseq's (unpadded batch: fairseq's
    # instance norm runs over the padded frames too, d2v's over the valid ones)
    from d2v_core.model.ema_teacher import EMATeacher

    ck = load_checkpoint(tmp_path / "run")
    teacher = EMATeacher(pre.model.teacher_scope(), cfg.ema)
    teacher.load_state_dict(ck["teacher"])
    with torch.no_grad():
        batch = {"source": wav[:, :2890], "padding_mask": None}
        y = pre.model.targets(teacher.model, batch, pre.model.encoder.embed(batch))
        y_fs = fs_targets(s, fs_features(s, wav[:, :2890], None)[0], None, 2)
    assert (y - y_fs).abs().max() <= 1e-5
    # the student's regression head is fairseq's final_proj
    assert torch.equal(pre.model.head.weight, s["final_proj.weight"])


def test_missing_key_is_named_and_nothing_is_written(tmp_path, registry):
    s = fairseq_state()
    del s["encoder.layers.1.self_attn.k_proj.weight"]
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", s, MODEL_CFG, form="dict")
    with pytest.raises(CheckpointError, match=r"missing key 'encoder\.layers\.1\.self_attn\.k_proj\.weight'"):
        import_fairseq(ckpt, tmp_path / "run", registry)
    assert not (tmp_path / "run").exists()


def test_unused_keys_are_listed(tmp_path, registry):
    s = fairseq_state()
    s["encoder.layers.0.self_attn.bias_k"] = torch.zeros(1, 1, D)
    s["quantizer.vars"] = torch.zeros(3)
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", s, MODEL_CFG, form="dict")
    result = import_fairseq(ckpt, tmp_path / "run", registry)
    assert result.unused == ["encoder.layers.0.self_attn.bias_k", "quantizer.vars"]
    assert load_checkpoint(tmp_path / "run")["meta"]["unused_keys"] == result.unused


def test_without_ema_the_teacher_is_the_student(tmp_path, registry):
    # fp16 weights, as fairseq saves models trained with common.fp16: read and widened to fp32
    s = {k: v.half() for k, v in fairseq_state().items() if not k.startswith("_ema.")}
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", s, MODEL_CFG, form="dict")
    assert not import_fairseq(ckpt, tmp_path / "run", registry).teacher_from_ema
    ck = load_checkpoint(tmp_path / "run")
    assert ck["student"]["transformer.layers.0.fc1.weight"].dtype == torch.float32
    assert torch.equal(ck["teacher"]["transformer.layers.0.fc1.weight"], s["encoder.layers.0.fc1.weight"].float())


@pytest.mark.parametrize("change, words", [
    ({"extractor_mode": "default"}, "extractor_mode='default'"),
    ({"layer_norm_first": True}, "layer_norm_first=true"),
    ({"pos_conv_depth": 1}, "pos_conv_depth=1"),
])
def test_variants_d2v_cannot_compute_are_refused(tmp_path, registry, change, words):
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", fairseq_state(), {**MODEL_CFG, **change}, form="dict")
    with pytest.raises(CheckpointError, match=words):
        import_fairseq(ckpt, tmp_path / "run", registry)
    assert not (tmp_path / "run").exists()


# ---- through the CLI -------------------------------------------------------------------------

DEMO = Path(__import__("d2v_plugin_audio").__file__).parent / "demo"
QUIET = ["--set", "runtime.progress=false", "--set", "runtime.tensorboard=false"]


@pytest.fixture(scope="module")
def fixture_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("fairseq_audio")
    s = fairseq_state()
    s["quantizer.vars"] = torch.zeros(3)  # a key d2v does not use
    return root, s, save_fairseq_checkpoint(root / "audio_base_ls.pt", s, MODEL_CFG, form="dict")


@pytest.fixture(scope="module")
def imported(fixture_ckpt):
    root, _, ckpt = fixture_ckpt
    # modality read from the checkpoint (no --modality); the tiny preset's training settings
    code, _, err = run_cli(["import", "--from-fairseq", str(ckpt), "--out", str(root / "run"), "--preset", "tiny"])
    assert not code, err
    return root / "run"


def test_import_reports_unused_keys_in_one_line(fixture_ckpt):
    root, _, ckpt = fixture_ckpt
    code, out, err = run_cli(["import", "--from-fairseq", str(ckpt), "--out", str(root / "run_b")])
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "data2vec 1.0 audio" in lines[0] and "1 unused key(s): quantizer.vars" in lines[0]
    assert "teacher from its EMA" in lines[0]
    code, _, err = run_cli(["import", "--from-fairseq", str(ckpt), "--out", str(root / "run_b")])
    assert code != 0 and "already holds checkpoints" in err  # never overwrites a run


def test_wrong_modality_is_refused(fixture_ckpt, tmp_path):
    _, _, ckpt = fixture_ckpt
    code, _, err = run_cli(["import", "--from-fairseq", str(ckpt), "--modality", "image", "--out", str(tmp_path / "r")])
    assert code != 0 and "no installed importer for modality 'image'" in err and "data2vec_audio" in err
    assert not (tmp_path / "r").exists()


def test_export_to_transformers_gives_fairseq_outputs(fixture_ckpt, imported, tmp_path):
    transformers = pytest.importorskip("transformers")
    _, s, _ = fixture_ckpt
    code, _, err = run_cli(["export", str(imported), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert code == 0, err
    hf = transformers.Data2VecAudioModel.from_pretrained(str(tmp_path / "hf")).eval()
    lengths = torch.tensor([4000, 3100])
    wav = torch.randn(2, 4000, generator=torch.Generator().manual_seed(5))
    pad = torch.arange(4000)[None, :] >= lengths[:, None]
    wav = wav.masked_fill(pad, 0.0)
    with torch.no_grad():
        theirs = hf(wav, attention_mask=(~pad).long()).last_hidden_state
        feats, frame_pad = fs_features(s, wav, pad)
        ours, _ = fs_encoder(s, "encoder.", feats, frame_pad)
    valid = ~frame_pad
    assert theirs.shape == ours.shape
    assert (theirs - ours)[valid].abs().max() <= 1e-5


def test_embed_and_probe_an_imported_run(imported, tmp_path):
    clips = sorted(DEMO.glob("*.flac"))[:8]
    code, _, err = run_cli(["embed", str(imported), str(DEMO), "--out", str(tmp_path / "e.npy")])
    assert code == 0, err
    manifest = tmp_path / "labels.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        w.writerows([str(c), i % 2, f"g{i % 4}"] for i, c in enumerate(clips))
    report = tmp_path / "probe.json"
    code, _, err = run_cli(["probe", str(imported), "--train", str(manifest), "--split-by", "group", "--json", str(report)])
    assert code == 0, err
    assert 0.0 <= json.loads(report.read_text())["pretrained"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_pretraining_continues_from_an_import(imported, tmp_path):
    run = tmp_path / "continued"
    code, _, err = run_cli(["pretrain", "-m", "audio", "--init-from", str(imported), "--max-steps", "2", "--out", str(run),
                            "--set", "data.batch_size=2", *QUIET])
    assert code == 0, err
    start, after = load_checkpoint(imported)["student"], load_checkpoint(run)["student"]
    drift = max((after[k] - start[k]).abs().max().item() for k in start if k.startswith("transformer."))
    assert 0 < drift < 0.02  # moved by two small steps from the imported weights, not re-initialised


def test_a_fine_tuned_ctc_checkpoint_imports_its_pretrained_encoder(tmp_path, registry):
    """fairseq ``wav2vec_ctc`` (wav2vec2_asr.py L208-L215, L369-L480): the data2vec model under
    ``w2v_encoder.w2v_model.`` after ``remove_pretraining_modules`` (no ``final_proj``, no
    ``_ema``), its pretraining config in ``cfg.model.w2v_args``, a CTC head ``w2v_encoder.proj``."""
    s = {k: v for k, v in fairseq_state().items() if not k.startswith(("_ema.", "final_proj."))}
    tuned = {f"w2v_encoder.w2v_model.{k}": v for k, v in s.items()}
    tuned["w2v_encoder.proj.weight"], tuned["w2v_encoder.proj.bias"] = torch.zeros(32, D), torch.zeros(32)
    ctc_cfg = {"_name": "wav2vec_ctc", "w2v_path": "/checkpoint/audio_base_ls.pt", "apply_mask": True, "mask_prob": 0.65,
               "w2v_args": {"model": MODEL_CFG, "task": {"_name": "audio_pretraining", "normalize": False},
                            "optimization": {"max_update": 400000}}}
    ckpt = save_fairseq_checkpoint(tmp_path / "audio_base_ls_960h.pt", tuned, ctc_cfg, form="dict")
    result = import_fairseq(ckpt, tmp_path / "run", registry)
    assert result.family == "data2vec 1.0 audio" and not result.teacher_from_ema
    assert result.unused == ["w2v_encoder.proj.weight", "w2v_encoder.proj.bias"] and result.fresh_modules == ["head"]
    meta = load_checkpoint(tmp_path / "run")["meta"]
    assert meta["fine_tuned_as"] == "wav2vec_ctc" and meta["fresh_modules"] == ["head"]
    pre = load_pretrained(tmp_path / "run", registry)
    assert pre.cfg.ema.anneal_end_step == 400000  # interpolations resolved inside w2v_args
    wav = torch.randn(2, 3000, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out, _ = encoder_states(pre.model, {"source": wav, "padding_mask": None})
        out_fs, _ = fs_encoder(s, "encoder.", fs_features(s, wav, None)[0], None)
    assert (out - out_fs).abs().max() <= 1e-5


def test_a_partly_missing_head_is_an_error(tmp_path, registry):
    s = fairseq_state()
    del s["final_proj.bias"]
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", s, MODEL_CFG, form="dict")
    with pytest.raises(CheckpointError, match=r"missing key 'final_proj\.bias'"):
        import_fairseq(ckpt, tmp_path / "run", registry)
