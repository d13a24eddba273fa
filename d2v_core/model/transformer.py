"""The core Transformer encoder: post-LN (wav2vec 2.0 / RoBERTa) or pre-LN with layer scale (BEiT).

Each layer also returns the intermediate data2vec regresses: ``ffn`` (the FFN output before
dropout and the residual, fairseq's ``layer_result`` / ``fc_results``) or ``block`` (the layer
output, data2vec_vision's ``layer_results='end'``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath
from torch import Tensor, nn

from d2v_core.config import TransformerConfig
from d2v_core.model.attention import Attention, build_attention_mask


@dataclass
class TransformerOutput:
    x: Tensor
    layers: list[Tensor] = field(default_factory=list)


class TransformerLayer(nn.Module):
    """One layer. Post-LN: ``x = LN1(x + drop(attn(x)))``, ``h = fc2(gelu(fc1(x)))``,
    ``x = LN2(x + drop(h))``. Pre-LN: ``x = x + dp(g1 * attn(LN1(x)))``, ``h = g2 * mlp(LN2(x))``,
    ``x = x + dp(h)``. Returns ``(x, h)``."""

    def __init__(self, cfg: TransformerConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.pre_ln = cfg.layout == "pre_ln"
        self.attn = Attention(cfg.dim, cfg.heads, cfg.qkv_bias, cfg.attention_dropout)
        self.attn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if cfg.layer_scale_init is not None:
            self.gamma_1 = nn.Parameter(torch.full((cfg.dim,), cfg.layer_scale_init))
            self.gamma_2 = nn.Parameter(torch.full((cfg.dim,), cfg.layer_scale_init))
        else:
            self.gamma_1 = self.gamma_2 = None

    def _ffn(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(F.gelu(self.fc1(x))))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self.pre_ln:
            x = self.attn_norm(x + self.drop_path(self.dropout(self.attn(x, attn_mask))))
            h = self._ffn(x)
            return self.ffn_norm(x + self.drop_path(self.dropout(h))), h
        a = self.dropout(self.attn(self.attn_norm(x), attn_mask))
        x = x + self.drop_path(a if self.gamma_1 is None else self.gamma_1 * a)
        h = self.dropout(self._ffn(self.ffn_norm(x)))
        if self.gamma_2 is not None:
            h = self.gamma_2 * h
        return x + self.drop_path(h), h


class Transformer(nn.Module):
    """A stack of :class:`TransformerLayer` with an optional final LayerNorm (pre-LN models)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()  # stochastic depth rule (BEiT/timm)
        self.layers = nn.ModuleList(TransformerLayer(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.final_norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``bert``: N(0, 0.02) Linear weights, zero biases (fairseq ``init_bert_params``).
        ``beit``: normal 0.02 truncated at +/-0.02, then ``attn.proj`` and ``fc2`` of layer i scaled by
        1/sqrt(2i) (BEiT ``fix_init_weight``)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                if self.cfg.init == "beit":  # BEiT's trunc_normal_ cuts at one std
                    nn.init.trunc_normal_(m.weight, std=0.02, a=-0.02, b=0.02)
                else:
                    nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.init == "beit":
            for i, layer in enumerate(self.layers, start=1):
                layer.attn.proj.weight.data.div_(math.sqrt(2.0 * i))
                layer.fc2.weight.data.div_(math.sqrt(2.0 * i))

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
        collect: str | None = None,
        collect_from: int = 0,
    ) -> TransformerOutput:
        """Run the layers; with ``collect`` ("ffn" or "block") also return the intermediates of
        layers ``collect_from..depth-1``. LayerDrop skips layers in training only. With
        ``activation_checkpointing`` each layer's activations are recomputed in the backward pass
        (training with grad only)."""
        attn_mask = build_attention_mask(padding_mask, attn_bias)
        layers: list[Tensor] = []
        layerdrop = self.cfg.layerdrop if self.training else 0.0
        # the student in training only: the teacher runs without grad and stores nothing
        recompute = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if layerdrop > 0 and torch.rand(()) < layerdrop:  # a CPU random number: no device sync
                continue
            if recompute:  # the RNG state is restored for the recomputation: same dropout masks
                x, h = torch.utils.checkpoint.checkpoint(layer, x, attn_mask, use_reentrant=False)
            else:
                x, h = layer(x, attn_mask)
            if collect is not None and i >= collect_from:
                layers.append(h if collect == "ffn" else x)
        if self.norm is not None:
            x = self.norm(x)
        return TransformerOutput(x, layers)
