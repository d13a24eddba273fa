"""Multi-head self-attention through ``F.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def build_attention_mask(padding_mask: Tensor | None, attn_bias: Tensor | None) -> Tensor | None:
    """One SDPA mask from a key-padding mask (B, T), True at pads, and an additive bias
    broadcastable to (B, H, T, T). A bool mask (True = attend) when there is no bias, so SDPA keeps
    its fast kernels and no dtype cast is needed under autocast."""
    if attn_bias is None:
        return None if padding_mask is None else ~padding_mask[:, None, None, :]
    if padding_mask is None:
        return attn_bias
    return attn_bias.masked_fill(padding_mask[:, None, None, :], float("-inf"))


class Attention(nn.Module):
    """Self-attention with one fused input projection ``qkv`` (3D, D).

    ``qkv_bias``: ``"qkv"`` (wav2vec 2.0 / RoBERTa: biases on q, k and v), ``"qv"`` (BEiT: no key
    bias, stored as ``q_bias`` and ``v_bias``) or ``"none"``.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: str = "qkv", attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias == "qkv")
        self.q_bias: nn.Parameter | None
        self.v_bias: nn.Parameter | None
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        B, T, D = x.shape
        bias: Tensor | None = self.qkv.bias
        if self.q_bias is not None and self.v_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(B, T, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is not None and attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
            attn_mask = attn_mask.to(q.dtype)
        drop = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))
