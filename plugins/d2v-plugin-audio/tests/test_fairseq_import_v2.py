"""Import of fairseq data2vec 2.0 audio checkpoints (``data2vec_multi``), against a transcription
of fairseq's forward, with padding.

The fixture holds the tensors of ``Data2VecMultiModel`` with one AUDIO modality encoder, named
and shaped as its modules create them:

- ``examples/data2vec/models/modalities/audio.py`` L52-L140 (``local_encoder``: the
  layer_norm conv stack, keys ``.0`` conv / ``.2.1`` LayerNorm; ``project_features``:
  ``Sequential(TransposeLast, LayerNorm(C), Linear(C, D))``, keys ``.1`` / ``.2``;
  ``relative_positional_encoder``: ``Sequential(TransposeLast, blocks..., TransposeLast)``, block
  ``j`` at index ``j + 1``, its conv at ``.0``; ``context_encoder``: ``BlockEncoder`` with
  ``norm``; ``decoder``: ``Decoder1d``).
- ``modalities/base.py`` L112-L131: ``alibi_scale`` of shape (1, 1, heads, 1, 1) with
  ``learned_alibi_scale_per_head``.
- ``modalities/modules.py`` L123-L163 (``Decoder1d.blocks.{j}.0`` conv, ``proj``), L258-L323
  (``AltBlock``: ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``).
- ``data2vec2.py`` L298-L327 (``make_target_model``: with ``ema_encoder_only: false`` the
  teacher is the model without decoder and local encoder), L378-L383 (``_ema``).
"""

from __future__ import annotations

import math
import sys
import types
from enum import Enum, auto

import pytest
import torch
import torch.nn.functional as F

from d2v_cli.testing import run_cli
from d2v_core.errors import CheckpointError
from d2v_core.inference.embed import encoder_states
from d2v_core.inference.pretrained import load_pretrained
from d2v_core.interop.fairseq_fixtures import save_fairseq_checkpoint
from d2v_core.interop.fairseq_import import import_fairseq
from d2v_core.model.ema_teacher import EMATeacher
from d2v_core.plugin_loader import get_registry
from d2v_core.train.checkpoint import load_checkpoint

D, DEPTH, HEADS, MLP_RATIO = 32, 3, 4, 2.0
FFN = int(D * MLP_RATIO)
CONV = [(16, 10, 5), (16, 3, 2), (24, 3, 2), (24, 2, 2)]
POS_DEPTH, POS_WIDTH, POS_GROUPS = 2, 10, 4  # kernel max(3, 10 // 2) = 5
DEC_DIM, DEC_K, DEC_GROUPS, DEC_LAYERS = 16, 7, 4, 2
A = "modality_encoders.AUDIO."

MODEL_CFG = {
    "_name": "data2vec_multi", "loss_beta": 0.0, "loss_scale": None, "depth": DEPTH, "embed_dim": D,
    "num_heads": HEADS, "mlp_ratio": MLP_RATIO, "clone_batch": 8, "ema_decay": 0.999, "ema_end_decay": 0.99999,
    "ema_anneal_end_step": 75000, "ema_encoder_only": False, "average_top_k_layers": 2,
    "instance_norm_target_layer": True, "layer_norm_target_layer": False, "layer_norm_targets": False,
    "layerdrop": 0.05, "norm_eps": 1e-5, "norm_affine": True, "layer_norm_first": False, "encoder_dropout": 0.1,
    "post_mlp_drop": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "end_of_block_targets": False,
    "supported_modality": "AUDIO",
    "modalities": {"audio": {
        "type": "AUDIO", "extractor_mode": "layer_norm",
        "feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] + [(24, 3, 2)] + [(24, 2, 2)]",
        "conv_pos_depth": POS_DEPTH, "conv_pos_width": POS_WIDTH, "conv_pos_groups": POS_GROUPS, "conv_pos_pre_ln": False,
        "prenet_depth": 0, "mask_prob": 0.5, "mask_prob_adjust": 0.05, "inverse_mask": False, "mask_length": 5,
        "mask_noise_std": 0.01, "ema_local_encoder": False, "use_alibi_encoder": True, "prenet_layerdrop": 0.05,
        "prenet_dropout": 0.1, "learned_alibi_scale": True, "learned_alibi_scale_per_head": True,
        "learned_alibi_scale_per_layer": False, "alibi_scale": 1.0, "num_alibi_heads": "${model.num_heads}",
        "num_extra_tokens": 0,
        "decoder": {"input_dropout": 0.1, "decoder_dim": DEC_DIM, "decoder_groups": DEC_GROUPS, "decoder_kernel": DEC_K,
                    "decoder_layers": DEC_LAYERS, "decoder_residual": True, "projection_layers": 1,
                    "projection_ratio": 2.0, "add_positions_masked": False, "add_positions_all": False},
    }},
}


def fairseq_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    s: dict[str, torch.Tensor] = {}
    c_in = 1
    for j, (c, k, _) in enumerate(CONV):
        s[A + f"local_encoder.conv_layers.{j}.0.weight"] = r(c, c_in, k, scale=0.5)
        s[A + f"local_encoder.conv_layers.{j}.2.1.weight"], s[A + f"local_encoder.conv_layers.{j}.2.1.bias"] = 1 + r(c), r(c)
        c_in = c
    s[A + "project_features.1.weight"], s[A + "project_features.1.bias"] = 1 + r(c_in), r(c_in)
    s[A + "project_features.2.weight"], s[A + "project_features.2.bias"] = r(D, c_in), r(D)
    shared = {}
    k = max(3, POS_WIDTH // POS_DEPTH)
    for j in range(POS_DEPTH):
        shared[A + f"relative_positional_encoder.{j + 1}.0.weight"] = r(D, D // POS_GROUPS, k)
        shared[A + f"relative_positional_encoder.{j + 1}.0.bias"] = r(D)
    shared[A + "context_encoder.norm.weight"], shared[A + "context_encoder.norm.bias"] = 1 + r(D), r(D)
    shared[A + "alibi_scale"] = torch.tensor([0.5, 1.5, -0.2, 1.0]).view(1, 1, HEADS, 1, 1)  # one clamps to 0
    for i in range(DEPTH):
        p = f"blocks.{i}."
        shared[p + "norm1.weight"], shared[p + "norm1.bias"] = 1 + r(D), r(D)
        shared[p + "attn.qkv.weight"], shared[p + "attn.qkv.bias"] = r(3 * D, D), r(3 * D)
        shared[p + "attn.proj.weight"], shared[p + "attn.proj.bias"] = r(D, D), r(D)
        shared[p + "norm2.weight"], shared[p + "norm2.bias"] = 1 + r(D), r(D)
        shared[p + "mlp.fc1.weight"], shared[p + "mlp.fc1.bias"] = r(FFN, D), r(FFN)
        shared[p + "mlp.fc2.weight"], shared[p + "mlp.fc2.bias"] = r(D, FFN), r(D)
    s.update(shared)
    for j in range(DEC_LAYERS):
        s[A + f"decoder.blocks.{j}.0.weight"] = r(DEC_DIM, (D if j == 0 else DEC_DIM) // DEC_GROUPS, DEC_K)
        s[A + f"decoder.blocks.{j}.0.bias"] = r(DEC_DIM)
    s[A + "decoder.proj.weight"], s[A + "decoder.proj.bias"] = r(D, DEC_DIM), r(D)
    s.update({f"_ema.{k}": v + r(*v.shape, scale=0.05) for k, v in shared.items()})  # make_target_model's copy
    return s


def fs_local(s: dict, wav: torch.Tensor, sample_pad: torch.Tensor | None):
    """``local_features`` (base.py L190-L203) and ``AudioEncoder.convert_padding_mask`` (audio.py L142-L180)."""
    x = wav.unsqueeze(1)
    for j, (c, _, st) in enumerate(CONV):  # the kernel size is the weight's
        x = F.conv1d(x, s[A + f"local_encoder.conv_layers.{j}.0.weight"], stride=st)
        x = F.gelu(F.layer_norm(x.transpose(1, 2), (c,), s[A + f"local_encoder.conv_layers.{j}.2.1.weight"],
                                s[A + f"local_encoder.conv_layers.{j}.2.1.bias"]).transpose(1, 2))
    x = F.layer_norm(x.transpose(1, 2), (CONV[-1][0],), s[A + "project_features.1.weight"], s[A + "project_features.1.bias"])
    x = F.linear(x, s[A + "project_features.2.weight"], s[A + "project_features.2.bias"])
    pad = None
    if sample_pad is not None and sample_pad.any():
        lengths = (1 - sample_pad.long()).sum(-1)
        for _, k, st in CONV:
            lengths = torch.floor((lengths - k) / st + 1).long()
        pad = torch.zeros(x.shape[:2])
        pad[torch.arange(x.shape[0]), lengths - 1] = 1
        pad = (1 - pad.flip([-1]).cumsum(-1).flip([-1])).bool()
    return x, pad


def alibi(T: int) -> torch.Tensor:
    """base.py ``get_alibi`` L539-L577 (dims 1): ``-slope_h * |i - j|``."""
    start = 2 ** (-(2 ** -(math.log2(HEADS) - 3)))
    slopes = torch.tensor([start * start ** i for i in range(HEADS)])
    pos = -(torch.arange(T)[None, :] - torch.arange(T)[:, None]).abs()
    return slopes[:, None, None] * pos[None].float()


def fs_context(s: dict, prefix: str, x: torch.Tensor, pad: torch.Tensor | None):
    """``contextualized_features`` with mask=False (base.py L205-L330): x + pos(x) (pads not
    zeroed), ALiBi scaled by the clamped per-head scale, ``context_encoder`` = norm (no prenet
    blocks); then ``Data2VecMultiModel.forward`` L436-L470: the blocks. Returns (x, layer results)."""
    y = x.transpose(1, 2)
    k = max(3, POS_WIDTH // POS_DEPTH)
    for j in range(POS_DEPTH):
        y = F.conv1d(y, s[prefix + A + f"relative_positional_encoder.{j + 1}.0.weight"],
                     s[prefix + A + f"relative_positional_encoder.{j + 1}.0.bias"], padding=k // 2, groups=POS_GROUPS)
        y = y[:, :, :-1] if k % 2 == 0 else y
        y = F.gelu(F.layer_norm(y.transpose(1, 2), (D,)).transpose(1, 2))
    x = x + y.transpose(1, 2)
    bias = alibi(x.shape[1])[None] * s[prefix + A + "alibi_scale"].clamp_min(0).squeeze(0)
    x = F.layer_norm(x, (D,), s[prefix + A + "context_encoder.norm.weight"], s[prefix + A + "context_encoder.norm.bias"], 1e-5)
    results = []
    B, T, _ = x.shape
    hd = D // HEADS
    for i in range(DEPTH):
        p = f"{prefix}blocks.{i}."
        qkv = F.linear(x, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"]).reshape(B, T, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        q, kk, v = qkv[0] * hd ** -0.5, qkv[1], qkv[2]  # AltAttention L354-L395
        attn = q @ kk.transpose(-2, -1) + bias
        if pad is not None and pad.any():
            attn = attn.masked_fill(pad[:, None, None, :], float("-inf"))
        a = F.linear((attn.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        r = x = F.layer_norm(x + a, (D,), s[p + "norm1.weight"], s[p + "norm1.bias"], 1e-5)  # AltBlock post-LN L314-L321
        h = F.linear(F.gelu(F.linear(x, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])), s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
        x = F.layer_norm(r + h, (D,), s[p + "norm2.weight"], s[p + "norm2.bias"], 1e-5)
        results.append(h)
    return x, results


@pytest.fixture
def registry():
    return get_registry()


def test_import_matches_fairseq_forward_with_padding(tmp_path, registry):
    s = fairseq_state()
    ckpt = save_fairseq_checkpoint(tmp_path / "base_libri.pt", s, MODEL_CFG, form="dict")
    result = import_fairseq(ckpt, tmp_path / "run", registry)
    assert result.family == "data2vec 2.0 audio" and result.teacher_from_ema and result.unused == []
    pre = load_pretrained(tmp_path / "run", registry)
    cfg = pre.cfg
    assert (cfg.model.dim, cfg.model.depth, cfg.model.heads, cfg.model.ffn_dim) == (D, DEPTH, HEADS, FFN)
    assert cfg.encoder.alibi and not cfg.encoder.pos_conv_zero_pads and cfg.masking.clone_batch == 8
    assert cfg.decoder.name == "conv1d" and cfg.decoder.options.channels == DEC_DIM

    lengths = torch.tensor([4000, 2890])
    wav = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1))
    sample_pad = torch.arange(4000)[None, :] >= lengths[:, None]
    wav = wav.masked_fill(sample_pad, 0.0)
    with torch.no_grad():
        feats, pad_fs = fs_local(s, wav, sample_pad)
        theirs, _ = fs_context(s, "", feats, pad_fs)
        ours, pad = encoder_states(pre.model, {"source": wav, "padding_mask": sample_pad})
    assert pad_fs.any() and torch.equal(pad, pad_fs)
    assert (ours - theirs)[~pad].abs().max() <= 1e-5

    # the decoder is fairseq's Decoder1d: conv -> SamePad -> LN(no affine) -> GELU (+ residual), then proj
    x = torch.randn(2, 20, D)
    h = x.transpose(1, 2)
    for j in range(DEC_LAYERS):
        y = F.conv1d(h, s[A + f"decoder.blocks.{j}.0.weight"], s[A + f"decoder.blocks.{j}.0.bias"], padding=DEC_K // 2,
                     groups=DEC_GROUPS)
        y = F.gelu(F.layer_norm(y.transpose(1, 2), (DEC_DIM,)).transpose(1, 2))
        h = y + h if y.shape == h.shape else y  # Decoder1d.add_residual
    dec_fs = F.linear(h.transpose(1, 2), s[A + "decoder.proj.weight"], s[A + "decoder.proj.bias"])
    with torch.no_grad():
        assert (pre.model.decoder(x, None, None) - dec_fs).abs().max() <= 1e-5

    # the teacher is fairseq's EMA copy (its own pos conv, norm, ALiBi scales and blocks)
    teacher = EMATeacher(pre.model.teacher_scope(), cfg.ema)
    teacher.load_state_dict(load_checkpoint(tmp_path / "run")["teacher"])
    with torch.no_grad():
        batch = {"source": wav[:, :2890], "padding_mask": None}
        y = pre.model.targets(teacher.model, batch, pre.model.encoder.embed(batch))
        _, results = fs_context(s, "_ema.", fs_local(s, wav[:, :2890], None)[0], None)
        y_fs = sum(F.instance_norm(t.transpose(1, 2)).transpose(1, 2) for t in results[-2:]) / 2
    assert (y - y_fs).abs().max() <= 1e-5


def test_dictconfig_with_fairseq_modality_enum(tmp_path, registry, monkeypatch):
    pytest.importorskip("omegaconf")
    module = types.ModuleType("examples.data2vec.data.modality")

    class Modality(Enum):  # examples/data2vec/data/modality.py
        AUDIO = auto()
        IMAGE = auto()
        TEXT = auto()

    Modality.__module__, Modality.__qualname__ = module.__name__, "Modality"
    module.Modality = Modality
    for name in ("examples", "examples.data2vec", "examples.data2vec.data"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    cfg = {**MODEL_CFG, "supported_modality": Modality.AUDIO}
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", fairseq_state(), cfg, form="dictconfig")
    assert import_fairseq(ckpt, tmp_path / "run", registry).family == "data2vec 2.0 audio"


def test_prenet_blocks_are_refused(tmp_path, registry):
    cfg = {**MODEL_CFG, "modalities": {"audio": {**MODEL_CFG["modalities"]["audio"], "prenet_depth": 2}}}
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", fairseq_state(), cfg, form="dict")
    with pytest.raises(CheckpointError, match="prenet_depth=2"):
        import_fairseq(ckpt, tmp_path / "run", registry)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_pretraining_continues_from_a_v2_import(tmp_path):
    from pathlib import Path

    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", fairseq_state(), MODEL_CFG, form="dict")
    demo = Path(__import__("d2v_plugin_audio").__file__).parent / "demo"
    for args in (["import", "--from-fairseq", str(ckpt), "--out", str(tmp_path / "run"), "--preset", "v2-tiny"],
                 ["pretrain", "-m", "audio", "--init-from", str(tmp_path / "run"), "--data", str(demo), "--max-steps", "2",
                  "--out", str(tmp_path / "cont"), "--set", "data.batch_size=2", "--set", "masking.clone_batch=2",
                  "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false"]):
        code, _, err = run_cli(args)
        assert not code, err
    start, after = load_checkpoint(tmp_path / "run")["student"], load_checkpoint(tmp_path / "cont")["student"]
    drift = max((after[k] - start[k]).abs().max().item() for k in start if k.startswith("transformer."))
    assert 0 < drift < 0.05


def test_a_v2_import_is_not_exported_to_transformers(tmp_path, registry):
    from d2v_core import check_exportable
    from d2v_core.errors import ExportError

    from d2v_plugin_audio.hf_export import SUPPORTS

    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", fairseq_state(), MODEL_CFG, form="dict")
    import_fairseq(ckpt, tmp_path / "run", registry)
    cfg = load_pretrained(tmp_path / "run", registry).cfg
    with pytest.raises(ExportError, match="encoder.alibi=true.*pos_conv_zero_pads=false"):
        check_exportable(cfg, "Data2VecAudioModel", SUPPORTS)
