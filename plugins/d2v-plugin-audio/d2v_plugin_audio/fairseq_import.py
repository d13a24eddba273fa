"""``d2v import --from-fairseq`` for fairseq's data2vec 1.0 audio (``data2vec_audio``).

Module names are those of ``examples/data2vec/models/data2vec_audio.py`` (``Data2VecAudioModel``)
and ``fairseq/models/wav2vec/wav2vec2.py`` (``ConvFeatureExtractionModel``,
``TransformerEncoder`` with ``pos_conv_depth > 1``, ``TransformerSentenceEncoderLayer``):

==================================================  ================================================
fairseq                                             d2v
==================================================  ================================================
``feature_extractor.conv_layers.{j}.0.*`` (conv)    ``encoder.feature_extractor.conv_layers.{j}.conv.*``
``feature_extractor.conv_layers.{j}.2.1.*`` (LN)    ``encoder.feature_extractor.conv_layers.{j}.layer_norm.*``
``layer_norm.*``, ``post_extract_proj.*``           ``encoder.feature_projection.{layer_norm,projection}.*``
``mask_emb``                                        ``encoder.mask_embedding``
``encoder.pos_conv.{j}.0.*``                        ``encoder.pos_conv_embed.layers.{j}.conv.*``
``encoder.layer_norm.*`` (before the layers)        ``encoder.layer_norm.*``
``encoder.layers.{i}.self_attn.{q,k,v}_proj.*``     ``transformer.layers.{i}.attn.qkv.*`` (rows q, k, v)
``encoder.layers.{i}.self_attn.out_proj.*``         ``transformer.layers.{i}.attn.proj.*``
``encoder.layers.{i}.self_attn_layer_norm.*``       ``transformer.layers.{i}.attn_norm.*``
``encoder.layers.{i}.{fc1,fc2}.*``                  ``transformer.layers.{i}.{fc1,fc2}.*``
``encoder.layers.{i}.final_layer_norm.*``           ``transformer.layers.{i}.ffn_norm.*``
``final_proj.*`` (the regression head)              ``head.*``
``_ema.*`` (the teacher: ``TransformerEncoder``)    the teacher's ``encoder.*`` / ``transformer.*``
==================================================  ================================================

Refused (d2v's audio model cannot compute them): ``extractor_mode`` other than ``layer_norm``
(wav2vec 2.0's group-norm stack), ``layer_norm_first`` (pre-LN), ``pos_conv_depth`` 1 (wav2vec
2.0's weight-normed single conv), activations other than ``gelu`` and non-``transformer`` layers.
"""

from __future__ import annotations

from typing import Any, Sequence

from d2v_core import CheckpointError, FairseqCheckpoint, FairseqImporter, Fuse, Rename, parse_layer_spec, rebase

#: fairseq ``Wav2Vec2Config`` defaults (wav2vec2.py L46-L111, L236-L248) for fields an older
#: checkpoint's ``args`` may lack; hydra-era checkpoints state every field.
W2V2_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_type": "transformer", "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]", "conv_bias": False,
    "conv_pos": 128, "conv_pos_groups": 16, "pos_conv_depth": 1,
    # data2vec_audio.py Data2VecAudioConfig
    "loss_beta": 0.0, "loss_scale": None, "average_top_k_layers": 8, "layer_norm_target_layer": False,
    "instance_norm_target_layer": False, "instance_norm_targets": False, "layer_norm_targets": False,
    "batch_norm_target_layer": False, "group_norm_target_layer": False, "ema_decay": 0.999, "ema_end_decay": 0.9999,
    "mask_prob": 0.65, "mask_length": 10,
}

STUDENT_RULES: tuple = (
    Rename("feature_extractor.conv_layers.{j}.0.{kind}", "encoder.feature_extractor.conv_layers.{j}.conv.{kind}"),
    Rename("feature_extractor.conv_layers.{j}.2.1.{kind}", "encoder.feature_extractor.conv_layers.{j}.layer_norm.{kind}"),
    Rename("layer_norm.{kind}", "encoder.feature_projection.layer_norm.{kind}"),
    Rename("post_extract_proj.{kind}", "encoder.feature_projection.projection.{kind}"),
    Rename("mask_emb", "encoder.mask_embedding"),
    Rename("encoder.pos_conv.{j}.0.{kind}", "encoder.pos_conv_embed.layers.{j}.conv.{kind}"),
    Rename("encoder.layer_norm.{kind}", "encoder.layer_norm.{kind}"),
    Fuse("encoder.layers.{i}.self_attn.{part}_proj.{kind}", "transformer.layers.{i}.attn.qkv.{kind}"),
    Rename("encoder.layers.{i}.self_attn.out_proj.{kind}", "transformer.layers.{i}.attn.proj.{kind}"),
    Rename("encoder.layers.{i}.self_attn_layer_norm.{kind}", "transformer.layers.{i}.attn_norm.{kind}"),
    Rename("encoder.layers.{i}.fc1.{kind}", "transformer.layers.{i}.fc1.{kind}"),
    Rename("encoder.layers.{i}.fc2.{kind}", "transformer.layers.{i}.fc2.{kind}"),
    Rename("encoder.layers.{i}.final_layer_norm.{kind}", "transformer.layers.{i}.ffn_norm.{kind}"),
    Rename("final_proj.{kind}", "head.{kind}"),
)


def _target_norm(c: dict[str, Any], layer: bool) -> str:
    if layer:
        if c["batch_norm_target_layer"] or c["group_norm_target_layer"]:
            raise CheckpointError("batch/group-norm target layers are not supported by d2v (use instance or layer)")
        return "instance" if c["instance_norm_target_layer"] else "layer" if c["layer_norm_target_layer"] else "none"
    return "instance" if c["instance_norm_targets"] else "layer" if c["layer_norm_targets"] else "none"


class AudioFairseqImporter(FairseqImporter):
    """fairseq ``data2vec_audio`` checkpoints (the released data2vec 1.0 audio Base/Large)."""

    model_names = ("data2vec_audio",)
    family = "data2vec 1.0 audio"

    def run_config(self, ckpt: FairseqCheckpoint) -> dict[str, Any]:
        c = {**W2V2_DEFAULTS, **{k: v for k, v in ckpt.model_cfg.items() if v is not None or k == "loss_scale"}}
        problems = []
        if c["extractor_mode"] != "layer_norm":
            problems.append(f"extractor_mode={c['extractor_mode']!r} (d2v's conv stack is the layer_norm one)")
        if c["layer_norm_first"]:
            problems.append("layer_norm_first=true (d2v's audio Transformer is post-LN)")
        if int(c["pos_conv_depth"]) < 2:
            problems.append(f"pos_conv_depth={c['pos_conv_depth']} (d2v has data2vec's conv stack, not wav2vec 2.0's single weight-normed conv)")
        if c["activation_fn"] != "gelu":
            problems.append(f"activation_fn={c['activation_fn']!r} (d2v uses gelu)")
        if c["layer_type"] != "transformer":
            problems.append(f"layer_type={c['layer_type']!r}")
        if problems:
            raise CheckpointError(f"{ckpt.path}: d2v cannot represent this data2vec_audio model: {'; '.join(problems)}")
        layers = parse_layer_spec(str(c["conv_feature_layers"]))
        channels = [int(t[0]) for t in layers]
        depth = int(c["pos_conv_depth"])
        scale = c["loss_scale"]
        out: dict[str, Any] = {
            "preset": "base",
            "model": {
                "dim": int(c["encoder_embed_dim"]), "depth": int(c["encoder_layers"]),
                "heads": int(c["encoder_attention_heads"]), "ffn_dim": int(c["encoder_ffn_embed_dim"]),
                "layout": "post_ln", "qkv_bias": "qkv", "final_norm": False, "layer_scale_init": None,
                "norm_eps": 1e-5, "dropout": float(c["dropout"]), "attention_dropout": float(c["attention_dropout"]),
                "activation_dropout": float(c["activation_dropout"]), "layerdrop": float(c["encoder_layerdrop"]),
            },
            "encoder": {
                "conv_channels": channels[0] if len(set(channels)) == 1 else channels,
                "conv_kernels": [int(t[1]) for t in layers], "conv_strides": [int(t[2]) for t in layers],
                "conv_bias": bool(c["conv_bias"]), "pos_conv_depth": depth,
                "pos_conv_kernel": max(3, int(c["conv_pos"]) // depth),  # wav2vec2.py TransformerEncoder.__init__
                "pos_conv_groups": int(c["conv_pos_groups"]), "alibi": False,
            },
            "targets": {"top_k": int(c["average_top_k_layers"]), "source": "ffn",
                        "per_layer_norm": _target_norm(c, True), "post_norm": _target_norm(c, False)},
            "loss": {"beta": float(c["loss_beta"]), "scale": float(scale) if scale not in (None, 0) and float(scale) > 0 else "inv_sqrt_dim"},
            "ema": {"decay": float(c["ema_decay"]), "end_decay": float(c["ema_end_decay"])},
            "masking": {"name": "span", "options": {"mask_prob": float(c["mask_prob"]), "mask_length": int(c["mask_length"])}},
        }
        if isinstance(c.get("ema_anneal_end_step"), int):
            out["ema"]["anneal_end_step"] = c["ema_anneal_end_step"]
        return out

    def key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        return STUDENT_RULES

    def teacher_key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        # ema_transformer_only (the released models): _ema holds TransformerEncoder's tensors;
        # otherwise the whole model's, under the student's names
        if ckpt.model_cfg.get("ema_transformer_only", True):
            return rebase(STUDENT_RULES, "encoder.", "_ema.")
        return rebase(STUDENT_RULES, "", "_ema.")


# ---- data2vec 2.0 (data2vec_multi, supported_modality AUDIO) ---------------------------------
#
# examples/data2vec/models/modalities/audio.py AudioEncoder (L52-L140): local_encoder (the
# layer_norm conv stack), project_features = Sequential(TransposeLast, LayerNorm(C), Linear(C, D)),
# relative_positional_encoder = Sequential(TransposeLast, depth x Sequential(Conv1d, SamePad,
# TransposeLast, LayerNorm(no affine), TransposeLast, GELU), TransposeLast), context_encoder =
# BlockEncoder(prenet blocks, LayerNorm(D, norm_eps)); base.py ModalitySpecificEncoder L112-L131
# alibi_scale (layers|1, 1, heads|1, 1, 1); modules.py Decoder1d L123-L178.

_AE = "modality_encoders.AUDIO."
#: data2vec 2.0 audio defaults (modalities/audio.py D2vAudioConfig L27-L50, base.py D2vModalityConfig L28-L68).
V2_AUDIO_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "layer_norm", "feature_encoder_spec": W2V2_DEFAULTS["conv_feature_layers"], "conv_pos_width": 95,
    "conv_pos_groups": 16, "conv_pos_depth": 5, "conv_pos_pre_ln": False, "prenet_depth": 4, "prenet_dropout": 0.0,
    "num_extra_tokens": 0, "mask_noise_std": 0.01, "mask_prob": 0.7, "inverse_mask": False, "mask_prob_adjust": 0.0,
    "mask_length": 5, "use_alibi_encoder": False, "alibi_scale": 1.0, "learned_alibi": False,
    "learned_alibi_scale_per_layer": False, "decoder": {},
}
V2_DECODER_DEFAULTS: dict[str, Any] = {"decoder_dim": 384, "decoder_groups": 16, "decoder_kernel": 5, "decoder_layers": 5,
                                       "input_dropout": 0.1, "add_positions_masked": False, "add_positions_all": False,
                                       "decoder_residual": True, "projection_layers": 1, "projection_ratio": 2.0}


def _alibi_scale(t: Any) -> Any:
    """fairseq (1, 1, heads or 1, 1, 1) -> d2v's per-head (1, heads, 1, 1) (a shared scale is
    repeated per head by :meth:`AudioV2FairseqImporter.key_map`)."""
    return t.reshape(1, -1, 1, 1)


def v2_encoder_rules(depth: int, heads: int, projection_layers: int) -> tuple:
    proj = [Rename(_AE + "decoder.proj.{kind}", "decoder.proj.{kind}")] if projection_layers == 1 else \
        [Rename(_AE + "decoder.proj.{n}.{kind}", "decoder.proj.{n}.{kind}")]
    return (
        Rename(_AE + "local_encoder.conv_layers.{j}.0.{kind}", "encoder.feature_extractor.conv_layers.{j}.conv.{kind}"),
        Rename(_AE + "local_encoder.conv_layers.{j}.2.1.{kind}", "encoder.feature_extractor.conv_layers.{j}.layer_norm.{kind}"),
        Rename(_AE + "project_features.1.{kind}", "encoder.feature_projection.layer_norm.{kind}"),
        Rename(_AE + "project_features.2.{kind}", "encoder.feature_projection.projection.{kind}"),
        *[Rename(_AE + f"relative_positional_encoder.{j + 1}.0.{{kind}}", f"encoder.pos_conv_embed.layers.{j}.conv.{{kind}}")
          for j in range(depth)],
        Rename(_AE + "context_encoder.norm.{kind}", "encoder.layer_norm.{kind}"),
        Rename(_AE + "alibi_scale", "encoder.alibi_scale", transform=lambda t: _alibi_scale(t).expand(1, heads, 1, 1).clone()),
        Rename(_AE + "decoder.blocks.{j}.0.{kind}", "decoder.blocks.{j}.conv.{kind}"),
        *proj,
    )


class AudioV2FairseqImporter(FairseqImporter):
    """fairseq ``data2vec_multi`` checkpoints of audio (the released data2vec 2.0 audio Base/Large)."""

    model_names = ("data2vec_multi",)
    family = "data2vec 2.0 audio"

    def accepts(self, ckpt: FairseqCheckpoint) -> bool:
        from d2v_core import supported_modality

        return ckpt.model_name in self.model_names and supported_modality(ckpt.model_cfg) == "AUDIO"

    def _audio(self, ckpt: FairseqCheckpoint) -> dict[str, Any]:
        a = {**V2_AUDIO_DEFAULTS, **((ckpt.model_cfg.get("modalities") or {}).get("audio") or {})}
        a["decoder"] = {**V2_DECODER_DEFAULTS, **(a.get("decoder") or {})}
        return a

    def run_config(self, ckpt: FairseqCheckpoint) -> dict[str, Any]:
        from d2v_core import multi_config, multi_run_config

        c = multi_config(ckpt.model_cfg)
        a, dec = self._audio(ckpt), self._audio(ckpt)["decoder"]
        problems = []
        if a["extractor_mode"] != "layer_norm":
            problems.append(f"modalities.audio.extractor_mode={a['extractor_mode']!r}")
        if int(a["prenet_depth"]) != 0:
            problems.append(f"modalities.audio.prenet_depth={a['prenet_depth']} (d2v has no modality-specific blocks before the shared ones)")
        if int(a["num_extra_tokens"]) != 0:
            problems.append("audio extra tokens")
        if a["conv_pos_pre_ln"]:
            problems.append("conv_pos_pre_ln=true")
        if a["learned_alibi"] or a["learned_alibi_scale_per_layer"]:
            problems.append("learned ALiBi biases or per-layer ALiBi scales")
        if dec["add_positions_masked"] or dec["add_positions_all"]:
            problems.append("decoder positions")
        if problems:
            raise CheckpointError(f"{ckpt.path}: d2v cannot represent this data2vec 2.0 audio model: {'; '.join(problems)}")
        out = multi_run_config(c, str(ckpt.path))
        layers = parse_layer_spec(str(a["feature_encoder_spec"]))
        channels = [int(t[0]) for t in layers]
        depth = int(a["conv_pos_depth"])
        out.update(
            preset="v2-base",
            encoder={
                "conv_channels": channels[0] if len(set(channels)) == 1 else channels,
                "conv_kernels": [int(t[1]) for t in layers], "conv_strides": [int(t[2]) for t in layers],
                "conv_bias": False, "pos_conv_depth": depth, "pos_conv_kernel": max(3, int(a["conv_pos_width"]) // depth),
                "pos_conv_groups": int(a["conv_pos_groups"]), "alibi": bool(a["use_alibi_encoder"]),
                "alibi_scale_init": float(a["alibi_scale"]), "pos_conv_zero_pads": False,
            },
            masking={"name": "block-1d", "clone_batch": int(c["clone_batch"]),
                     "options": {"mask_prob": float(a["mask_prob"]), "mask_length": int(a["mask_length"]),
                                 "mask_prob_adjust": float(a["mask_prob_adjust"])}},
            decoder={"name": "conv1d", "mask_noise_std": float(a["mask_noise_std"]),
                     "options": {"channels": int(dec["decoder_dim"]), "kernel": int(dec["decoder_kernel"]),
                                 "groups": int(dec["decoder_groups"]), "layers": int(dec["decoder_layers"]),
                                 "residual": bool(dec["decoder_residual"]), "projection_layers": int(dec["projection_layers"]),
                                 "projection_ratio": float(dec["projection_ratio"]), "input_dropout": float(dec["input_dropout"])}},
        )
        out["model"]["dropout"] = float(c["encoder_dropout"])
        return out

    def key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        from d2v_core import BLOCK_RULES

        return v2_encoder_rules(cfg.encoder.pos_conv_depth, cfg.model.heads,
                                cfg.decoder.options.projection_layers) + BLOCK_RULES

    def fresh_keys(self, cfg: Any) -> Sequence[str]:
        return ("encoder.mask_embedding",)  # the sparse student has no mask embedding (masked steps are dropped)

    def teacher_key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        from d2v_core import BLOCK_RULES

        # ema_encoder_only: _ema holds the blocks (a ModuleList: "0.norm1.weight"); otherwise the
        # model's copy without decoder and local encoder (data2vec2.py make_target_model L298-L327)
        if ckpt.model_cfg.get("ema_encoder_only", True):
            return rebase(BLOCK_RULES, "blocks.", "_ema.")
        return rebase(list(self.key_map(cfg, ckpt)), "", "_ema.")
