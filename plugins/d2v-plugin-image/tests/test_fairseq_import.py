"""Import of fairseq data2vec_vision (BEiT-layout) checkpoints, against a transcription of its forward.

The fixture holds the tensors of ``examples/data2vec/models/data2vec_vision.py``
``Data2VecVisionModel`` at a small size, named and shaped as its modules create them: L113-L134
(``patch_embed.conv`` Conv2d(3, D, p, p), ``cls_emb`` / ``mask_emb`` (1, 1, D), ``encoder``,
``final_proj``), L523-L589 (``RelativePositionBias``: a ``((2h-1)(2w-1) + 3, heads)`` table and
its ``relative_position_index`` buffer), L594-L650 (``Block``: ``norm1``, ``attn.qkv.weight``
(no bias), ``attn.q_bias``, ``attn.v_bias``, ``attn.proj``, ``norm2``, ``mlp.0``, ``mlp.2``,
``gamma_1``, ``gamma_2``), L653-L716 (``TransformerEncoder``: ``rel_pos_bias``, ``blocks``,
``norm``), L170-L175 (``_ema``: with ``ema_transformer_only`` the encoder's copy).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d2v_core.errors import CheckpointError
from d2v_core.inference.embed import encoder_states
from d2v_core.inference.pretrained import load_pretrained
from d2v_core.interop.fairseq_fixtures import save_fairseq_checkpoint
from d2v_core.interop.fairseq_import import import_fairseq
from d2v_core.model.ema_teacher import EMATeacher
from d2v_core.plugin_loader import get_registry
from d2v_core.train.checkpoint import load_checkpoint

D, DEPTH, HEADS, MLP, IMG, PATCH = 32, 3, 4, 4, 32, 8
GRID = IMG // PATCH
MODEL_CFG = {
    "_name": "data2vec_vision", "layer_scale_init_value": 0.1, "num_mask_patches": 10, "min_mask_patches_per_block": 2,
    "max_mask_patches_per_block": 16, "image_size": IMG, "patch_size": PATCH, "in_channels": 3,
    "shared_rel_pos_bias": True, "drop_path": 0.1, "attention_dropout": 0.0, "depth": DEPTH, "embed_dim": D,
    "num_heads": HEADS, "mlp_ratio": MLP, "loss_beta": 2.0, "loss_scale": None, "average_top_k_layers": 2,
    "end_of_block_targets": True, "layer_norm_target_layer": False, "instance_norm_target_layer": True,
    "layer_norm_targets": True, "ema_decay": 0.9998, "ema_end_decay": 0.9998, "ema_transformer_only": True,
}


def relative_position_index(h: int, w: int) -> torch.Tensor:
    """data2vec_vision.py L533-L557, transcribed."""
    n = (2 * h - 1) * (2 * w - 1) + 3
    coords = torch.stack(torch.meshgrid([torch.arange(h), torch.arange(w)], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += h - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    idx = torch.zeros((h * w + 1,) * 2, dtype=rel.dtype)
    idx[1:, 1:] = rel.sum(-1)
    idx[0, 0:], idx[0:, 0], idx[0, 0] = n - 3, n - 2, n - 1
    return idx


def fairseq_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    s = {"patch_embed.conv.weight": r(D, 3, PATCH, PATCH), "patch_embed.conv.bias": r(D), "cls_emb": r(1, 1, D),
         "mask_emb": r(1, 1, D), "final_proj.weight": r(D, D), "final_proj.bias": r(D)}
    enc = {"rel_pos_bias.relative_position_bias_table": r((2 * GRID - 1) ** 2 + 3, HEADS, scale=0.5),
           "rel_pos_bias.relative_position_index": relative_position_index(GRID, GRID),
           "norm.weight": 1 + r(D), "norm.bias": r(D)}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        enc[p + "norm1.weight"], enc[p + "norm1.bias"] = 1 + r(D), r(D)
        enc[p + "attn.qkv.weight"], enc[p + "attn.q_bias"], enc[p + "attn.v_bias"] = r(3 * D, D), r(D), r(D)
        enc[p + "attn.proj.weight"], enc[p + "attn.proj.bias"] = r(D, D), r(D)
        enc[p + "norm2.weight"], enc[p + "norm2.bias"] = 1 + r(D), r(D)
        enc[p + "mlp.0.weight"], enc[p + "mlp.0.bias"] = r(MLP * D, D), r(MLP * D)
        enc[p + "mlp.2.weight"], enc[p + "mlp.2.bias"] = r(D, MLP * D), r(D)
        enc[p + "gamma_1"], enc[p + "gamma_2"] = 0.5 + r(D), 0.5 + r(D)
    s.update({f"encoder.{k}": v for k, v in enc.items()})
    s.update({f"_ema.{k}": (v if k.endswith("index") else v + r(*v.shape, scale=0.05)) for k, v in enc.items()})
    return s


def fs_encoder(s: dict, prefix: str, img: torch.Tensor, results: bool = False, eps: float = 1e-5, embed: str = ""):
    """``forward`` L240-L262 up to the encoder (patches, CLS) and ``TransformerEncoder`` L718-L727:
    the shared bias (L559-L572), then each ``Block`` (L652-L663, with gamma) and ``norm``; CLS dropped."""
    x = F.conv2d(img, s[embed + "patch_embed.conv.weight"], s[embed + "patch_embed.conv.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([s[embed + "cls_emb"].expand(x.shape[0], -1, -1), x], dim=1)
    n = GRID * GRID + 1
    bias = s[prefix + "rel_pos_bias.relative_position_bias_table"][s[prefix + "rel_pos_bias.relative_position_index"].view(-1)]
    bias = bias.view(n, n, -1).permute(2, 0, 1)
    B, N, _ = x.shape
    hd = D // HEADS
    ends = []
    for i in range(DEPTH):
        p = f"{prefix}blocks.{i}."
        h = F.layer_norm(x, (D,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps)
        qkv_bias = torch.cat([s[p + "attn.q_bias"], torch.zeros(D), s[p + "attn.v_bias"]])
        qkv = F.linear(h, s[p + "attn.qkv.weight"], qkv_bias).reshape(B, N, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] * hd ** -0.5) @ qkv[1].transpose(-2, -1) + bias).softmax(-1)
        a = F.linear((attn @ qkv[2]).transpose(1, 2).reshape(B, N, -1), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        x = x + s[p + "gamma_1"] * a
        m = F.linear(F.gelu(F.linear(F.layer_norm(x, (D,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps),
                                     s[p + "mlp.0.weight"], s[p + "mlp.0.bias"])), s[p + "mlp.2.weight"], s[p + "mlp.2.bias"])
        x = x + s[p + "gamma_2"] * m
        ends.append(x[:, 1:])
    if results:
        return ends
    return F.layer_norm(x, (D,), s[prefix + "norm.weight"], s[prefix + "norm.bias"], eps)[:, 1:]


@pytest.fixture
def registry():
    return get_registry()


@pytest.mark.parametrize("form", ["dictconfig", "dict"])
def test_import_matches_fairseq_forward(tmp_path, registry, form):
    if form == "dictconfig":
        pytest.importorskip("omegaconf")
    s = fairseq_state()
    ckpt = save_fairseq_checkpoint(tmp_path / "vision_base.pt", s, MODEL_CFG, form=form, task_cfg={"_name": "image_pretraining"})
    result = import_fairseq(ckpt, tmp_path / "run", registry)
    assert result.family == "data2vec_vision (BEiT)" and result.teacher_from_ema
    assert result.unused == ["encoder.rel_pos_bias.relative_position_index", "_ema.rel_pos_bias.relative_position_index"]
    pre = load_pretrained(tmp_path / "run", registry)
    cfg = pre.cfg
    assert (cfg.model.layout, cfg.model.qkv_bias, cfg.model.final_norm, cfg.model.layer_scale_init) == ("pre_ln", "qv", True, 0.1)
    assert cfg.targets.source == "block" and cfg.targets.post_norm == "layer" and cfg.masking.options.mask_ratio == 10 / 16

    img = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = encoder_states(pre.model, {"image": img})[0][:, 1:]  # CLS dropped
        theirs = fs_encoder(s, "encoder.", img)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-5
    assert torch.equal(pre.model.encoder.mask_embedding, s["mask_emb"].reshape(-1))

    # teacher: fairseq's EMA encoder on the (student's) patches + CLS, block outputs, instance norm
    # per layer, averaged, then layer norm (data2vec_vision.py L264-L305)
    teacher = EMATeacher(pre.model.teacher_scope(), cfg.ema)
    teacher.load_state_dict(load_checkpoint(tmp_path / "run")["teacher"])
    with torch.no_grad():
        batch = {"image": img}
        y = pre.model.targets(teacher.model, batch, pre.model.encoder.embed(batch))
        ends = fs_encoder(s, "_ema.", img, results=True)[-2:]
        y_fs = F.layer_norm(sum(F.instance_norm(t.transpose(1, 2)).transpose(1, 2) for t in ends) / 2, (D,))
    assert (y - y_fs).abs().max() <= 1e-5


def test_per_layer_position_tables_are_refused(tmp_path, registry):
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", fairseq_state(), {**MODEL_CFG, "shared_rel_pos_bias": False}, form="dict")
    with pytest.raises(CheckpointError, match="shared_rel_pos_bias=false"):
        import_fairseq(ckpt, tmp_path / "run", registry)
    assert not (tmp_path / "run").exists()


# ---- data2vec 2.0 image (data2vec_multi) ------------------------------------------------------
#
# Tensors of Data2VecMultiModel with one IMAGE modality encoder: modalities/images.py L60-L125
# (local_encoder = timm PatchEmbed ``proj``; fixed_positional_encoder.positions (1, N, D), MAE's
# table from mae.py L370-L417; context_encoder = BlockEncoder(norm, prenet AltBlocks);
# Decoder2d), base.py L102-L110 (extra_tokens (1, 1, D)), modules.py L181-L229 (Decoder2d:
# blocks.{j}.0 Conv2d, proj), L258-L323 (AltBlock); data2vec2.py L298-L327 (ema_encoder_only false,
# ema_local_encoder true: _ema is the model without its decoder).

import numpy as np  # noqa: E402

IE = "modality_encoders.IMAGE."
PRENET, MAIN, DEC_DIM, DEC_K, DEC_LAYERS, DEC_GROUPS = 2, 2, 16, 3, 2, 4
V2_CFG = {
    "_name": "data2vec_multi", "depth": MAIN, "embed_dim": D, "num_heads": HEADS, "mlp_ratio": 4.0, "norm_eps": 1e-6,
    "clone_batch": 16, "ema_decay": 0.9998, "ema_end_decay": 0.99999, "ema_anneal_end_step": 100000,
    "instance_norm_target_layer": True, "layer_norm_target_layer": False, "layer_norm_targets": True,
    "end_of_block_targets": False, "average_top_k_layers": MAIN, "encoder_dropout": 0.0, "post_mlp_drop": 0.0,
    "attention_dropout": 0.0, "activation_dropout": 0.0, "supported_modality": "IMAGE", "cls_loss": 0.01,
    "ema_encoder_only": False,
    "modalities": {"image": {"type": "IMAGE", "input_size": IMG, "patch_size": PATCH, "embed_dim": D, "in_chans": 3,
                             "inverse_mask": True, "mask_prob": 0.8, "mask_prob_adjust": 0.07, "mask_length": 3,
                             "mask_noise_std": 0.01, "prenet_depth": PRENET, "ema_local_encoder": True,
                             "num_extra_tokens": 1, "init_extra_token_zero": False, "use_alibi_encoder": False,
                             "fixed_positions": True,
                             "decoder": {"decoder_dim": DEC_DIM, "decoder_groups": DEC_GROUPS, "decoder_kernel": DEC_K,
                                         "decoder_layers": DEC_LAYERS, "input_dropout": 0.0}}},
}


def mae_table(dim: int, side: int) -> np.ndarray:
    """mae.py ``get_2d_sincos_pos_embed`` L370-L417, transcribed (numpy, as fairseq computes it)."""
    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)), axis=0)
    grid = grid.reshape([2, 1, side, side])
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def alt_blocks(r, n: int) -> dict:  # noqa: ANN001
    out = {}
    for i in range(n):
        p = f"{i}."
        out[p + "norm1.weight"], out[p + "norm1.bias"] = 1 + r(D), r(D)
        out[p + "attn.qkv.weight"], out[p + "attn.qkv.bias"] = r(3 * D, D), r(3 * D)
        out[p + "attn.proj.weight"], out[p + "attn.proj.bias"] = r(D, D), r(D)
        out[p + "norm2.weight"], out[p + "norm2.bias"] = 1 + r(D), r(D)
        out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = r(4 * D, D), r(4 * D)
        out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = r(D, 4 * D), r(D)
    return out


def v2_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    shared = {IE + "local_encoder.proj.weight": r(D, 3, PATCH, PATCH), IE + "local_encoder.proj.bias": r(D),
              IE + "fixed_positional_encoder.positions": torch.from_numpy(mae_table(D, GRID)).float().unsqueeze(0),
              IE + "extra_tokens": r(1, 1, D, scale=1.0),
              IE + "context_encoder.norm.weight": 1 + r(D), IE + "context_encoder.norm.bias": r(D)}
    shared.update({IE + "context_encoder.blocks." + k: v for k, v in alt_blocks(r, PRENET).items()})
    shared.update({"blocks." + k: v for k, v in alt_blocks(r, MAIN).items()})
    s = dict(shared)
    for j in range(DEC_LAYERS):
        s[IE + f"decoder.blocks.{j}.0.weight"] = r(DEC_DIM, (D if j == 0 else DEC_DIM) // DEC_GROUPS, DEC_K, DEC_K)
        s[IE + f"decoder.blocks.{j}.0.bias"] = r(DEC_DIM)
    s[IE + "decoder.proj.weight"], s[IE + "decoder.proj.bias"] = r(D, DEC_DIM), r(D)
    s.update({f"_ema.{k}": (v if k.endswith("positions") else v + r(*v.shape, scale=0.05)) for k, v in shared.items()})
    return s


def alt_block(s: dict, p: str, x: torch.Tensor):
    """AltBlock post-LN (modules.py L314-L321) with AltAttention (L354-L395), eps norm_eps 1e-6."""
    B, N, _ = x.shape
    hd = D // HEADS
    qkv = F.linear(x, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"]).reshape(B, N, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
    attn = ((qkv[0] * hd ** -0.5) @ qkv[1].transpose(-2, -1)).softmax(-1)
    a = F.linear((attn @ qkv[2]).transpose(1, 2).reshape(B, N, D), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
    r = x = F.layer_norm(x + a, (D,), s[p + "norm1.weight"], s[p + "norm1.bias"], 1e-6)
    h = F.linear(F.gelu(F.linear(x, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])), s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
    return F.layer_norm(r + h, (D,), s[p + "norm2.weight"], s[p + "norm2.bias"], 1e-6), h


def fs_v2(s: dict, prefix: str, img: torch.Tensor):
    """``local_features`` + ``contextualized_features`` (base.py L190-L330, mask=False): patches +
    fixed positions, the CLS prepended, the context encoder (norm, prenet blocks); then the shared
    blocks (data2vec2.py L436-L463). Returns the output without CLS and the shared blocks' FFN outputs."""
    p = prefix + IE
    x = F.conv2d(img, s[p + "local_encoder.proj.weight"], s[p + "local_encoder.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = x + s[p + "fixed_positional_encoder.positions"]
    x = torch.cat([s[p + "extra_tokens"].expand(x.shape[0], -1, -1), x], dim=1)
    x = F.layer_norm(x, (D,), s[p + "context_encoder.norm.weight"], s[p + "context_encoder.norm.bias"], 1e-6)
    for i in range(PRENET):
        x, _ = alt_block(s, f"{p}context_encoder.blocks.{i}.", x)
    results = []
    for i in range(MAIN):
        x, h = alt_block(s, f"{prefix}blocks.{i}.", x)
        results.append(h[:, 1:])
    return x[:, 1:], results


def test_v2_import_matches_fairseq_forward(tmp_path, registry):
    pytest.importorskip("d2v_plugin_maskers.plugin", reason="d2v-plugin-maskers provides inverse-block (the v2-base preset)")
    s = v2_state()
    ckpt = save_fairseq_checkpoint(tmp_path / "image_base_v2.pt", s, V2_CFG, form="dict", task_cfg={"_name": "mae_image_pretraining"})
    result = import_fairseq(ckpt, tmp_path / "run", registry)
    assert result.family == "data2vec 2.0 image" and result.teacher_from_ema and result.unused == []
    pre = load_pretrained(tmp_path / "run", registry)
    cfg = pre.cfg
    assert cfg.model.depth == PRENET + MAIN and cfg.encoder.position == "sincos-mae" and cfg.loss.cls_weight == 0.01
    assert cfg.masking.name == "inverse-block" and cfg.masking.clone_batch == 16 and cfg.decoder.name == "conv2d"
    img = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = encoder_states(pre.model, {"image": img})[0][:, 1:]  # CLS dropped
        theirs, _ = fs_v2(s, "", img)
    assert (ours - theirs).abs().max() <= 1e-5

    x = torch.randn(2, GRID * GRID, D)  # Decoder2d (modules.py L215-L229), residual from the second block on
    h = x.transpose(1, 2).reshape(2, D, GRID, GRID)
    for j in range(DEC_LAYERS):
        y = F.conv2d(h, s[IE + f"decoder.blocks.{j}.0.weight"], s[IE + f"decoder.blocks.{j}.0.bias"], padding=DEC_K // 2,
                     groups=DEC_GROUPS)
        y = F.gelu(F.layer_norm(y.transpose(-3, -1), (DEC_DIM,)).transpose(-3, -1))
        h = y + h if y.shape == h.shape else y
    dec_fs = F.linear(h.reshape(2, DEC_DIM, -1).transpose(1, 2), s[IE + "decoder.proj.weight"], s[IE + "decoder.proj.bias"])
    with torch.no_grad():
        assert (pre.model.decoder(x, None, (GRID, GRID)) - dec_fs).abs().max() <= 1e-5

    teacher = EMATeacher(pre.model.teacher_scope(), cfg.ema)  # its own local encoder (ema_local_encoder)
    teacher.load_state_dict(load_checkpoint(tmp_path / "run")["teacher"])
    # in float64 up to the targets' fp32 normalisation: instance norm over 16 patches divides by small
    # per-channel stds, which lifts float32 round-off of the whole network above 1e-5 (1.3e-5 seen)
    teacher.model.double()
    pre.model.double()
    img, s = img.double(), {k: v.double() for k, v in s.items()}
    with torch.no_grad():
        batch = {"image": img}
        y = pre.model.targets(teacher.model, batch, pre.model.encoder.embed(batch))
        _, results = fs_v2(s, "_ema.", img)
        y_fs = F.layer_norm(sum(F.instance_norm(t.transpose(1, 2)).transpose(1, 2) for t in results) / MAIN, (D,))
    assert (y.double() - y_fs).abs().max() <= 1e-5


# ---- data2vec_vision's own BEiT scripts ---------------------------------------------------------
#
# facebookresearch/data2vec_vision beit/utils.py save_model L461-L478 ({"model", "model_ema",
# "args", ...}); names from beit/modeling_cyclical.py L60-L118 (patch_embed.proj, cls_token,
# mask_token, rel_pos_bias, blocks, norm, lm_head) and beit/modeling_finetune.py L154-L186
# (Block: norm1, attn.{qkv.weight,q_bias,v_bias,proj}, norm2, mlp.fc1, mlp.fc2, gamma_1/2).
# Its forward_features (modeling_cyclical.py L155-L192) is the computation the fairseq port
# transcribed above does, with LayerNorm eps 1e-6 (L223); the transcription is reused under the
# port's names.

import argparse  # noqa: E402

BEIT_TO_PORT = [("patch_embed.proj.", "patch_embed.conv."), ("cls_token", "cls_emb"), ("mask_token", "mask_emb"),
                ("lm_head.", "final_proj."), ("rel_pos_bias.", "encoder.rel_pos_bias."), ("blocks.", "encoder.blocks."),
                ("norm.", "encoder.norm.")]


def to_beit(name: str) -> str:
    for beit, port in BEIT_TO_PORT:
        if name.startswith(port):
            name = beit + name[len(port):]
            break
    return name.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.2.", ".mlp.fc2.")


def to_port(beit: dict, prefix: str = "") -> dict:
    out = {}
    for name, v in beit.items():
        if not name.startswith(prefix):
            continue
        name = name[len(prefix):].replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.2.")
        for b, port in BEIT_TO_PORT:
            if name.startswith(b):
                name = port + name[len(b):]
                break
        out[name] = v
    return out


def beit_checkpoint(path, seed: int = 0):  # noqa: ANN001, ANN201
    port = fairseq_state(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model = {to_beit(k): v for k, v in port.items() if not k.startswith("_ema.")}
    ema = {k: (v if k.endswith("index") else v + 0.05 * torch.randn(v.shape, generator=g)) for k, v in model.items()}
    args = argparse.Namespace(model="beit_base_patch16_224", input_size=IMG, rel_pos_bias=True, abs_pos_emb=False,
                              layer_scale_init_value=0.1, drop_path=0.25, attn_drop_rate=0.05, layer_results="end",
                              target_layers="[1, 2]", no_target_layer_norm_last=False, post_target_layer_norm=True,
                              l1_beta=2.0, ema_decay=0.9998, num_mask_patches=10, min_mask_patches_per_block=2)
    torch.save({"model": model, "model_ema": ema, "optimizer": {"state": {}, "param_groups": []}, "epoch": 799,
                "scaler": {"scale": 65536.0}, "args": args}, path)
    return model, ema


def test_data2vec_vision_checkpoint_matches_its_forward(tmp_path, registry):
    model, ema = beit_checkpoint(tmp_path / "checkpoint-799.pth")
    result = import_fairseq(tmp_path / "checkpoint-799.pth", tmp_path / "run", registry)
    assert result.family == "data2vec_vision (BEiT scripts)" and result.teacher_from_ema
    # the index buffers (d2v derives them) and the EMA copy of the head (the teacher runs no head)
    assert sorted(result.unused) == ["model_ema.lm_head.bias", "model_ema.lm_head.weight",
                                     "model_ema.rel_pos_bias.relative_position_index", "rel_pos_bias.relative_position_index"]
    pre = load_pretrained(tmp_path / "run", registry)
    cfg = pre.cfg
    assert (cfg.model.norm_eps, cfg.targets.top_k, cfg.targets.per_layer_norm, cfg.targets.post_norm) == (1e-6, 2, "layer", "layer")
    assert cfg.loss.beta == 2.0 and cfg.ema.decay == cfg.ema.end_decay == 0.9998
    img = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(3))
    s = to_port(model)
    with torch.no_grad():
        ours = encoder_states(pre.model, {"image": img})[0][:, 1:]  # CLS dropped
        theirs = fs_encoder(s, "encoder.", img, eps=1e-6)
    assert (ours - theirs).abs().max() <= 1e-5

    # engine_for_cyclical.py L66-L99: the EMA model (its own patch embedding) on the unmasked image,
    # target layers' block outputs, per-layer LN, averaged, then post LN
    teacher = EMATeacher(pre.model.teacher_scope(), cfg.ema)
    teacher.load_state_dict(load_checkpoint(tmp_path / "run")["teacher"])
    t = to_port(ema)
    with torch.no_grad():
        batch = {"image": img}
        y = pre.model.targets(teacher.model, batch, pre.model.encoder.embed(batch))
        ends = fs_encoder(t, "encoder.", img, results=True, eps=1e-6)[1:]
        y_fs = F.layer_norm(sum(F.layer_norm(e, (D,)) for e in ends) / 2, (D,))
    assert (y - y_fs).abs().max() <= 1e-5


def test_data2vec_vision_target_layers_must_be_the_top_k(tmp_path, registry):
    beit_checkpoint(tmp_path / "c.pth")
    ck = torch.load(tmp_path / "c.pth", weights_only=False)
    ck["args"].target_layers = "[0, 2]"
    torch.save(ck, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="target_layers='\\[0, 2\\]'"):
        import_fairseq(tmp_path / "c.pth", tmp_path / "run", registry)


def test_a_fine_tuned_image_classifier_imports_its_pretrained_encoder(tmp_path, registry):
    """``data2vec_image_classification`` (data2vec_image_classification.py L42-L80): the data2vec
    2.0 model as ``self.model`` after ``remove_pretraining_modules`` (no decoder, no ``_ema``), its
    config in ``pretrained_model_args``, plus ``fc_norm`` and ``head``."""
    pytest.importorskip("d2v_plugin_maskers.plugin", reason="d2v-plugin-maskers provides inverse-block (the v2-base preset)")
    s = {k: v for k, v in v2_state().items() if not k.startswith("_ema.") and ".decoder." not in k}
    tuned = {f"model.{k}": v for k, v in s.items()}
    tuned.update({"fc_norm.weight": torch.ones(D), "fc_norm.bias": torch.zeros(D), "head.weight": torch.zeros(10, D),
                  "head.bias": torch.zeros(10)})
    cls_cfg = {"_name": "data2vec_image_classification", "model_path": "/checkpoint/base_imagenet.pt", "num_classes": 10,
               "pretrained_model_args": {"model": V2_CFG, "task": {"_name": "mae_image_pretraining"}}}
    ckpt = save_fairseq_checkpoint(tmp_path / "finetuned.pt", tuned, cls_cfg, form="dict")
    result = import_fairseq(ckpt, tmp_path / "run", registry)
    assert result.family == "data2vec 2.0 image" and result.fresh_modules == ["decoder"] and not result.teacher_from_ema
    assert sorted(result.unused) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    pre = load_pretrained(tmp_path / "run", registry)
    img = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours = encoder_states(pre.model, {"image": img})[0][:, 1:]  # CLS dropped
        theirs, _ = fs_v2(s, "", img)
    assert (ours - theirs).abs().max() <= 1e-5


def test_data2vec_vision_import_exports_to_transformers_with_its_outputs(tmp_path, registry):
    transformers = pytest.importorskip("transformers")
    from d2v_core.inference.exchange import export_checkpoint

    model, _ = beit_checkpoint(tmp_path / "c.pth")
    import_fairseq(tmp_path / "c.pth", tmp_path / "run", registry)
    export_checkpoint(tmp_path / "run", "hf", tmp_path / "hf", registry)
    hf = transformers.Data2VecVisionModel.from_pretrained(str(tmp_path / "hf")).eval()
    img = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        theirs = hf(pixel_values=img).last_hidden_state[:, 1:]
        ours = fs_encoder(to_port(model), "encoder.", img, eps=1e-6)
    assert (theirs - ours).abs().max() <= 1e-5
