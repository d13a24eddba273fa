"""``d2v import --from-fairseq`` for fairseq's data2vec_vision (BEiT-layout) image checkpoints.

Module names are those of ``examples/data2vec/models/data2vec_vision.py``:
``Data2VecVisionModel`` (L98-L135: ``patch_embed.conv``, ``cls_emb`` (1, 1, D), ``mask_emb``
(1, 1, D), ``encoder``, ``final_proj``; ``_ema`` L170-L175), ``TransformerEncoder`` (L653-L727:
shared ``rel_pos_bias``, ``blocks``, final ``norm``), ``Block`` (L594-L650: ``norm1``, ``attn``
with ``qkv`` (no bias), ``q_bias``, ``v_bias``, ``proj``; ``norm2``; ``mlp`` =
``Sequential(Linear, GELU, Linear, Dropout)``; ``gamma_1``, ``gamma_2``):

===================================================  =============================================
fairseq                                              d2v
===================================================  =============================================
``patch_embed.conv.*``                               ``encoder.patch_embed.proj.*``
``cls_emb``, ``mask_emb``                            ``encoder.cls_token``, ``encoder.mask_embedding``
``encoder.rel_pos_bias.relative_position_bias_table``  ``encoder.rel_pos_bias.relative_position_bias_table``
``encoder.blocks.{i}.norm1.*`` / ``norm2.*``         ``transformer.layers.{i}.attn_norm.*`` / ``ffn_norm.*``
``encoder.blocks.{i}.attn.{qkv.weight,q_bias,v_bias,proj.*}``  ``transformer.layers.{i}.attn.*`` (same names)
``encoder.blocks.{i}.mlp.{0,2}.*``                   ``transformer.layers.{i}.{fc1,fc2}.*``
``encoder.blocks.{i}.gamma_{1,2}``                   ``transformer.layers.{i}.gamma_{1,2}``
``encoder.norm.*``                                   ``transformer.norm.*``
``final_proj.*``                                     ``head.*``
``_ema.*`` (the ``TransformerEncoder``'s copy)       the teacher's ``encoder.rel_pos_bias`` / ``transformer.*``
===================================================  =============================================

``relative_position_index`` (a buffer d2v derives from the grid) is listed as unused. Refused:
per-layer relative position tables (``shared_rel_pos_bias: false``) and inputs other than RGB.
The file's ``nn.LayerNorm`` layers use PyTorch's eps 1e-5 (not BEiT's 1e-6); the import keeps it.
"""

from __future__ import annotations

from typing import Any, Sequence

from d2v_core import CheckpointError, FairseqCheckpoint, FairseqImporter, Rename, rebase

RULES: tuple = (
    Rename("patch_embed.conv.{kind}", "encoder.patch_embed.proj.{kind}"),
    Rename("cls_emb", "encoder.cls_token"),
    Rename("mask_emb", "encoder.mask_embedding", transform=lambda t: t.reshape(-1)),
    Rename("encoder.rel_pos_bias.relative_position_bias_table", "encoder.rel_pos_bias.relative_position_bias_table"),
    Rename("encoder.blocks.{i}.norm1.{kind}", "transformer.layers.{i}.attn_norm.{kind}"),
    Rename("encoder.blocks.{i}.attn.qkv.weight", "transformer.layers.{i}.attn.qkv.weight"),
    Rename("encoder.blocks.{i}.attn.q_bias", "transformer.layers.{i}.attn.q_bias"),
    Rename("encoder.blocks.{i}.attn.v_bias", "transformer.layers.{i}.attn.v_bias"),
    Rename("encoder.blocks.{i}.attn.proj.{kind}", "transformer.layers.{i}.attn.proj.{kind}"),
    Rename("encoder.blocks.{i}.norm2.{kind}", "transformer.layers.{i}.ffn_norm.{kind}"),
    Rename("encoder.blocks.{i}.mlp.0.{kind}", "transformer.layers.{i}.fc1.{kind}"),
    Rename("encoder.blocks.{i}.mlp.2.{kind}", "transformer.layers.{i}.fc2.{kind}"),
    Rename("encoder.blocks.{i}.gamma_1", "transformer.layers.{i}.gamma_1"),
    Rename("encoder.blocks.{i}.gamma_2", "transformer.layers.{i}.gamma_2"),
    Rename("encoder.norm.{kind}", "transformer.norm.{kind}"),
    Rename("final_proj.{kind}", "head.{kind}"),
)

#: ``Data2VecVisionConfig`` defaults (data2vec_vision.py L33-L95).
DEFAULTS: dict[str, Any] = {
    "layer_scale_init_value": 1e-4, "num_mask_patches": 75, "min_mask_patches_per_block": 16, "image_size": 224,
    "patch_size": 16, "in_channels": 3, "shared_rel_pos_bias": True, "drop_path": 0.1, "attention_dropout": 0.0,
    "depth": 12, "embed_dim": 768, "num_heads": 12, "mlp_ratio": 4, "loss_beta": 0.0, "loss_scale": None,
    "average_top_k_layers": 8, "end_of_block_targets": True, "layer_norm_target_layer": False,
    "instance_norm_target_layer": False, "batch_norm_target_layer": False, "instance_norm_targets": False,
    "layer_norm_targets": False, "ema_decay": 0.999, "ema_end_decay": 0.9999, "ema_transformer_only": True,
}


def _norm(c: dict[str, Any], layer: bool) -> str:
    if layer:
        if c["batch_norm_target_layer"]:
            raise CheckpointError("batch_norm_target_layer is not supported by d2v (use instance or layer)")
        return "instance" if c["instance_norm_target_layer"] else "layer" if c["layer_norm_target_layer"] else "none"
    return "instance" if c["instance_norm_targets"] else "layer" if c["layer_norm_targets"] else "none"


class ImageFairseqImporter(FairseqImporter):
    """fairseq ``data2vec_vision`` checkpoints (the released data2vec 1.0 image Base/Large)."""

    model_names = ("data2vec_vision",)
    family = "data2vec_vision (BEiT)"

    def run_config(self, ckpt: FairseqCheckpoint) -> dict[str, Any]:
        c = {**DEFAULTS, **{k: v for k, v in ckpt.model_cfg.items() if v is not None or k == "loss_scale"}}
        problems = []
        if not c["shared_rel_pos_bias"]:
            problems.append("shared_rel_pos_bias=false (d2v shares one relative position table across layers)")
        if int(c["in_channels"]) != 3:
            problems.append(f"in_channels={c['in_channels']} (d2v reads RGB images)")
        if problems:
            raise CheckpointError(f"{ckpt.path}: d2v cannot represent this data2vec_vision model: {'; '.join(problems)}")
        dim, size, patch = int(c["embed_dim"]), int(c["image_size"]), int(c["patch_size"])
        scale = c["loss_scale"]
        layer_scale = float(c["layer_scale_init_value"])
        out: dict[str, Any] = {
            "preset": "base",
            "model": {
                "dim": dim, "depth": int(c["depth"]), "heads": int(c["num_heads"]), "ffn_dim": int(dim * float(c["mlp_ratio"])),
                "layout": "pre_ln", "qkv_bias": "qv", "final_norm": True, "norm_eps": 1e-5,
                "layer_scale_init": layer_scale if layer_scale > 0 else None, "drop_path": float(c["drop_path"]),
                "attention_dropout": float(c["attention_dropout"]), "dropout": 0.0, "init": "beit",
            },
            "encoder": {"image_size": size, "patch_size": patch, "position": "relative", "input_norm": False, "init": "beit"},
            "targets": {"top_k": int(c["average_top_k_layers"]), "source": "block" if c["end_of_block_targets"] else "ffn",
                        "per_layer_norm": _norm(c, True), "post_norm": _norm(c, False)},
            "loss": {"beta": float(c["loss_beta"]), "head": "linear",
                     "scale": float(scale) if scale is not None and float(scale) > 0 else "inv_sqrt_dim"},
            "ema": {"decay": float(c["ema_decay"]), "end_decay": float(c["ema_end_decay"])},
            "masking": {"name": "block", "options": {"mask_ratio": int(c["num_mask_patches"]) / (size // patch) ** 2,
                                                      "min_num_patches": int(c["min_mask_patches_per_block"])}},
            "data": {"options": {"image_size": size}},
        }
        if isinstance(c.get("ema_anneal_end_step"), int):
            out["ema"]["anneal_end_step"] = c["ema_anneal_end_step"]
        return out

    def key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        return RULES

    def teacher_key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        if ckpt.model_cfg.get("ema_transformer_only", True):
            return rebase(RULES, "encoder.", "_ema.")
        return rebase(RULES, "", "_ema.")


# ---- data2vec 2.0 (data2vec_multi, supported_modality IMAGE) ---------------------------------
#
# examples/data2vec/models/modalities/images.py ImageEncoder (L44-L160): local_encoder = timm
# PatchEmbed (``proj``), fixed_positional_encoder.positions = MAE's sin-cos table (1, N, D),
# extra_tokens (1, 1, D) (the CLS, base.py L102-L110), context_encoder = BlockEncoder(norm, then
# prenet_depth AltBlocks); decoder = Decoder2d (modules.py L181-L229: blocks.{j}.0 Conv2d, proj).
# d2v runs the prenet blocks and the shared blocks as one stack: prenet block i is d2v layer i,
# shared block i is d2v layer prenet_depth + i.

_IE = "modality_encoders.IMAGE."
V2_IMAGE_DEFAULTS: dict[str, Any] = {"input_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 768,
                                     "fixed_positions": True, "transformer_decoder": False, "prenet_depth": 4,
                                     "num_extra_tokens": 0, "use_alibi_encoder": False, "mask_prob": 0.7,
                                     "mask_length": 5, "mask_prob_adjust": 0.0, "inverse_mask": False,
                                     "mask_noise_std": 0.01, "ema_local_encoder": False, "decoder": {}}
V2_DECODER_DEFAULTS: dict[str, Any] = {"decoder_dim": 384, "decoder_groups": 16, "decoder_kernel": 5, "decoder_layers": 5,
                                       "input_dropout": 0.1, "add_positions_masked": False, "add_positions_all": False,
                                       "decoder_residual": True, "projection_layers": 1}


class ImageV2FairseqImporter(FairseqImporter):
    """fairseq ``data2vec_multi`` checkpoints of images (the released data2vec 2.0 image models)."""

    model_names = ("data2vec_multi",)
    family = "data2vec 2.0 image"

    def accepts(self, ckpt: FairseqCheckpoint) -> bool:
        from d2v_core import supported_modality

        return ckpt.model_name in self.model_names and supported_modality(ckpt.model_cfg) == "IMAGE"

    @staticmethod
    def _image(ckpt: FairseqCheckpoint) -> dict[str, Any]:
        m = {**V2_IMAGE_DEFAULTS, **((ckpt.model_cfg.get("modalities") or {}).get("image") or {})}
        m["decoder"] = {**V2_DECODER_DEFAULTS, **(m.get("decoder") or {})}
        return m

    def run_config(self, ckpt: FairseqCheckpoint) -> dict[str, Any]:
        from d2v_core import multi_config, multi_run_config

        c, m = multi_config(ckpt.model_cfg), self._image(ckpt)
        dec = m["decoder"]
        problems = []
        if int(m["embed_dim"]) != int(c["embed_dim"]):
            problems.append("a patch width other than the model width (an extra projection)")
        if int(m["in_chans"]) != 3:
            problems.append(f"in_chans={m['in_chans']}")
        if not m["fixed_positions"] or m["use_alibi_encoder"]:
            problems.append("no fixed positions, or ALiBi (d2v's 2.0 image encoder adds MAE's sin-cos table)")
        if int(m["num_extra_tokens"]) != 1:
            problems.append(f"num_extra_tokens={m['num_extra_tokens']} (d2v has one CLS token)")
        if m["transformer_decoder"] or dec["add_positions_masked"] or dec["add_positions_all"] or int(dec["projection_layers"]) != 1:
            problems.append("a Transformer decoder, decoder positions or a deeper projection")
        if problems:
            raise CheckpointError(f"{ckpt.path}: d2v cannot represent this data2vec 2.0 image model: {'; '.join(problems)}")
        out = multi_run_config(c, str(ckpt.path))
        prenet = int(m["prenet_depth"])
        out["model"]["depth"] += prenet  # prenet blocks and shared blocks: one stack in d2v
        size, patch = int(m["input_size"]), int(m["patch_size"])
        out.update(
            preset="v2-base",
            encoder={"image_size": size, "patch_size": patch, "position": "sincos-mae", "input_norm": True, "init": "mae"},
            decoder={"name": "conv2d", "mask_noise_std": float(m["mask_noise_std"]),
                     "options": {"channels": int(dec["decoder_dim"]), "kernel": int(dec["decoder_kernel"]),
                                 "groups": int(dec["decoder_groups"]), "layers": int(dec["decoder_layers"]),
                                 "residual": bool(dec["decoder_residual"]), "projection_layers": 1,
                                 "input_dropout": float(dec["input_dropout"])}},
            data={"options": {"image_size": size}},
        )
        out["masking"].update(name="inverse-block" if m["inverse_mask"] else "block")
        if m["inverse_mask"]:
            out["masking"]["options"] = {"mask_prob": float(m["mask_prob"]), "mask_length": int(m["mask_length"]),
                                         "mask_prob_adjust": float(m["mask_prob_adjust"])}
        return out

    def key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        from d2v_core import block_rules

        prenet = int(self._image(ckpt)["prenet_depth"])
        return (
            Rename(_IE + "local_encoder.proj.{kind}", "encoder.patch_embed.proj.{kind}"),
            Rename(_IE + "fixed_positional_encoder.positions", "encoder.pos_embed"),
            Rename(_IE + "extra_tokens", "encoder.cls_token"),
            Rename(_IE + "context_encoder.norm.{kind}", "encoder.input_norm.{kind}"),
            *block_rules(_IE + "context_encoder.blocks.", 0, prenet),
            *block_rules("blocks.", prenet, cfg.model.depth - prenet),
            Rename(_IE + "decoder.blocks.{j}.0.{kind}", "decoder.blocks.{j}.conv.{kind}"),
            Rename(_IE + "decoder.proj.{kind}", "decoder.proj.{kind}"),
        )

    def fresh_keys(self, cfg: Any) -> Sequence[str]:
        return ("encoder.mask_embedding",)  # the sparse student drops masked patches: no mask token

    def teacher_key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        from d2v_core import block_rules

        if ckpt.model_cfg.get("ema_encoder_only", True):  # _ema holds the shared blocks (a ModuleList)
            prenet = int(self._image(ckpt)["prenet_depth"])
            return block_rules("_ema.", prenet, cfg.model.depth - prenet)
        return rebase(list(self.key_map(cfg, ckpt)), "", "_ema.")


# ---- data2vec_vision's own BEiT scripts (the released data2vec 1.0 image checkpoints) ----------
#
# facebookresearch/data2vec_vision beit/utils.py save_model (L461-L478): {"model": state dict,
# "model_ema": timm ModelEmaV2's state dict (the teacher: the whole model), "args": Namespace
# (``model``: "beit_base_patch16_224", ...)}; beit/modeling_cyclical.py (L32-L125:
# patch_embed.proj, cls_token, mask_token, pos_embed (abs positions only), shared rel_pos_bias,
# blocks, norm, lm_head), beit/modeling_finetune.py Block (L154-L186, mlp.fc1 / mlp.fc2).

BEIT_RULES: tuple = (
    Rename("patch_embed.proj.{kind}", "encoder.patch_embed.proj.{kind}"),
    Rename("cls_token", "encoder.cls_token"),
    Rename("mask_token", "encoder.mask_embedding", transform=lambda t: t.reshape(-1)),
    Rename("rel_pos_bias.relative_position_bias_table", "encoder.rel_pos_bias.relative_position_bias_table"),
    Rename("blocks.{i}.norm1.{kind}", "transformer.layers.{i}.attn_norm.{kind}"),
    Rename("blocks.{i}.attn.qkv.weight", "transformer.layers.{i}.attn.qkv.weight"),
    Rename("blocks.{i}.attn.q_bias", "transformer.layers.{i}.attn.q_bias"),
    Rename("blocks.{i}.attn.v_bias", "transformer.layers.{i}.attn.v_bias"),
    Rename("blocks.{i}.attn.proj.{kind}", "transformer.layers.{i}.attn.proj.{kind}"),
    Rename("blocks.{i}.norm2.{kind}", "transformer.layers.{i}.ffn_norm.{kind}"),
    Rename("blocks.{i}.mlp.fc1.{kind}", "transformer.layers.{i}.fc1.{kind}"),
    Rename("blocks.{i}.mlp.fc2.{kind}", "transformer.layers.{i}.fc2.{kind}"),
    Rename("blocks.{i}.gamma_1", "transformer.layers.{i}.gamma_1"),
    Rename("blocks.{i}.gamma_2", "transformer.layers.{i}.gamma_2"),
    Rename("norm.{kind}", "transformer.norm.{kind}"),
    Rename("lm_head.{kind}", "head.{kind}"),
)
#: beit/run_cyclical.py argument defaults for fields an ``args`` may lack.
BEIT_DEFAULTS: dict[str, Any] = {"input_size": 224, "rel_pos_bias": True, "abs_pos_emb": False, "drop_path": 0.1,
                                 "attn_drop_rate": 0.0, "layer_results": "end", "target_layers": "[]",
                                 "no_target_layer_norm_last": False, "target_instance_norm": False,
                                 "target_batch_norm": False, "post_target_instance_norm": False,
                                 "post_target_layer_norm": False, "l1_beta": 0.12, "l2_loss": False,
                                 "ema_decay": 0.9998, "num_mask_patches": 75, "min_mask_patches_per_block": 16}


class VisionBEiTImporter(FairseqImporter):
    """data2vec_vision's BEiT-fork checkpoints (``beit_*_patch16_224`` with the cyclical head)."""

    model_names = ()
    family = "data2vec_vision (BEiT scripts)"

    def accepts(self, ckpt: FairseqCheckpoint) -> bool:
        return ckpt.model_name.startswith("beit_") and "blocks.0.attn.qkv.weight" in ckpt.model

    def run_config(self, ckpt: FairseqCheckpoint) -> dict[str, Any]:
        import ast

        a = {**BEIT_DEFAULTS, **{k: v for k, v in ckpt.model_cfg.items() if v is not None}}
        t = ckpt.model
        problems = []
        if a["abs_pos_emb"] or "pos_embed" in t:
            problems.append("absolute position embeddings (d2v's BEiT encoder has the relative bias only)")
        if "rel_pos_bias.relative_position_bias_table" not in t:
            problems.append("no shared relative position bias (rel_pos_bias false, or per-layer tables)")
        if a["target_batch_norm"] or a["post_target_instance_norm"] or (a["target_instance_norm"] and not a["no_target_layer_norm_last"]):
            problems.append("a target normalisation d2v does not have (batch norm, post instance norm, or instance + layer norm)")
        depth = len({k.split(".")[1] for k in t if k.startswith("blocks.")})
        try:
            layers = sorted(int(i) for i in ast.literal_eval(str(a["target_layers"])))
        except (ValueError, SyntaxError):
            layers = []
        if not layers or layers != list(range(depth - len(layers), depth)):
            problems.append(f"target_layers={a['target_layers']!r} (d2v averages the top K layers)")
        if problems:
            raise CheckpointError(f"{ckpt.path}: d2v cannot represent this data2vec_vision model: {'; '.join(problems)}")
        dim = int(t["cls_token"].shape[-1])
        heads = int(t["rel_pos_bias.relative_position_bias_table"].shape[1])
        patch = int(t["patch_embed.proj.weight"].shape[-1])
        size = int(a["input_size"])
        gamma = t.get("blocks.0.gamma_1")
        out: dict[str, Any] = {
            "preset": "base",
            "model": {
                "dim": dim, "depth": depth, "heads": heads, "ffn_dim": int(t["blocks.0.mlp.fc1.weight"].shape[0]),
                "layout": "pre_ln", "qkv_bias": "qv" if "blocks.0.attn.q_bias" in t else "none", "final_norm": True,
                "norm_eps": 1e-6,  # modeling_cyclical.py L223: partial(nn.LayerNorm, eps=1e-6)
                "layer_scale_init": float(a.get("layer_scale_init_value") or 0.1) if gamma is not None else None,
                "drop_path": float(a["drop_path"]), "attention_dropout": float(a["attn_drop_rate"]), "dropout": 0.0,
                "init": "beit",
            },
            "encoder": {"image_size": size, "patch_size": patch, "position": "relative", "input_norm": False, "init": "beit"},
            "targets": {"top_k": len(layers), "source": "block" if a["layer_results"] == "end" else "ffn",
                        "per_layer_norm": "instance" if a["target_instance_norm"] else "none" if a["no_target_layer_norm_last"] else "layer",
                        "post_norm": "layer" if a["post_target_layer_norm"] else "none"},
            "loss": {"beta": 0.0 if a["l2_loss"] else float(a["l1_beta"]), "scale": "inv_dim", "head": "linear"},
            "ema": {"decay": float(a["ema_decay"]), "end_decay": float(a["ema_decay"]), "anneal_end_step": 0,
                    "teacher_input": "raw"},
            "masking": {"name": "block", "options": {"mask_ratio": int(a["num_mask_patches"]) / (size // patch) ** 2,
                                                      "min_num_patches": int(a["min_mask_patches_per_block"])}},
            "data": {"options": {"image_size": size}},
        }
        return out

    def key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        return BEIT_RULES

    def teacher_key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        return rebase(BEIT_RULES, "", "model_ema.")  # ModelEmaV2 averages the whole model
