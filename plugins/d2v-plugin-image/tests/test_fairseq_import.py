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


def fs_encoder(s: dict, prefix: str, img: torch.Tensor, results: bool = False):
    """``forward`` L240-L262 up to the encoder (patches, CLS) and ``TransformerEncoder`` L718-L727:
    the shared bias (L559-L572), then each ``Block`` (L652-L663, with gamma) and ``norm``; CLS dropped."""
    x = F.conv2d(img, s["patch_embed.conv.weight"], s["patch_embed.conv.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([s["cls_emb"].expand(x.shape[0], -1, -1), x], dim=1)
    n = GRID * GRID + 1
    bias = s[prefix + "rel_pos_bias.relative_position_bias_table"][s[prefix + "rel_pos_bias.relative_position_index"].view(-1)]
    bias = bias.view(n, n, -1).permute(2, 0, 1)
    B, N, _ = x.shape
    hd = D // HEADS
    ends = []
    for i in range(DEPTH):
        p = f"{prefix}blocks.{i}."
        h = F.layer_norm(x, (D,), s[p + "norm1.weight"], s[p + "norm1.bias"])
        qkv_bias = torch.cat([s[p + "attn.q_bias"], torch.zeros(D), s[p + "attn.v_bias"]])
        qkv = F.linear(h, s[p + "attn.qkv.weight"], qkv_bias).reshape(B, N, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] * hd ** -0.5) @ qkv[1].transpose(-2, -1) + bias).softmax(-1)
        a = F.linear((attn @ qkv[2]).transpose(1, 2).reshape(B, N, -1), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        x = x + s[p + "gamma_1"] * a
        m = F.linear(F.gelu(F.linear(F.layer_norm(x, (D,), s[p + "norm2.weight"], s[p + "norm2.bias"]),
                                     s[p + "mlp.0.weight"], s[p + "mlp.0.bias"])), s[p + "mlp.2.weight"], s[p + "mlp.2.bias"])
        x = x + s[p + "gamma_2"] * m
        ends.append(x[:, 1:])
    if results:
        return ends
    return F.layer_norm(x, (D,), s[prefix + "norm.weight"], s[prefix + "norm.bias"])[:, 1:]


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
    assert cfg.targets.source == "block" and cfg.targets.post_norm == "layer" and cfg.masking.options["mask_ratio"] == 10 / 16

    img = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, _ = pre.model.encode({"image": img})
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
