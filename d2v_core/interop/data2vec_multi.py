"""What every modality of fairseq's data2vec 2.0 (``data2vec_multi``) shares: the Transformer
blocks and the config of the model around the modality encoder.

``examples/data2vec/models/data2vec2.py`` ``Data2VecMultiModel.__init__`` (L190-L260) builds
``blocks`` = ``depth`` x ``AltBlock(embed_dim, num_heads, mlp_ratio, qkv_bias=True)`` with
``LayerNorm(eps=norm_eps)``; ``modalities/modules.py`` ``AltBlock`` (L258-L323) holds
``norm1``, ``attn.qkv`` (fused, rows q, k, v), ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``
(timm ``Mlp``); its post-LN branch (``layer_norm_first: false``) is d2v's ``post_ln`` layer and
its FFN target (``ffn_targets``, unless ``end_of_block_targets``) is d2v's ``ffn`` source.
"""

from __future__ import annotations

from typing import Any

from d2v_core.errors import CheckpointError
from d2v_core.interop.key_map import Rename

#: ``Data2VecMultiConfig`` defaults (data2vec2.py L59-L140) for fields a config may omit.
MULTI_DEFAULTS: dict[str, Any] = {
    "depth": 8, "num_heads": 12, "norm_eps": 1e-6, "norm_affine": True, "encoder_dropout": 0.1,
    "post_mlp_drop": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.0,
    "layerdrop": 0.0, "embed_dim": 768, "mlp_ratio": 4.0, "layer_norm_first": False, "average_top_k_layers": 8,
    "end_of_block_targets": False, "clone_batch": 1, "layer_norm_target_layer": False, "batch_norm_target_layer": False,
    "instance_norm_target_layer": False, "instance_norm_targets": False, "layer_norm_targets": False,
    "ema_decay": 0.999, "ema_end_decay": 0.9999, "ema_encoder_only": True, "loss_beta": 0.0, "loss_scale": None,
    "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "cls_loss": 0.0,
}

BLOCK_RULES: tuple = (
    Rename("blocks.{i}.norm1.{kind}", "transformer.layers.{i}.attn_norm.{kind}"),
    Rename("blocks.{i}.attn.qkv.{kind}", "transformer.layers.{i}.attn.qkv.{kind}"),
    Rename("blocks.{i}.attn.proj.{kind}", "transformer.layers.{i}.attn.proj.{kind}"),
    Rename("blocks.{i}.norm2.{kind}", "transformer.layers.{i}.ffn_norm.{kind}"),
    Rename("blocks.{i}.mlp.fc1.{kind}", "transformer.layers.{i}.fc1.{kind}"),
    Rename("blocks.{i}.mlp.fc2.{kind}", "transformer.layers.{i}.fc2.{kind}"),
)


def block_rules(prefix: str = "blocks.", offset: int = 0, depth: int = 0) -> list[Rename]:
    """:data:`BLOCK_RULES` for ``depth`` blocks under ``prefix`` that become d2v layers
    ``offset..offset+depth-1`` (image models run ``prenet_depth`` modality blocks first)."""
    out = []
    for i in range(depth):
        for rule in BLOCK_RULES:
            out.append(Rename(rule.source.replace("blocks.{i}.", f"{prefix}{i}."),
                              rule.target.replace("layers.{i}.", f"layers.{i + offset}.")))
    return out


def multi_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """``data2vec_multi``'s config with its defaults filled in (plain data)."""
    return {**MULTI_DEFAULTS, **{k: v for k, v in model_cfg.items() if v is not None or k == "loss_scale"}}


def supported_modality(model_cfg: dict[str, Any]) -> str | None:
    """``"AUDIO"``, ``"IMAGE"`` or ``"TEXT"`` (the enum is read as its name), or None."""
    value = model_cfg.get("supported_modality")
    return value.upper() if isinstance(value, str) else None


def _norm(c: dict[str, Any], layer: bool) -> str:
    if layer:
        if c["batch_norm_target_layer"]:
            raise CheckpointError("batch_norm_target_layer is not supported by d2v (use instance or layer)")
        return "instance" if c["instance_norm_target_layer"] else "layer" if c["layer_norm_target_layer"] else "none"
    return "instance" if c["instance_norm_targets"] else "layer" if c["layer_norm_targets"] else "none"


def multi_run_config(c: dict[str, Any], what: str) -> dict[str, Any]:
    """The ``model``, ``targets``, ``loss``, ``ema`` and ``masking.clone_batch`` sections of a
    data2vec 2.0 checkpoint (modality parts are the importer's)."""
    problems = []
    if c["layer_norm_first"]:
        problems.append("layer_norm_first=true (AltBlock's pre-LN branch has no residual around the MLP; d2v does not copy that)")
    if not c["norm_affine"]:
        problems.append("norm_affine=false")
    if float(c["start_drop_path_rate"]) != float(c["end_drop_path_rate"]) and float(c["start_drop_path_rate"]) != 0.0:
        problems.append("a drop-path schedule that does not start at 0")
    if problems:
        raise CheckpointError(f"{what}: d2v cannot represent this data2vec_multi model: {'; '.join(problems)}")
    dim = int(c["embed_dim"])
    scale = c["loss_scale"]
    out: dict[str, Any] = {
        "model": {
            "dim": dim, "depth": int(c["depth"]), "heads": int(c["num_heads"]), "ffn_dim": int(dim * float(c["mlp_ratio"])),
            "layout": "post_ln", "qkv_bias": "qkv", "final_norm": False, "layer_scale_init": None,
            "norm_eps": float(c["norm_eps"]), "dropout": float(c["encoder_dropout"]),
            "attention_dropout": float(c["attention_dropout"]), "activation_dropout": float(c["activation_dropout"]),
            "drop_path": float(c["end_drop_path_rate"]), "layerdrop": float(c["layerdrop"]),
        },
        "targets": {"top_k": int(c["average_top_k_layers"]), "source": "block" if c["end_of_block_targets"] else "ffn",
                    "per_layer_norm": _norm(c, True), "post_norm": _norm(c, False)},
        "loss": {"beta": float(c["loss_beta"]), "cls_weight": float(c["cls_loss"]),
                 "scale": float(scale) if scale is not None and float(scale) > 0 else "inv_sqrt_dim"},
        "ema": {"decay": float(c["ema_decay"]), "end_decay": float(c["ema_end_decay"])},
        "masking": {"clone_batch": int(c["clone_batch"])},
    }
    if isinstance(c.get("ema_anneal_end_step"), int):
        out["ema"]["anneal_end_step"] = c["ema_anneal_end_step"]
    return out
