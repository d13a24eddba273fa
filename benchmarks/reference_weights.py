"""Copy a d2v student's weights into the transformers reference (for ``train_step.py --check``).

With every dropout off, the two steps must then give the same loss, step after step: evidence
that the reference does the same math as d2v and that the timing compares like with like. The
renames follow spec section 3 (the same ones an HF export uses).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

_AUDIO_LAYER = {"attn.proj": "attention.out_proj", "attn_norm": "layer_norm", "fc1": "feed_forward.intermediate_dense",
                "fc2": "feed_forward.output_dense", "ffn_norm": "final_layer_norm"}
_VISION_LAYER = {"attn.proj": "attention.output.dense", "attn_norm": "layernorm_before", "ffn_norm": "layernorm_after",
                 "fc1": "intermediate.dense", "fc2": "output.dense", "gamma_1": "lambda_1", "gamma_2": "lambda_2"}
_TEXT_LAYER = {"attn.proj": "attention.output.dense", "attn_norm": "attention.output.LayerNorm", "fc1": "intermediate.dense",
               "fc2": "output.dense", "ffn_norm": "output.LayerNorm"}


def _layers(state: dict[str, Tensor], prefix: str, renames: dict[str, str], qkv: tuple[str, str, str]) -> dict[str, Tensor]:
    """Transformer layers: split the fused ``qkv`` into three projections, rename the rest."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        m = re.match(r"transformer\.layers\.(\d+)\.(.+)$", name)
        if not m:
            continue
        i, rest = m.group(1), m.group(2)
        base = prefix.format(i=i)
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            for part, chunk in zip(qkv, t.chunk(3, dim=0), strict=True):
                out[f"{base}{part}.{kind}"] = chunk
        elif rest == "attn.q_bias":
            out[f"{base}{qkv[0]}.bias"] = t
        elif rest == "attn.v_bias":
            out[f"{base}{qkv[2]}.bias"] = t
        else:
            module, _, leaf = rest.rpartition(".")
            key = rest if module == "" else module
            if key in renames:
                out[f"{base}{renames[key]}" + ("" if module == "" else f".{leaf}")] = t
            else:
                raise KeyError(f"no reference name for {name}")
    return out


def reference_state(modality: str, state: dict[str, Tensor], hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The transformers model's state dict holding the d2v student's weights."""
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if modality == "audio":
        out = _layers(state, "encoder.layers.{i}.", _AUDIO_LAYER, ("attention.q_proj", "attention.k_proj", "attention.v_proj"))
        for k, v in enc.items():
            if k == "mask_embedding":
                out["masked_spec_embed"] = v
            elif k.startswith(("pos_conv_embed.", "layer_norm.")):
                out["encoder." + k] = v
            else:
                out[k] = v
    elif modality == "image":
        out = _layers(state, "encoder.layer.{i}.", _VISION_LAYER,
                      ("attention.attention.query", "attention.attention.key", "attention.attention.value"))
        out["embeddings.patch_embeddings.projection.weight"] = enc["patch_embed.proj.weight"]
        out["embeddings.patch_embeddings.projection.bias"] = enc["patch_embed.proj.bias"]
        out["embeddings.cls_token"] = enc["cls_token"]
        out["embeddings.mask_token"] = enc["mask_embedding"].view(1, 1, -1)
        out["encoder.relative_position_bias.relative_position_bias_table"] = enc["rel_pos_bias.relative_position_bias_table"]
        out["layernorm.weight"], out["layernorm.bias"] = state["transformer.norm.weight"], state["transformer.norm.bias"]
    elif modality == "text":
        out = _layers(state, "encoder.layer.{i}.", _TEXT_LAYER,
                      ("attention.self.query", "attention.self.key", "attention.self.value"))
        out["embeddings.word_embeddings.weight"] = enc["embed_tokens.weight"]
        out["embeddings.position_embeddings.weight"] = enc["embed_positions.weight"]
        out["embeddings.LayerNorm.weight"] = enc["layernorm_embedding.weight"]
        out["embeddings.LayerNorm.bias"] = enc["layernorm_embedding.bias"]
        out["embeddings.token_type_embeddings.weight"] = torch.zeros_like(hf_state["embeddings.token_type_embeddings.weight"])
    else:
        raise ValueError(modality)
    return out


@torch.no_grad()
def load_d2v_weights(ref, model) -> None:  # noqa: ANN001 - ReferenceStep, Data2Vec
    """Give ``ref`` (a ReferenceStep) the student and head weights of ``model`` (a Data2Vec) and
    re-make its teacher from them; raises if any tensor is left unmapped or mismatched."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    hf = ref.model.state_dict()
    mapped = reference_state(model.cfg.modality, state, hf)
    buffers = {n for n, _ in ref.model.named_buffers()}
    missing = [k for k in hf if k not in mapped and k not in buffers]
    unexpected = [k for k in mapped if k not in hf]
    if missing or unexpected:
        raise KeyError(f"weight map incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in mapped.items():
        if hf[k].shape != v.shape:
            raise ValueError(f"{k}: reference shape {tuple(hf[k].shape)} != d2v {tuple(v.shape)}")
    ref.model.load_state_dict(mapped, strict=False)
    ref.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    ref.reset_teacher()
