"""``d2v import --from-fairseq`` for fairseq's data2vec 1.0 text (``data2vec_text``).

Module names are those of ``examples/data2vec/models/data2vec_text.py`` (``Data2VecTextModel``
holds ``encoder``, a ``Data2VecTextEncoder``: ``sentence_encoder`` = fairseq's
``TransformerEncoder`` built with ``return_fc=True``, ``regression_head``, and the teacher's
``fp32_params`` under ``_ema``) and ``fairseq/models/transformer/transformer_encoder.py`` /
``fairseq/modules/transformer_layer.py`` (``TransformerEncoderLayerBase``):

======================================================  ===========================================
fairseq ``encoder.sentence_encoder.``                   d2v
======================================================  ===========================================
``embed_tokens.weight``                                 ``encoder.embed_tokens.weight``
``embed_positions.weight`` (learned, padding offset)    ``encoder.embed_positions.weight``
``layernorm_embedding.*``                               ``encoder.layernorm_embedding.*``
``layers.{i}.self_attn.{q,k,v}_proj.*``                 ``transformer.layers.{i}.attn.qkv.*``
``layers.{i}.self_attn.out_proj.*``                     ``transformer.layers.{i}.attn.proj.*``
``layers.{i}.self_attn_layer_norm.*``                   ``transformer.layers.{i}.attn_norm.*``
``layers.{i}.{fc1,fc2}.*``                              ``transformer.layers.{i}.{fc1,fc2}.*``
``layers.{i}.final_layer_norm.*``                       ``transformer.layers.{i}.ffn_norm.*``
``encoder.regression_head.{0,2}.*``                     ``head.*`` (``head_layers`` 1: linear, 2: MLP)
``encoder._ema.*`` (the ``sentence_encoder``'s copy)    the teacher's ``encoder.*`` / ``transformer.*``
======================================================  ===========================================

fairseq's ids come from its dictionary (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ...,
``<mask>`` last) and GPT-2 BPE; the checkpoint holds no tokenizer. d2v's text encoder tokenizes
with sentencepiece, so an import needs ``--set encoder.tokenizer=SPM``: a model with d2v's ids
whose size fits the checkpoint's table (``d2v train-tokenizer``). The weights import either way;
the released GPT-2-BPE models cannot tokenize text in d2v.
Refused: pre-LN (``normalize_before``), sinusoidal positions, scaled embeddings, no
embedding LayerNorm, activations other than ``gelu``, regression heads deeper than 2.
"""

from __future__ import annotations

from typing import Any, Sequence

from d2v_core import CheckpointError, ConfigError, FairseqCheckpoint, FairseqImporter, Fuse, Rename, rebase

_SE = "encoder.sentence_encoder."
ENCODER_RULES: tuple = (
    Rename(_SE + "embed_tokens.weight", "encoder.embed_tokens.weight"),
    Rename(_SE + "embed_positions.weight", "encoder.embed_positions.weight"),
    Rename(_SE + "layernorm_embedding.{kind}", "encoder.layernorm_embedding.{kind}"),
    Fuse(_SE + "layers.{i}.self_attn.{part}_proj.{kind}", "transformer.layers.{i}.attn.qkv.{kind}"),
    Rename(_SE + "layers.{i}.self_attn.out_proj.{kind}", "transformer.layers.{i}.attn.proj.{kind}"),
    Rename(_SE + "layers.{i}.self_attn_layer_norm.{kind}", "transformer.layers.{i}.attn_norm.{kind}"),
    Rename(_SE + "layers.{i}.fc1.{kind}", "transformer.layers.{i}.fc1.{kind}"),
    Rename(_SE + "layers.{i}.fc2.{kind}", "transformer.layers.{i}.fc2.{kind}"),
    Rename(_SE + "layers.{i}.final_layer_norm.{kind}", "transformer.layers.{i}.ffn_norm.{kind}"),
)
HEAD_RULES = {
    1: (Rename("encoder.regression_head.0.{kind}", "head.{kind}"),),
    2: (Rename("encoder.regression_head.0.{kind}", "head.0.{kind}"), Rename("encoder.regression_head.2.{kind}", "head.2.{kind}")),
}

#: fairseq ``TransformerConfig`` / ``Data2VecTextConfig`` defaults for fields a config may omit.
DEFAULTS: dict[str, Any] = {
    "activation_fn": "relu", "dropout": 0.1, "attention_dropout": 0.0, "activation_dropout": 0.0,
    "layernorm_embedding": False, "no_scale_embedding": False, "no_token_positional_embeddings": False,
    "max_source_positions": 1024,
}
ENCODER_DEFAULTS: dict[str, Any] = {"embed_dim": 512, "ffn_embed_dim": 2048, "layers": 6, "attention_heads": 8,
                                    "normalize_before": False, "learned_pos": False, "layerdrop": 0.0}


def _target_norm(m: dict[str, Any], layer: bool) -> str:
    if layer:
        if m.get("batch_norm_target_layer"):
            raise CheckpointError("batch_norm_target_layer is not supported by d2v (use instance or layer)")
        return "instance" if m.get("instance_norm_target_layer") else "layer" if m.get("layer_norm_target_layer") else "none"
    return "instance" if m.get("instance_norm_targets") else "layer" if m.get("layer_norm_targets") else "none"


class TextFairseqImporter(FairseqImporter):
    """fairseq ``data2vec_text`` checkpoints (the released data2vec 1.0 text Base)."""

    model_names = ("data2vec_text",)
    family = "data2vec 1.0 text"

    def run_config(self, ckpt: FairseqCheckpoint) -> dict[str, Any]:
        m = ckpt.model_cfg
        t = {**DEFAULTS, **(m.get("transformer") or {})}
        e = {**ENCODER_DEFAULTS, **(t.get("encoder") or {})}
        head_layers = int(m.get("head_layers", 1))
        problems = []
        if e["normalize_before"]:
            problems.append("transformer.encoder.normalize_before=true (d2v's text Transformer is post-LN)")
        if not e["learned_pos"] or t["no_token_positional_embeddings"]:
            problems.append("sinusoidal or no positions (d2v learns a position table)")
        if not t["no_scale_embedding"]:
            problems.append("no_scale_embedding=false (d2v does not scale token embeddings)")
        if not t["layernorm_embedding"]:
            problems.append("layernorm_embedding=false")
        if t["activation_fn"] != "gelu":
            problems.append(f"activation_fn={t['activation_fn']!r} (d2v uses gelu)")
        if head_layers not in HEAD_RULES:
            problems.append(f"head_layers={head_layers} (d2v has linear and 2-layer MLP heads)")
        if problems:
            raise CheckpointError(f"{ckpt.path}: d2v cannot represent this data2vec_text model: {'; '.join(problems)}")
        table = ckpt.model.get(_SE + "embed_positions.weight")
        # rows = max_source_positions + padding_idx + 1 (fairseq/modules/positional_embedding.py)
        max_positions = int(table.shape[0]) - 2 if table is not None else int(t["max_source_positions"])
        scale = m.get("loss_scale")
        task = ckpt.task_cfg
        out: dict[str, Any] = {
            "preset": "base-span",
            "model": {
                "dim": int(e["embed_dim"]), "depth": int(e["layers"]), "heads": int(e["attention_heads"]),
                "ffn_dim": int(e["ffn_embed_dim"]), "layout": "post_ln", "qkv_bias": "qkv", "final_norm": False,
                "layer_scale_init": None, "norm_eps": 1e-5, "dropout": float(t["dropout"]),
                "attention_dropout": float(t["attention_dropout"]), "activation_dropout": float(t["activation_dropout"]),
                "layerdrop": float(e["layerdrop"]),
            },
            "encoder": {"max_positions": max_positions},
            "targets": {"top_k": int(m.get("average_top_k_layers", 8)), "source": "ffn",
                        "per_layer_norm": _target_norm(m, True), "post_norm": _target_norm(m, False)},
            "loss": {"beta": float(m.get("loss_beta", 0.0)), "head": "linear" if head_layers == 1 else "mlp", "head_hidden_mult": 2,
                     "scale": float(scale) if scale is not None and float(scale) > 0 else "inv_sqrt_dim"},
            "ema": {"decay": float(m.get("ema_decay", 0.999)), "end_decay": float(m.get("ema_end_decay", 0.9999))},
            "data": {"options": {"block_size": max_positions}},
        }
        if isinstance(m.get("ema_anneal_end_step"), int):
            out["ema"]["anneal_end_step"] = m["ema_anneal_end_step"]
        if "mask_prob" in task:  # fairseq masked_lm task: span masking when mask_multiple_length > 1
            out["masking"] = {"name": "text-span", "options": {"mask_prob": float(task["mask_prob"]),
                                                                "span_length": int(task.get("mask_multiple_length", 1))}}
            out["encoder"].update(random_token_prob=float(task.get("random_token_prob", 0.1)),
                                  leave_unmasked_prob=float(task.get("leave_unmasked_prob", 0.1)))
        return out

    def validate(self, cfg: Any, ckpt: FairseqCheckpoint) -> None:
        rows = ckpt.model.get(_SE + "embed_tokens.weight")
        n = None if rows is None else int(rows.shape[0])
        if cfg.encoder.tokenizer is None:
            raise ConfigError(
                f"{ckpt.path}: a fairseq text checkpoint holds no tokenizer d2v can use; pass --set encoder.tokenizer=SPM "
                f"(a sentencepiece model with d2v's ids and {n - 1 if n else 'N-1'} pieces, so that <mask> is id {n - 1 if n else 'N-1'})"
            )
        from d2v_plugin_text.tokenizer import load_tokenizer

        size = load_tokenizer(cfg.encoder.tokenizer).vocab_size
        if n is not None and size != n:
            raise ConfigError(f"{ckpt.path}: its token table has {n} rows but encoder.tokenizer gives {size} ids (pieces + <mask>)")

    def key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        return ENCODER_RULES + HEAD_RULES[1 if cfg.loss.head == "linear" else 2]

    def teacher_key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        return rebase(ENCODER_RULES, _SE, "encoder._ema.")


# ---- data2vec 2.0 (data2vec_multi, supported_modality TEXT) ----------------------------------
#
# examples/data2vec/models/modalities/text.py TextEncoder (L35-L100): local_encoder =
# TextLocalEncoder (L118-L161: embed_tokens, embed_positions (learned, padding offset),
# layernorm_embedding, dropout), no project_features, no positional encoders, context_encoder =
# BlockEncoder(prenet blocks, a norm only with prenet blocks); decoder = Decoder1d
# (modalities/modules.py L123-L178: blocks.{j}.0 conv, proj or proj.{0,2,...}).

_TE = "modality_encoders.TEXT."
#: D2vTextConfig / D2vModalityConfig / D2vDecoderConfig defaults (text.py L22-L33, base.py L28-L68, modules.py L20-L32).
V2_TEXT_DEFAULTS: dict[str, Any] = {"max_source_positions": 512, "learned_pos": True, "no_scale_embedding": True,
                                    "layernorm_embedding": True, "no_token_positional_embeddings": False,
                                    "prenet_depth": 4, "num_extra_tokens": 0, "use_alibi_encoder": False,
                                    "mask_prob": 0.7, "mask_noise_std": 0.01, "decoder": {}}
V2_DECODER_DEFAULTS: dict[str, Any] = {"decoder_dim": 384, "decoder_groups": 16, "decoder_kernel": 5, "decoder_layers": 5,
                                       "input_dropout": 0.1, "add_positions_masked": False, "add_positions_all": False,
                                       "decoder_residual": True, "projection_layers": 1, "projection_ratio": 2.0}


class TextV2FairseqImporter(TextFairseqImporter):
    """fairseq ``data2vec_multi`` checkpoints of text (the released data2vec 2.0 text Base)."""

    family = "data2vec 2.0 text"
    model_names = ("data2vec_multi",)

    def accepts(self, ckpt: FairseqCheckpoint) -> bool:
        from d2v_core import supported_modality

        return ckpt.model_name in self.model_names and supported_modality(ckpt.model_cfg) == "TEXT"

    @staticmethod
    def _text(ckpt: FairseqCheckpoint) -> dict[str, Any]:
        t = {**V2_TEXT_DEFAULTS, **((ckpt.model_cfg.get("modalities") or {}).get("text") or {})}
        t["decoder"] = {**V2_DECODER_DEFAULTS, **(t.get("decoder") or {})}
        return t

    def run_config(self, ckpt: FairseqCheckpoint) -> dict[str, Any]:
        from d2v_core import multi_config, multi_run_config

        c, t = multi_config(ckpt.model_cfg), self._text(ckpt)
        dec = t["decoder"]
        problems = []
        if int(t["prenet_depth"]) != 0:
            problems.append(f"modalities.text.prenet_depth={t['prenet_depth']} (d2v has no modality-specific blocks)")
        if t["use_alibi_encoder"] or int(t["num_extra_tokens"]):
            problems.append("ALiBi or extra tokens in the text encoder")
        if not t["learned_pos"] or t["no_token_positional_embeddings"] or not t["no_scale_embedding"] or not t["layernorm_embedding"]:
            problems.append("an embedding other than RoBERTa's (learned positions, no scale, LayerNorm)")
        if dec["add_positions_masked"] or dec["add_positions_all"]:
            problems.append("decoder positions")
        if problems:
            raise CheckpointError(f"{ckpt.path}: d2v cannot represent this data2vec 2.0 text model: {'; '.join(problems)}")
        out = multi_run_config(c, str(ckpt.path))
        table = ckpt.model.get(_TE + "local_encoder.embed_positions.weight")
        max_positions = int(table.shape[0]) - 2 if table is not None else int(t["max_source_positions"])
        out.update(
            preset="v2-base",
            encoder={"max_positions": max_positions},
            masking={"name": "text-random", "clone_batch": int(c["clone_batch"]), "options": {"mask_prob": float(t["mask_prob"])}},
            decoder={"name": "conv1d", "mask_noise_std": float(t["mask_noise_std"]),
                     "options": {"channels": int(dec["decoder_dim"]), "kernel": int(dec["decoder_kernel"]),
                                 "groups": int(dec["decoder_groups"]), "layers": int(dec["decoder_layers"]),
                                 "residual": bool(dec["decoder_residual"]), "projection_layers": int(dec["projection_layers"]),
                                 "projection_ratio": float(dec["projection_ratio"]), "input_dropout": float(dec["input_dropout"])}},
            data={"options": {"block_size": max_positions}},
        )
        return out

    def validate(self, cfg: Any, ckpt: FairseqCheckpoint) -> None:
        rows = ckpt.model.get(_TE + "local_encoder.embed_tokens.weight")
        renamed = FairseqCheckpoint(ckpt.path, {_SE + "embed_tokens.weight": rows} if rows is not None else {},
                                    ckpt.model_cfg, ckpt.model_name, ckpt.task_cfg)
        super().validate(cfg, renamed)

    def key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        from d2v_core import BLOCK_RULES

        single = cfg.decoder.options.projection_layers == 1
        proj = Rename(_TE + "decoder.proj.{kind}", "decoder.proj.{kind}") if single else \
            Rename(_TE + "decoder.proj.{n}.{kind}", "decoder.proj.{n}.{kind}")
        return (
            Rename(_TE + "local_encoder.embed_tokens.weight", "encoder.embed_tokens.weight"),
            Rename(_TE + "local_encoder.embed_positions.weight", "encoder.embed_positions.weight"),
            Rename(_TE + "local_encoder.layernorm_embedding.{kind}", "encoder.layernorm_embedding.{kind}"),
            Rename(_TE + "decoder.blocks.{j}.0.{kind}", "decoder.blocks.{j}.conv.{kind}"),
            proj,
            *BLOCK_RULES,
        )

    def teacher_key_map(self, cfg: Any, ckpt: FairseqCheckpoint) -> Sequence:
        from d2v_core import BLOCK_RULES

        if ckpt.model_cfg.get("ema_encoder_only", True):  # _ema holds the blocks (a ModuleList)
            return rebase(BLOCK_RULES, "blocks.", "_ema.")
        return rebase(list(self.key_map(cfg, ckpt)), "", "_ema.")
