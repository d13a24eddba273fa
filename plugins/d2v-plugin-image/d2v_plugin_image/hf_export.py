"""Export the image model to Hugging Face ``Data2VecVisionModel`` and import such a directory back
(spec sections 3.2 and 3.4).

The export writes ``config.json`` and ``model.safetensors`` (``save_pretrained``) plus a
``preprocessor_config.json`` for ``BeitImageProcessor`` equivalent to the plugin's eval transform.
It refuses, in one line, what ``Data2VecVisionModel`` cannot represent (:data:`SUPPORTS`, checked
by the core's ``check_exportable``): post-LN layers, no final LayerNorm, data2vec 2.0's encoder, a
non-square patch grid. The names are :data:`KEY_MAP`, applied both ways. Attention biases: ``qv`` maps directly; ``none`` is exported
as zero query and value biases; with ``qkv`` the key bias is dropped, which changes nothing,
because ``q . b_k`` is the same for every key of a query and softmax ignores a constant shift.

Before writing, the export runs two random images through both models and refuses to write a
model whose outputs differ by more than :data:`EXPORT_TOLERANCE`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

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

from d2v_plugin_image.options import ImageDataOptions

_MASK = "encoder.mask_embedding"


def _mask_to_d2v(t: Tensor) -> Tensor:
    return t.reshape(-1)  # (1, 1, D) in HF, (D,) in d2v


def _mask_to_hf(t: Tensor) -> Tensor:
    return t.reshape(1, 1, -1)


#: ``Data2VecVisionModel`` name -> d2v name (under ``Data2Vec.teacher_scope()``). The fused
#: ``attn.qkv.weight`` (rows [q; k; v]) is HF's query, key and value weights; the biases follow
#: ``model.qkv_bias`` (:func:`with_qv_biases`).
KEY_MAP = (
    Rename("embeddings.patch_embeddings.projection.{kind}", "encoder.patch_embed.proj.{kind}"),
    Rename("embeddings.cls_token", "encoder.cls_token"),
    Rename("embeddings.mask_token", _MASK, transform=_mask_to_d2v, inverse=_mask_to_hf),
    Rename("encoder.relative_position_bias.relative_position_bias_table", "encoder.rel_pos_bias.relative_position_bias_table"),
    Rename("layernorm.{kind}", "transformer.norm.{kind}"),
    Fuse("encoder.layer.{i}.attention.attention.{part}.weight", "transformer.layers.{i}.attn.qkv.weight",
         ("query", "key", "value")),
    Rename("encoder.layer.{i}.attention.attention.query.bias", "transformer.layers.{i}.attn.q_bias"),
    Rename("encoder.layer.{i}.attention.attention.value.bias", "transformer.layers.{i}.attn.v_bias"),
    Rename("encoder.layer.{i}.attention.output.dense.{kind}", "transformer.layers.{i}.attn.proj.{kind}"),
    Rename("encoder.layer.{i}.layernorm_before.{kind}", "transformer.layers.{i}.attn_norm.{kind}"),
    Rename("encoder.layer.{i}.intermediate.dense.{kind}", "transformer.layers.{i}.fc1.{kind}"),
    Rename("encoder.layer.{i}.output.dense.{kind}", "transformer.layers.{i}.fc2.{kind}"),
    Rename("encoder.layer.{i}.layernorm_after.{kind}", "transformer.layers.{i}.ffn_norm.{kind}"),
    Rename("encoder.layer.{i}.lambda_1", "transformer.layers.{i}.gamma_1"),
    Rename("encoder.layer.{i}.lambda_2", "transformer.layers.{i}.gamma_2"),
)

#: What ``Data2VecVisionModel`` (the pretrained data2vec_vision layout) can represent.
SUPPORTS = (
    Supports("model.layout", ("pre_ln",), "Data2VecVisionModel has pre-LN BEiT layers; a data2vec 2.0 ViT is post-LN"),
    Supports("model.final_norm", (True,), "Data2VecVisionModel ends with a LayerNorm (use_mean_pooling=false)"),
    Supports("encoder.position", ("relative",), "Data2VecVisionModel has BEiT's shared relative position bias; "
             "sincos positions are data2vec 2.0's"),
    Supports("encoder.input_norm", (False,), "Data2VecVisionModel has no input LayerNorm (data2vec 2.0's context encoder has one)"),
)

#: Largest max abs difference of the final outputs accepted by the export's self-check (the
#: outputs are layer-normalised; the spec measured 3.3e-6).
EXPORT_TOLERANCE = 1e-3

#: Weights of task heads in a transformers directory; an import keeps only the encoder.
HEAD_PREFIXES = ("pooler.", "classifier.", "lm_head.", "decode_head.", "auxiliary_head.", "fpn")


def with_qv_biases(state: Mapping[str, Tensor], depth: int, qkv_bias: str) -> dict[str, Tensor]:
    """d2v's state in the bias layout HF has (``qv``: query and value biases, no key bias):
    ``none`` gets zero biases (the same model); ``qkv`` drops the key bias, which changes
    nothing (``q . b_k`` is the same for every key of a query, and softmax ignores a constant
    shift)."""
    out = dict(state)
    for i in range(depth):
        attn = f"transformer.layers.{i}.attn."
        if qkv_bias == "qkv":
            q, _, v = out.pop(attn + "qkv.bias").chunk(3)
        elif qkv_bias == "none":
            q = v = torch.zeros(out[attn + "qkv.weight"].shape[1])
        else:
            continue
        out[attn + "q_bias"], out[attn + "v_bias"] = q, v
    return out


def _model_problems(model: nn.Module) -> list[str]:
    """What :data:`SUPPORTS` cannot say: the built encoder is this plugin's, with a square grid."""
    enc = model.encoder
    missing = [a for a in ("patch_embed", "cls_token", "mask_embedding", "rel_pos_bias", "grid") if not hasattr(enc, a)]
    if missing:
        raise ExportError(f"{type(enc).__name__} is not the d2v-plugin-image encoder (no {', '.join(missing)})")
    h, w = enc.grid
    if h != w:  # the encoder only builds square grids; this guards other encoders
        return [f"the {h}x{w} patch grid (Data2VecVisionModel resamples the relative position table for non-square "
                "grids, so only square grids export exactly)"]
    return []


def hf_config(model: nn.Module, cfg: RunConfig) -> Any:
    """The ``Data2VecVisionConfig`` of a pretrained data2vec_vision model with these sizes."""
    m, enc = cfg.model, model.encoder
    return transformers_module().Data2VecVisionConfig(
        hidden_size=m.dim, num_hidden_layers=m.depth, num_attention_heads=m.heads, intermediate_size=m.ffn_dim,
        hidden_act="gelu", hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.attention_dropout,
        drop_path_rate=m.drop_path, layer_norm_eps=m.norm_eps, layer_scale_init_value=m.layer_scale_init or 0.0,
        image_size=int(enc.image_size), patch_size=int(enc.patch_embed.patch_size[0]), num_channels=3,
        use_mask_token=True, use_absolute_position_embeddings=False, use_relative_position_bias=False,
        use_shared_relative_position_bias=True, use_mean_pooling=False,
    )


def image_processor(cfg: RunConfig, image_size: int) -> Any:
    """``BeitImageProcessor`` doing the plugin's eval transform: resize the short side to
    ``image_size`` (the data options' interpolation), centre-crop, rescale, ImageNet mean/std."""
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    tf = transformers_module()
    from transformers.image_utils import PILImageResampling

    resample = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}
    interpolation = ImageDataOptions.model_validate(cfg.data.options).interpolation
    return tf.BeitImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, resample=resample[interpolation],
        do_center_crop=True, crop_size={"height": image_size, "width": image_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD), do_reduce_labels=False,
    )


@torch.no_grad()
def max_output_difference(model: nn.Module, hf: nn.Module, image_size: int) -> float:
    """Max abs difference of the final states (CLS included) of d2v and ``hf`` on two random images."""
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    enc = model.encoder
    feats = enc.embed({"image": x.to(device)})
    ctx = enc.contextualize(feats.x, feats.padding_mask)
    ours = model.transformer(ctx.x, ctx.padding_mask, ctx.attn_bias).x.float().cpu()
    return (ours - hf(pixel_values=x).last_hidden_state).abs().max().item()


def _hf_config_of(src_dir: Any) -> tuple[Any, int, int]:
    """The ``Data2VecVisionConfig`` of ``src_dir``, its image size and patch size; an
    :class:`ExportError` listing everything the image encoder cannot represent."""
    src = Path(src_dir)
    config_file = src / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{src} has no config.json: not a transformers model directory")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as exc:
        raise ExportError(f"{config_file} is not a JSON object: {first_line(exc)}") from None
    if model_type != "data2vec-vision":
        raise ExportError(f"{src} holds a {model_type!r} model; the image modality imports 'data2vec-vision' "
                          "(Data2VecVisionModel) directories")
    config = transformers_module().Data2VecVisionConfig.from_pretrained(str(src), local_files_only=True, trust_remote_code=False)
    problems = []
    if config.use_relative_position_bias:
        problems.append("per-layer relative position biases (use_relative_position_bias=true)")
    if not config.use_shared_relative_position_bias:
        problems.append("no shared relative position bias (use_shared_relative_position_bias=false)")
    if config.use_absolute_position_embeddings:
        problems.append("absolute position embeddings (use_absolute_position_embeddings=true)")
    if config.use_mean_pooling:
        problems.append("no final LayerNorm (use_mean_pooling=true)")
    if config.hidden_act != "gelu":
        problems.append(f"hidden_act={config.hidden_act!r} (d2v uses exact GELU)")
    if config.num_channels != 3:
        problems.append(f"num_channels={config.num_channels}")
    sizes = {}
    for field in ("image_size", "patch_size"):
        value = getattr(config, field)
        values = set(value) if isinstance(value, (list, tuple)) else {value}
        if len(values) != 1:
            problems.append(f"non-square {field}={list(value)}")
        sizes[field] = int(next(iter(values)))
    if sizes["image_size"] % sizes["patch_size"]:
        problems.append(f"image_size {sizes['image_size']} is not a multiple of patch_size {sizes['patch_size']}")
    if problems:
        raise ExportError(f"{src}: d2v's image model cannot represent {'; '.join(problems)}")
    return config, sizes["image_size"], sizes["patch_size"]


class ImageHFExporter(Exporter):
    """``d2v export --format hf`` / ``d2v import --from-hf`` for the image modality."""

    format = "hf"

    def export(self, model: nn.Module, cfg: Any, extra: Mapping[str, bytes], out_dir: Any) -> None:
        """Write ``Data2VecVisionModel`` weights, config and image processor to ``out_dir``."""
        tf = transformers_module()
        check_exportable(cfg, "Data2VecVisionModel", SUPPORTS, _model_problems(model))
        config = hf_config(model, cfg)
        d2v = with_qv_biases(model.teacher_scope().state_dict(), cfg.model.depth, cfg.model.qkv_bias)
        mapped = export_key_map({k: v.detach().cpu() for k, v in d2v.items()}, KEY_MAP)
        if mapped.unused:
            raise ExportError(f"no Data2VecVisionModel weight for {', '.join(mapped.unused[:3])}: not a d2v-plugin-image model")
        state = mapped.tensors
        hf = tf.Data2VecVisionModel(config, add_pooling_layer=False)
        for key, value in hf.state_dict().items():  # derived buffers, persistent in some versions
            if "relative_position_index" in key:
                state.setdefault(key, value)
        load_exported(hf, state, "Data2VecVisionModel")
        was_training = model.training
        model.eval()
        hf.eval()
        try:
            diff = max_output_difference(model, hf, config.image_size)
        finally:
            model.train(was_training)
        if not diff <= EXPORT_TOLERANCE:
            raise ExportError(f"the exported model's outputs differ from d2v's by {diff:.2e} (> {EXPORT_TOLERANCE:g}) "
                              f"with transformers {tf.__version__}; nothing was written")
        with quiet_transformers():
            hf.save_pretrained(str(out_dir))
        image_processor(cfg, int(model.encoder.image_size)).save_pretrained(str(out_dir))

    def import_config(self, src_dir: Any) -> dict:
        """Model and encoder sections for a ``Data2VecVisionModel`` directory. Training settings
        (dropouts, drop path) come from the preset, not from the directory."""
        c, image_size, patch_size = _hf_config_of(src_dir)
        model = {
            "dim": c.hidden_size, "depth": c.num_hidden_layers, "heads": c.num_attention_heads,
            "ffn_dim": c.intermediate_size, "layout": "pre_ln", "qkv_bias": "qv", "final_norm": True,
            "norm_eps": c.layer_norm_eps, "layer_scale_init": c.layer_scale_init_value if c.layer_scale_init_value > 0 else None,
            "init": "beit",
        }
        return {"model": model, "encoder": {"image_size": image_size, "patch_size": patch_size}}

    def import_weights(self, src_dir: Any, model: nn.Module) -> None:
        """Load the encoder weights of ``src_dir`` into ``model`` (built from :meth:`import_config`).
        Missing or mis-shaped weights are errors; task heads (pooler, classifier) are ignored; the
        regression head keeps its initialisation. Without ``mask_token`` (``use_mask_token=false``)
        the mask embedding keeps its initialisation, with a warning."""
        tf = transformers_module()
        config = _hf_config_of(src_dir)[0]
        try:
            with quiet_transformers():
                hf, info = tf.Data2VecVisionModel.from_pretrained(str(src_dir), config=config, add_pooling_layer=False,
                                                                  output_loading_info=True, local_files_only=True,
                                                                  trust_remote_code=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ExportError(f"cannot load {src_dir} as Data2VecVisionModel: {first_line(exc)}") from None
        bad = sorted(str(k) for k in [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())])
        bad += sorted(k for k in info.get("unexpected_keys", ())
                      if not k.startswith(HEAD_PREFIXES) and "relative_position_index" not in k)
        if bad:
            raise ExportError(f"{src_dir}: weights do not match its config.json ({', '.join(bad[:3])})")
        # relative_position_index is derived from the grid (transformers ignores it on load too)
        mapped = apply_key_map({k: v for k, v in hf.state_dict().items() if "relative_position_index" not in k}, KEY_MAP)
        if mapped.unused:
            raise ExportError(f"{src_dir}: no d2v counterpart for {', '.join(mapped.unused[:3])}")
        load_imported(model.teacher_scope(), mapped.tensors, src_dir, may_miss=() if config.use_mask_token else (_MASK,))
        if not config.use_mask_token:
            warnings.warn(f"{src_dir} has no mask_token (use_mask_token=false): the mask embedding starts from its "
                          "initialisation", stacklevel=2)
