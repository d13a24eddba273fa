"""Export the image model to Hugging Face ``Data2VecVisionModel`` and import such a directory back
(spec sections 3.2 and 3.4).

The export writes ``config.json`` and ``model.safetensors`` (``save_pretrained``) plus a
``preprocessor_config.json`` for ``BeitImageProcessor`` equivalent to the plugin's eval transform.
It refuses, in one line, what ``Data2VecVisionModel`` cannot represent: post-LN layers, no final
LayerNorm, a non-square patch grid. Attention biases: ``qv`` maps directly; ``none`` is exported
as zero query and value biases; with ``qkv`` the key bias is dropped, which changes nothing,
because ``q . b_k`` is the same for every key of a query and softmax ignores a constant shift.

Before writing, the export runs two random images through both models and refuses to write a
model whose outputs differ by more than :data:`EXPORT_TOLERANCE`.
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

from d2v_core.config import RunConfig
from d2v_core.errors import ExportError
from d2v_core.interfaces import Exporter
from d2v_plugin_image.options import ImageDataOptions

#: d2v name (under ``Data2Vec.teacher_scope()``) -> ``Data2VecVisionModel`` name, outside the layers.
GLOBAL_NAMES = {
    "encoder.patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "encoder.patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "encoder.cls_token": "embeddings.cls_token",
    "encoder.mask_embedding": "embeddings.mask_token",  # (D,) in d2v, (1, 1, D) in HF
    "encoder.rel_pos_bias.relative_position_bias_table": "encoder.relative_position_bias.relative_position_bias_table",
    "transformer.norm.weight": "layernorm.weight",
    "transformer.norm.bias": "layernorm.bias",
}

#: Per layer: ``transformer.layers.{i}.`` suffix -> ``encoder.layer.{i}.`` suffix. The fused
#: ``attn.qkv.weight`` (rows [q; k; v]) is split into ``QKV_NAMES``.
LAYER_NAMES = {
    "attn.q_bias": "attention.attention.query.bias",
    "attn.v_bias": "attention.attention.value.bias",
    "attn.proj.weight": "attention.output.dense.weight",
    "attn.proj.bias": "attention.output.dense.bias",
    "attn_norm.weight": "layernorm_before.weight",
    "attn_norm.bias": "layernorm_before.bias",
    "fc1.weight": "intermediate.dense.weight",
    "fc1.bias": "intermediate.dense.bias",
    "fc2.weight": "output.dense.weight",
    "fc2.bias": "output.dense.bias",
    "ffn_norm.weight": "layernorm_after.weight",
    "ffn_norm.bias": "layernorm_after.bias",
    "gamma_1": "lambda_1",
    "gamma_2": "lambda_2",
}
QKV_NAMES = tuple(f"attention.attention.{p}.weight" for p in ("query", "key", "value"))

#: Largest max abs difference of the final outputs accepted by the export's self-check (the
#: outputs are layer-normalised; the spec measured 3.3e-6).
EXPORT_TOLERANCE = 1e-3

#: Weights of task heads in a transformers directory; an import keeps only the encoder.
HEAD_PREFIXES = ("pooler.", "classifier.", "lm_head.", "decode_head.", "auxiliary_head.", "fpn")

_D2V_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_MASK = "encoder.mask_embedding"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ExportError("the hf format needs the transformers package: pip install 'transformers>=4.46'") from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No transformers progress bars or load reports: d2v reports problems itself, in one line."""
    logging = _transformers().utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def to_hf_state_dict(state: Mapping[str, Tensor], depth: int, qkv_bias: str) -> dict[str, Tensor]:
    """``Data2VecVisionModel`` weights from the d2v encoder + transformer state (teacher-scope names)."""
    out: dict[str, Tensor] = {}
    unmapped = []
    for name, value in state.items():
        value = value.detach().to("cpu")
        layer = _D2V_LAYER.match(name)
        if name in GLOBAL_NAMES:
            out[GLOBAL_NAMES[name]] = value.reshape(1, 1, -1) if name == _MASK else value
        elif layer and layer.group(2) == "attn.qkv.weight":
            for hf_name, part in zip(QKV_NAMES, value.chunk(3)):
                out[f"encoder.layer.{layer.group(1)}.{hf_name}"] = part
        elif layer and layer.group(2) == "attn.qkv.bias":  # qkv_bias "qkv": the key bias is dropped (no effect)
            q, _, v = value.chunk(3)
            out[f"encoder.layer.{layer.group(1)}.{LAYER_NAMES['attn.q_bias']}"] = q
            out[f"encoder.layer.{layer.group(1)}.{LAYER_NAMES['attn.v_bias']}"] = v
        elif layer and layer.group(2) in LAYER_NAMES:
            out[f"encoder.layer.{layer.group(1)}.{LAYER_NAMES[layer.group(2)]}"] = value
        else:
            unmapped.append(name)
    if unmapped:
        raise ExportError(f"no Data2VecVisionModel weight for {', '.join(unmapped[:3])}: not a d2v-plugin-image model")
    if qkv_bias == "none":  # HF always has query and value biases: zeros are the same model
        for i in range(depth):
            dim = out[f"encoder.layer.{i}.{QKV_NAMES[0]}"].shape[0]
            for suffix in ("attn.q_bias", "attn.v_bias"):
                out[f"encoder.layer.{i}.{LAYER_NAMES[suffix]}"] = torch.zeros(dim)
    return {k: v.clone().contiguous() for k, v in out.items()}


def from_hf_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """The inverse of :func:`to_hf_state_dict` for the ``qv`` layout: (d2v teacher-scope state,
    HF names that have no d2v counterpart). ``relative_position_index`` buffers are skipped."""
    global_inverse = {v: k for k, v in GLOBAL_NAMES.items()}
    layer_inverse = {v: k for k, v in LAYER_NAMES.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for name, value in state.items():
        layer = _HF_LAYER.match(name)
        if "relative_position_index" in name:
            continue  # derived from the grid; transformers ignores it on load too
        if name in global_inverse:
            out[global_inverse[name]] = value.reshape(-1) if global_inverse[name] == _MASK else value
        elif layer and layer.group(2) in QKV_NAMES:
            qkv.setdefault(layer.group(1), {})[layer.group(2)] = value
        elif layer and layer.group(2) in layer_inverse:
            out[f"transformer.layers.{layer.group(1)}.{layer_inverse[layer.group(2)]}"] = value
        else:
            unknown.append(name)
    for i, parts in qkv.items():
        if len(parts) != 3:
            unknown += [f"encoder.layer.{i}.{p}" for p in parts]
            continue
        out[f"transformer.layers.{i}.attn.qkv.weight"] = torch.cat([parts[p] for p in QKV_NAMES])
    return out, unknown


def check_exportable(model: nn.Module, cfg: RunConfig) -> None:
    """Raise :class:`ExportError` (one line) for what ``Data2VecVisionModel`` cannot represent."""
    m = cfg.model
    if m.layout != "pre_ln":
        raise ExportError(f"Data2VecVisionModel has pre-LN BEiT layers; this model has model.layout={m.layout} "
                          "(a data2vec 2.0 ViT is post-LN), which the hf format cannot represent")
    if not m.final_norm:
        raise ExportError("Data2VecVisionModel ends with a LayerNorm (use_mean_pooling=false); this model has "
                          "model.final_norm=false, which the hf format cannot represent")
    enc = model.encoder
    if getattr(enc, "rel_pos_bias", True) is None or getattr(enc, "input_norm", None) is not None:
        raise ExportError("Data2VecVisionModel has BEiT's relative position bias and no input LayerNorm; this is a data2vec 2.0 "
                          "image encoder (encoder.position=sincos or encoder.input_norm=true), which the hf format cannot represent")
    missing = [a for a in ("patch_embed", "cls_token", "mask_embedding", "rel_pos_bias", "grid") if not hasattr(enc, a)]
    if missing:
        raise ExportError(f"{type(enc).__name__} is not the d2v-plugin-image encoder (no {', '.join(missing)})")
    h, w = enc.grid
    if h != w:
        raise ExportError(f"the patch grid is {h}x{w}: Data2VecVisionModel resamples the relative position table "
                          "for non-square grids, so only square grids export exactly")


def hf_config(model: nn.Module, cfg: RunConfig) -> Any:
    """The ``Data2VecVisionConfig`` of a pretrained data2vec_vision model with these sizes."""
    m, enc = cfg.model, model.encoder
    return _transformers().Data2VecVisionConfig(
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

    tf = _transformers()
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        raise ExportError(f"{config_file} is not a JSON object: {_first_line(exc)}") from None
    if model_type != "data2vec-vision":
        raise ExportError(f"{src} holds a {model_type!r} model; the image modality imports 'data2vec-vision' "
                          "(Data2VecVisionModel) directories")
    config = _transformers().Data2VecVisionConfig.from_pretrained(str(src), local_files_only=True, trust_remote_code=False)
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
        tf = _transformers()
        check_exportable(model, cfg)
        config = hf_config(model, cfg)
        state = to_hf_state_dict(model.teacher_scope().state_dict(), cfg.model.depth, cfg.model.qkv_bias)
        hf = tf.Data2VecVisionModel(config, add_pooling_layer=False)
        for key, value in hf.state_dict().items():  # derived buffers, persistent in some versions
            if "relative_position_index" in key:
                state.setdefault(key, value)
        try:
            hf.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ExportError(f"the weights do not fit Data2VecVisionModel: {_first_line(exc)}") from None
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
        with _quiet_transformers():
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
        tf = _transformers()
        config = _hf_config_of(src_dir)[0]
        try:
            with _quiet_transformers():
                hf, info = tf.Data2VecVisionModel.from_pretrained(str(src_dir), config=config, add_pooling_layer=False,
                                                                  output_loading_info=True, local_files_only=True,
                                                                  trust_remote_code=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ExportError(f"cannot load {src_dir} as Data2VecVisionModel: {_first_line(exc)}") from None
        bad = sorted(str(k) for k in [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())])
        bad += sorted(k for k in info.get("unexpected_keys", ())
                      if not k.startswith(HEAD_PREFIXES) and "relative_position_index" not in k)
        if bad:
            raise ExportError(f"{src_dir}: weights do not match its config.json ({', '.join(bad[:3])})")
        state, unknown = from_hf_state_dict(hf.state_dict())
        if unknown:
            raise ExportError(f"{src_dir}: no d2v counterpart for {', '.join(unknown[:3])}")
        try:
            missing, unexpected = model.teacher_scope().load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise ExportError(f"{src_dir}: weights do not fit the d2v model: {_first_line(exc)}") from None
        allowed = set() if config.use_mask_token else {_MASK}
        if set(missing) - allowed or unexpected:
            raise ExportError(f"{src_dir}: weights do not fit the d2v model (missing {sorted(set(missing) - allowed)[:3]}, "
                              f"unexpected {unexpected[:3]})")
        if not config.use_mask_token:
            warnings.warn(f"{src_dir} has no mask_token (use_mask_token=false): the mask embedding starts from its "
                          "initialisation", stacklevel=2)
