"""Export the audio model to transformers' ``Data2VecAudioModel`` (``d2v export --format hf``) and
import such a directory back (``d2v import --from-hf DIR --modality audio``).

The mapping is spec section 3.1. The encoder's names already follow HF (see ``encoder.py``);
the core Transformer's layers are renamed and the fused ``attn.qkv`` (3D, D) is split into HF's
``q_proj`` / ``k_proj`` / ``v_proj`` (rows ``[0:D]``, ``[D:2D]``, ``[2D:3D]``):

=================================  =================================================
d2v ``transformer.layers.{i}.``    ``Data2VecAudioModel`` ``encoder.layers.{i}.``
=================================  =================================================
``attn.qkv.{weight,bias}``         ``attention.{q,k,v}_proj.{weight,bias}``
``attn.proj.*``                    ``attention.out_proj.*``
``attn_norm.*``                    ``layer_norm.*``
``fc1.*``                          ``feed_forward.intermediate_dense.*``
``fc2.*``                          ``feed_forward.output_dense.*``
``ffn_norm.*``                     ``final_layer_norm.*``
=================================  =================================================

HF's model is always post-LN, with biases on q, k and v and no final LayerNorm, so pre-LN
models, layer scale, other ``qkv_bias`` settings and a final norm are refused (:data:`SUPPORTS`,
checked by the core's ``check_exportable``). The regression head and the EMA teacher are not
exported. :data:`KEY_MAP` is the table both ways (the core's ``export_key_map`` /
``apply_key_map``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from d2v_core import (
    Exporter,
    ExportError,
    Fuse,
    Rename,
    RunConfig,
    Supports,
    apply_key_map,
    check_exportable,
    export_key_map,
    first_line,
    load_exported,
    load_imported,
    quiet_transformers,
    transformers_module,
)

from d2v_plugin_audio.options import AudioDataOptions, AudioEncoderOptions

_MASK = "encoder.mask_embedding"
_HF_MASK = "masked_spec_embed"

#: ``Data2VecAudioModel`` name -> d2v name (under ``Data2Vec.teacher_scope()``); the encoder's
#: own names already follow HF.
KEY_MAP = (
    Rename(_HF_MASK, _MASK),
    Rename("feature_extractor.conv_layers.{i}.{module}.{kind}", "encoder.feature_extractor.conv_layers.{i}.{module}.{kind}"),
    Rename("feature_projection.{module}.{kind}", "encoder.feature_projection.{module}.{kind}"),
    Rename("encoder.pos_conv_embed.layers.{i}.{module}.{kind}", "encoder.pos_conv_embed.layers.{i}.{module}.{kind}"),
    Rename("encoder.layer_norm.{kind}", "encoder.layer_norm.{kind}"),
    Fuse("encoder.layers.{i}.attention.{part}_proj.{kind}", "transformer.layers.{i}.attn.qkv.{kind}"),
    Rename("encoder.layers.{i}.attention.out_proj.{kind}", "transformer.layers.{i}.attn.proj.{kind}"),
    Rename("encoder.layers.{i}.layer_norm.{kind}", "transformer.layers.{i}.attn_norm.{kind}"),
    Rename("encoder.layers.{i}.feed_forward.intermediate_dense.{kind}", "transformer.layers.{i}.fc1.{kind}"),
    Rename("encoder.layers.{i}.feed_forward.output_dense.{kind}", "transformer.layers.{i}.fc2.{kind}"),
    Rename("encoder.layers.{i}.final_layer_norm.{kind}", "transformer.layers.{i}.ffn_norm.{kind}"),
)

#: What ``Data2VecAudioModel`` can represent.
SUPPORTS = (
    Supports("model.layout", ("post_ln",), "Data2VecAudioModel is post-LN only"),
    Supports("model.layer_scale_init", (None,), "no layer scale in Data2VecAudioModel"),
    Supports("model.qkv_bias", ("qkv",), "Data2VecAudioModel has biases on q, k and v"),
    Supports("model.final_norm", (False,), "Data2VecAudioModel has no LayerNorm after its layers"),
    Supports("encoder.alibi", (False,), "Data2VecAudioModel has no ALiBi attention bias; data2vec 2.0 audio "
             "models have no transformers counterpart"),
    Supports("encoder.pos_conv_zero_pads", (True,), "Data2VecAudioModel zeroes padded frames before its positional conv"),
)

#: The fields of ``preprocessor_config.json`` (spec section 3.4); rate and normalisation follow
#: the run's data options, which give exactly the spec's file for every preset.
PREPROCESSOR = {
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "sampling_rate": 16000,
    "padding_value": 0.0,
    "do_normalize": True,
    "return_attention_mask": True,
}


def hf_config(cfg: RunConfig) -> Any:
    """``Data2VecAudioConfig`` for a d2v audio run: architecture from ``cfg.model`` and
    ``cfg.encoder``, dropouts and LayerDrop from ``cfg.model`` (they only matter for fine-tuning)."""
    m = cfg.model
    opts = AudioEncoderOptions.model_validate(cfg.encoder)
    channels, kernels, strides = (list(v) for v in zip(*opts.conv_layers(), strict=True))
    return transformers_module().Data2VecAudioConfig(
        hidden_size=m.dim,
        num_hidden_layers=m.depth,
        num_attention_heads=m.heads,
        intermediate_size=m.ffn_dim,
        hidden_act="gelu",  # exact erf GELU, as F.gelu in the core Transformer
        feat_extract_activation="gelu",
        layer_norm_eps=m.norm_eps,
        hidden_dropout=m.dropout,
        attention_dropout=m.attention_dropout,
        activation_dropout=m.activation_dropout,
        feat_proj_dropout=0.0,  # d2v has no dropout after the feature projection
        layerdrop=m.layerdrop,
        conv_dim=channels,
        conv_kernel=kernels,
        conv_stride=strides,
        conv_bias=opts.conv_bias,
        num_conv_pos_embeddings=opts.pos_conv_depth,
        conv_pos_kernel_size=opts.pos_conv_kernel,
        num_conv_pos_embedding_groups=opts.pos_conv_groups,
        mask_time_prob=0.05,  # HF's fine-tuning default; > 0 so that masked_spec_embed exists
    )


class AudioHFExporter(Exporter):
    """``--format hf``: a ``Data2VecAudioModel`` directory (``config.json``, ``model.safetensors``)
    plus ``preprocessor_config.json`` for ``Wav2Vec2FeatureExtractor``."""

    format = "hf"

    def export(self, model: nn.Module, cfg: Any, extra: Mapping[str, bytes], out_dir: Any) -> None:
        check_exportable(cfg, "Data2VecAudioModel", SUPPORTS)
        tf = transformers_module()
        out = Path(out_dir)
        hf = tf.Data2VecAudioModel(hf_config(cfg))
        mapped = export_key_map(model.teacher_scope().state_dict(), KEY_MAP)
        if mapped.unused:
            raise ExportError(f"cannot export to hf: parameter {mapped.unused[0]!r} has no Data2VecAudioModel counterpart")
        load_exported(hf, mapped.tensors, "Data2VecAudioModel")
        with quiet_transformers():
            hf.save_pretrained(out)
        data = AudioDataOptions.model_validate(cfg.data.options)
        pre = {**PREPROCESSOR, "sampling_rate": data.sample_rate, "do_normalize": data.normalize}
        (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n", encoding="utf-8")

    def import_config(self, src_dir: Any) -> dict:
        """``model`` and ``encoder`` sections from ``config.json`` (architecture only: dropouts,
        LayerDrop and every training setting come from the preset), and the sample rate and
        normalisation from ``preprocessor_config.json`` when it exists."""
        src = Path(src_dir)
        if not (src / "config.json").is_file():
            raise ExportError(f"{src} has no config.json: not a transformers model directory")
        raw = json.loads((src / "config.json").read_text(encoding="utf-8"))
        if raw.get("model_type") != "data2vec-audio":
            raise ExportError(f"{src} holds a {raw.get('model_type')!r} model; --modality audio imports 'data2vec-audio' models")
        c = transformers_module().Data2VecAudioConfig.from_pretrained(str(src), local_files_only=True, trust_remote_code=False)
        if c.hidden_act != "gelu" or c.feat_extract_activation != "gelu":
            raise ExportError(f"{src}: activations {c.hidden_act!r}/{c.feat_extract_activation!r}; d2v's audio model uses exact 'gelu'")
        if getattr(c, "add_adapter", False):
            raise ExportError(f"{src}: add_adapter is true; d2v's audio model has no adapter layers")
        channels = list(c.conv_dim)
        section = {
            "model": {
                "dim": c.hidden_size, "depth": c.num_hidden_layers, "heads": c.num_attention_heads,
                "ffn_dim": c.intermediate_size, "norm_eps": c.layer_norm_eps, "layout": "post_ln",
                "qkv_bias": "qkv", "final_norm": False, "layer_scale_init": None,
            },
            "encoder": {
                "conv_channels": channels[0] if len(set(channels)) == 1 else channels,
                "conv_kernels": list(c.conv_kernel), "conv_strides": list(c.conv_stride), "conv_bias": bool(c.conv_bias),
                "pos_conv_depth": c.num_conv_pos_embeddings, "pos_conv_kernel": c.conv_pos_kernel_size,
                "pos_conv_groups": c.num_conv_pos_embedding_groups,
                "alibi": False, "alibi_scale_init": 1.0,  # Data2VecAudioModel has no ALiBi
                "pos_conv_zero_pads": True,  # it zeroes padded frames before its positional conv
            },
        }
        pre_file = src / "preprocessor_config.json"
        if pre_file.is_file():
            pre = json.loads(pre_file.read_text(encoding="utf-8"))
            options = {k: pre[p] for k, p in (("sample_rate", "sampling_rate"), ("normalize", "do_normalize")) if p in pre}
            if options:
                section["data"] = {"options": options}
        return section

    def import_weights(self, src_dir: Any, model: nn.Module) -> None:
        """Every encoder and Transformer weight from ``src_dir`` (strict). A directory without
        ``masked_spec_embed`` (saved with ``mask_time_prob == 0``) keeps d2v's fresh mask
        embedding, with a warning."""
        src = Path(src_dir)
        tf = transformers_module()
        try:
            with quiet_transformers():
                hf, info = tf.Data2VecAudioModel.from_pretrained(str(src), output_loading_info=True, local_files_only=True, trust_remote_code=False,
                                                                 ignore_mismatched_sizes=True)  # reported below
        except (OSError, ValueError, RuntimeError) as exc:  # no weights file, unreadable or wrongly shaped weights
            first = first_line(exc)
            raise ExportError(f"{src}: cannot load Data2VecAudioModel weights: {first}") from exc
        missing = [k for k in info.get("missing_keys", []) if k != _HF_MASK]
        shapes = [f"{m[0]} {tuple(m[1])} != {tuple(m[2])}" for m in info.get("mismatched_keys", [])]
        if missing or shapes:
            raise ExportError(f"{src}: weights do not match its config.json (missing {sorted(missing)[:3]}, wrong shape {shapes[:3]})")
        state = {k: v.float() for k, v in hf.state_dict().items()}
        if _HF_MASK in info.get("missing_keys", []):
            state.pop(_HF_MASK, None)
        mapped = apply_key_map(state, KEY_MAP)
        if mapped.unused:
            raise ExportError(f"cannot import {mapped.unused[0]!r}: d2v's audio model has no counterpart (adapter or head weights?)")
        if _MASK not in mapped.tensors:
            warnings.warn(f"{src} has no masked_spec_embed; the mask embedding keeps its fresh initialisation", stacklevel=2)
        load_imported(model.teacher_scope(), mapped.tensors, src, may_miss=(_MASK,))
