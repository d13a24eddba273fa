"""``d2v export --format hf`` and ``d2v import --from-hf`` for text: transformers'
``Data2VecTextModel`` (the RoBERTa layout, spec §3.3) and a fast tokenizer.

The mapping is :data:`KEY_MAP` (the core's ``export_key_map`` / ``apply_key_map``): a rename,
except that the fused ``qkv`` projection is split into ``query``, ``key`` and ``value`` (rows
``[q; k; v]``), and that transformers adds a token-type embedding,
which the export writes as zeros and the import folds into the position table (row 0 of it is
what transformers adds when no ``token_type_ids`` are given). The regression head is not part
of the encoder: it is not exported, and an import leaves it freshly initialised. transformers'
``pooler`` and ``lm_head`` weights in a directory are dropped on import; any other tensor that
has no place in d2v's model is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from d2v_core import (
    Exporter,
    ExportError,
    Fuse,
    Rename,
    Supports,
    apply_key_map,
    check_exportable,
    export_key_map,
    load_exported,
    load_imported,
    quiet_transformers,
    transformers_module,
)

from d2v_plugin_text.encoder import TextFeatureEncoder
from d2v_plugin_text.hf_tokenizer import SPM_FILE, write_hf_tokenizer
from d2v_plugin_text.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

#: ``Data2VecTextModel`` name -> d2v name (under ``Data2Vec.teacher_scope()``).
KEY_MAP = (
    Rename("embeddings.word_embeddings.weight", "encoder.embed_tokens.weight"),
    Rename("embeddings.position_embeddings.weight", "encoder.embed_positions.weight"),
    Rename("embeddings.LayerNorm.{kind}", "encoder.layernorm_embedding.{kind}"),
    Fuse("encoder.layer.{i}.attention.self.{part}.{kind}", "transformer.layers.{i}.attn.qkv.{kind}", ("query", "key", "value")),
    Rename("encoder.layer.{i}.attention.output.dense.{kind}", "transformer.layers.{i}.attn.proj.{kind}"),
    Rename("encoder.layer.{i}.attention.output.LayerNorm.{kind}", "transformer.layers.{i}.attn_norm.{kind}"),
    Rename("encoder.layer.{i}.intermediate.dense.{kind}", "transformer.layers.{i}.fc1.{kind}"),
    Rename("encoder.layer.{i}.output.dense.{kind}", "transformer.layers.{i}.fc2.{kind}"),
    Rename("encoder.layer.{i}.output.LayerNorm.{kind}", "transformer.layers.{i}.ffn_norm.{kind}"),
)

#: What ``Data2VecTextModel`` can represent.
SUPPORTS = (
    Supports("model.layout", ("post_ln",), "its layers are post-LN"),
    Supports("model.layer_scale_init", (None,), "it has no layer scale"),
    Supports("model.qkv_bias", ("qkv",), "it has biases on query, key and value"),
    Supports("model.final_norm", (False,), "it has no final LayerNorm"),
)

_TOKEN_TYPES = "embeddings.token_type_embeddings.weight"
#: transformers heads that may sit next to the encoder in a directory; not part of d2v's model.
DROPPED_HEADS = ("pooler.", "lm_head.")


def d2v_to_hf_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``Data2VecTextModel`` weights from a d2v text model's ``teacher_scope()`` state, with the
    token-type embedding transformers adds written as zeros."""
    mapped = export_key_map(state, KEY_MAP)
    if mapped.unused:
        raise ExportError(f"d2v tensors with no place in Data2VecTextModel: {', '.join(sorted(mapped.unused)[:4])}")
    out = mapped.tensors
    out[_TOKEN_TYPES] = torch.zeros_like(out["embeddings.LayerNorm.weight"]).unsqueeze(0)
    return out


def hf_to_d2v_state(state: Mapping[str, Tensor], pad_id: int = PAD_ID) -> dict[str, Tensor]:
    """The inverse of :func:`d2v_to_hf_state`; every tensor must be used. Token-type row 0 is added
    to every position row but the padding row (exact: transformers adds both to each token)."""
    rest = dict(state)
    if _TOKEN_TYPES not in rest:
        raise ExportError(f"the transformers model has no tensor {_TOKEN_TYPES!r}")
    token_type = rest.pop(_TOKEN_TYPES)[0]
    mapped = apply_key_map(rest, KEY_MAP)
    if mapped.unused:
        raise ExportError(f"transformers tensors with no place in the d2v text model: {', '.join(sorted(mapped.unused)[:4])}")
    out = mapped.tensors
    positions = out["encoder.embed_positions.weight"].clone()
    rows = torch.arange(positions.shape[0]) != pad_id
    positions[rows] += token_type.to(positions.dtype)
    out["encoder.embed_positions.weight"] = positions
    return out


def text_encoder(model: nn.Module) -> TextFeatureEncoder:
    """The model's text encoder, or an :class:`ExportError` for another plugin's model."""
    enc = getattr(model, "encoder", None)
    if not isinstance(enc, TextFeatureEncoder):
        raise ExportError(f"the hf text exporter needs the text plugin's encoder, got {type(enc).__name__}")
    return enc


def hf_config(model_cfg: Any, enc: TextFeatureEncoder):  # noqa: ANN201 - Data2VecTextConfig
    """The ``Data2VecTextConfig`` of a d2v text model (spec §3.3)."""
    from transformers import Data2VecTextConfig

    return Data2VecTextConfig(
        vocab_size=enc.vocab_size, hidden_size=model_cfg.dim, num_hidden_layers=model_cfg.depth,
        num_attention_heads=model_cfg.heads, intermediate_size=model_cfg.ffn_dim, hidden_act="gelu",
        hidden_dropout_prob=model_cfg.dropout, attention_probs_dropout_prob=model_cfg.attention_dropout,
        max_position_embeddings=enc.embed_positions.num_embeddings, type_vocab_size=1,
        layer_norm_eps=model_cfg.norm_eps, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )


def find_sentencepiece(src: Path) -> Path:
    """The sentencepiece model of an exported directory: :data:`SPM_FILE`, else the one ``*.model``."""
    if (src / SPM_FILE).is_file():
        return src / SPM_FILE
    found = sorted(p for p in src.glob("*.model") if p.is_file())
    if len(found) == 1:
        return found[0]
    what = "several: " + ", ".join(p.name for p in found) if found else "none"
    raise ExportError(
        f"{src}: d2v text models need a sentencepiece tokenizer with d2v's ids ({SPM_FILE}; found {what}); "
        "directories written by `d2v export --format hf` have one, RoBERTa-style byte-level BPE tokenizers cannot be used"
    )


class TextHFExporter(Exporter):
    """Text <-> a transformers ``Data2VecTextModel`` directory (weights, config, tokenizer)."""

    format = "hf"

    def export(self, model: nn.Module, cfg: Any, extra: Mapping[str, bytes], out_dir: Any) -> None:
        """Write config.json, model.safetensors, tokenizer.json, tokenizer_config.json and the
        sentencepiece model. The tokenizer is the encoder's own (restored from ``extra``)."""
        enc = text_encoder(model)
        check_exportable(cfg, "Data2VecTextModel", SUPPORTS)
        transformers = transformers_module()
        out = Path(out_dir)
        state = d2v_to_hf_state(model.teacher_scope().state_dict())
        hf = transformers.Data2VecTextModel(hf_config(cfg.model, enc), add_pooling_layer=False)
        load_exported(hf, {k: v.detach().float().cpu() for k, v in state.items()}, "Data2VecTextModel")
        with quiet_transformers():
            hf.save_pretrained(str(out))
            write_hf_tokenizer(enc.tokenizer, out, enc.max_positions)

    def _hf_config(self, src: Path):  # noqa: ANN202
        transformers = transformers_module()
        if not (src / "config.json").is_file():
            raise ExportError(f"{src} has no config.json: not a transformers model directory")
        cfg = transformers.AutoConfig.from_pretrained(str(src), local_files_only=True, trust_remote_code=False)
        if cfg.model_type != "data2vec-text":
            raise ExportError(f"{src} holds a {cfg.model_type!r} model; the text plugin imports 'data2vec-text' models")
        problems = []
        if cfg.hidden_act != "gelu":
            problems.append(f"hidden_act={cfg.hidden_act!r} (d2v uses exact gelu)")
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            problems.append(f"position_embedding_type={cfg.position_embedding_type!r}")
        if cfg.pad_token_id != PAD_ID:
            problems.append(f"pad_token_id={cfg.pad_token_id} (d2v pads with {PAD_ID})")
        if getattr(cfg, "is_decoder", False):
            problems.append("is_decoder=true")
        if cfg.max_position_embeddings < PAD_ID + 3:
            problems.append(f"max_position_embeddings={cfg.max_position_embeddings}")
        if problems:
            raise ExportError(f"{src}: cannot import this Data2VecText model: {'; '.join(problems)}")
        return cfg

    def import_config(self, src_dir: Any) -> dict:
        """``model`` sizes and layout, ``encoder`` (the directory's sentencepiece model and
        ``max_positions``) and ``data.options.block_size`` = ``max_positions``."""
        src = Path(src_dir)
        cfg = self._hf_config(src)
        spm_path = find_sentencepiece(src).resolve()
        tokenizer = Tokenizer.from_file(spm_path)
        if tokenizer.vocab_size != cfg.vocab_size:
            raise ExportError(
                f"{src}: the tokenizer has {tokenizer.vocab_size} ids (pieces + <mask>) but the model {cfg.vocab_size}"
            )
        max_positions = cfg.max_position_embeddings - PAD_ID - 1
        return {
            "model": {
                "dim": cfg.hidden_size, "depth": cfg.num_hidden_layers, "heads": cfg.num_attention_heads,
                "ffn_dim": cfg.intermediate_size, "layout": "post_ln", "qkv_bias": "qkv", "final_norm": False,
                "layer_scale_init": None, "norm_eps": cfg.layer_norm_eps, "dropout": cfg.hidden_dropout_prob,
                "attention_dropout": cfg.attention_probs_dropout_prob,
            },
            "encoder": {"tokenizer": str(spm_path), "max_positions": max_positions},
            "data": {"options": {"block_size": max_positions}},
        }

    def import_weights(self, src_dir: Any, model: nn.Module) -> None:
        """Load the directory's encoder weights into ``model`` (built from :meth:`import_config`)."""
        src = Path(src_dir)
        text_encoder(model)
        transformers = transformers_module()
        with quiet_transformers():
            hf, info = transformers.Data2VecTextModel.from_pretrained(
                str(src), add_pooling_layer=False, output_loading_info=True, local_files_only=True, trust_remote_code=False
            )
        extra = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith(DROPPED_HEADS))
        missing = sorted(info.get("missing_keys", ()))
        if missing or extra:
            detail = f"missing {missing[:4]}" if missing else f"unused {extra[:4]}"
            raise ExportError(f"{src}: the weights are not a Data2VecTextModel's ({detail})")
        # the regression head (not in the teacher scope) keeps its initialisation
        load_imported(model.teacher_scope(), hf_to_d2v_state(hf.state_dict(), model.encoder.pad_id), src)
