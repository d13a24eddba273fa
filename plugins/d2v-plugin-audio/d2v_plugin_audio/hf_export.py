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
models, layer scale, other ``qkv_bias`` settings and a final norm are refused. The regression
head and the EMA teacher are not exported.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from d2v_core import RunConfig
from d2v_core import ExportError, first_line, quiet_transformers, transformers_module
from d2v_core import Exporter

from d2v_plugin_audio.options import AudioDataOptions, AudioEncoderOptions

# d2v encoder name -> HF name (prefix renames; everything else is identical)
_ENCODER_PREFIXES = (
    ("feature_extractor.", "feature_extractor."),
    ("feature_projection.", "feature_projection."),
    ("pos_conv_embed.", "encoder.pos_conv_embed."),
    ("layer_norm.", "encoder.layer_norm."),
)
_MASK_EMBEDDING = ("mask_embedding", "masked_spec_embed")
# d2v Transformer layer module -> HF encoder layer module (qkv is split separately)
_LAYER_MODULES = {
    "attn.proj": "attention.out_proj",
    "attn_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
    "ffn_norm": "final_layer_norm",
}
_D2V_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
_HF_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_HF_QKV = re.compile(r"^attention\.([qkv])_proj$")

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


def check_exportable(cfg: RunConfig) -> None:
    """Raise :class:`ExportError` for a model ``Data2VecAudioModel`` cannot represent."""
    m = cfg.model
    reasons = []
    if m.layout != "post_ln":
        reasons.append(f"model.layout is {m.layout!r} (Data2VecAudioModel is post-LN only)")
    if m.layer_scale_init is not None:
        reasons.append("model.layer_scale_init is set (no layer scale in Data2VecAudioModel)")
    if m.qkv_bias != "qkv":
        reasons.append(f"model.qkv_bias is {m.qkv_bias!r} (Data2VecAudioModel has biases on q, k and v)")
    if m.final_norm:
        reasons.append("model.final_norm is true (Data2VecAudioModel has no LayerNorm after its layers)")
    if AudioEncoderOptions.model_validate(cfg.encoder).alibi:
        reasons.append("encoder.alibi is true (Data2VecAudioModel has no ALiBi attention bias; data2vec 2.0 audio "
                       "models have no transformers counterpart)")
    if cfg.encoder.pos_conv_zero_pads is False:
        reasons.append("encoder.pos_conv_zero_pads is false (Data2VecAudioModel zeroes padded frames before its positional conv)")
    if reasons:
        raise ExportError(f"cannot export to hf: {'; '.join(reasons)}")


def hf_config(cfg: RunConfig) -> Any:
    """``Data2VecAudioConfig`` for a d2v audio run: architecture from ``cfg.model`` and
    ``cfg.encoder``, dropouts and LayerDrop from ``cfg.model`` (they only matter for fine-tuning)."""
    m = cfg.model
    opts = AudioEncoderOptions.model_validate(cfg.encoder)
    channels, kernels, strides = (list(v) for v in zip(*opts.conv_layers()))
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


def to_hf_state_dict(encoder: Mapping[str, Tensor], transformer: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF ``Data2VecAudioModel`` state dict from the d2v encoder's and Transformer's state dicts."""
    out: dict[str, Tensor] = {}
    for key, value in encoder.items():
        if key == _MASK_EMBEDDING[0]:
            out[_MASK_EMBEDDING[1]] = value
            continue
        for ours, theirs in _ENCODER_PREFIXES:
            if key.startswith(ours):
                out[theirs + key.removeprefix(ours)] = value
                break
        else:
            raise ExportError(f"cannot export to hf: encoder parameter {key!r} has no Data2VecAudioModel counterpart")
    for key, value in transformer.items():
        match = _D2V_LAYER_KEY.match(key)
        module = match and match.group(2)
        if match and module == "attn.qkv":
            i, kind = match.group(1), match.group(3)
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"encoder.layers.{i}.attention.{name}_proj.{kind}"] = part.clone()
        elif match and module in _LAYER_MODULES:
            out[f"encoder.layers.{match.group(1)}.{_LAYER_MODULES[module]}.{match.group(3)}"] = value
        else:
            raise ExportError(f"cannot export to hf: Transformer parameter {key!r} has no Data2VecAudioModel counterpart")
    return out


def from_hf_state_dict(hf: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The inverse of :func:`to_hf_state_dict`: (encoder, Transformer) state dicts."""
    encoder: dict[str, Tensor] = {}
    transformer: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in hf.items():
        if key == _MASK_EMBEDDING[1]:
            encoder[_MASK_EMBEDDING[0]] = value
            continue
        layer = _HF_LAYER_KEY.match(key)
        if layer:
            i, module, kind = layer.groups()
            q = _HF_QKV.match(module)
            if q:
                qkv.setdefault((i, kind), {})[q.group(1)] = value
                continue
            ours = {v: k for k, v in _LAYER_MODULES.items()}.get(module)
            if ours is not None:
                transformer[f"layers.{i}.{ours}.{kind}"] = value
                continue
        else:
            prefix = next(((o, t) for o, t in _ENCODER_PREFIXES if key.startswith(t)), None)
            if prefix is not None:
                encoder[prefix[0] + key.removeprefix(prefix[1])] = value
                continue
        raise ExportError(f"cannot import {key!r}: d2v's audio model has no counterpart (adapter or head weights?)")
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ExportError(f"cannot import layer {i}: attention {kind} needs q_proj, k_proj and v_proj, found {sorted(parts)}")
        transformer[f"layers.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return encoder, transformer


def _load_strict(module: nn.Module, state: Mapping[str, Tensor], what: str, src: Path) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"{src}: weights do not fit the d2v {what} (missing {missing[:3]}, unexpected {unexpected[:3]})")


class AudioHFExporter(Exporter):
    """``--format hf``: a ``Data2VecAudioModel`` directory (``config.json``, ``model.safetensors``)
    plus ``preprocessor_config.json`` for ``Wav2Vec2FeatureExtractor``."""

    format = "hf"

    def export(self, model: nn.Module, cfg: Any, extra: Mapping[str, bytes], out_dir: Any) -> None:
        check_exportable(cfg)
        tf = transformers_module()
        out = Path(out_dir)
        hf = tf.Data2VecAudioModel(hf_config(cfg))
        state = to_hf_state_dict(model.encoder.state_dict(), model.transformer.state_dict())
        try:
            hf.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # a name or shape the mapping got wrong: a bug, not user error
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise ExportError(f"cannot export to hf: weights do not fit Data2VecAudioModel: {lines[-1] if lines else exc}") from exc
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
        missing = [k for k in info.get("missing_keys", []) if k != _MASK_EMBEDDING[1]]
        shapes = [f"{m[0]} {tuple(m[1])} != {tuple(m[2])}" for m in info.get("mismatched_keys", [])]
        if missing or shapes:
            raise ExportError(f"{src}: weights do not match its config.json (missing {sorted(missing)[:3]}, wrong shape {shapes[:3]})")
        state = {k: v.float() for k, v in hf.state_dict().items()}
        if _MASK_EMBEDDING[1] in info.get("missing_keys", []):
            state.pop(_MASK_EMBEDDING[1], None)
        encoder, transformer = from_hf_state_dict(state)
        if _MASK_EMBEDDING[0] not in encoder:
            warnings.warn(f"{src} has no masked_spec_embed; the mask embedding keeps its fresh initialisation", stacklevel=2)
            encoder[_MASK_EMBEDDING[0]] = model.encoder.mask_embedding.detach().clone()
        _load_strict(model.encoder, encoder, "audio encoder", src)
        _load_strict(model.transformer, transformer, "Transformer", src)
