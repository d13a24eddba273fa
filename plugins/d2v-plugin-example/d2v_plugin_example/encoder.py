"""The FeatureEncoder: a linear projection of each vector, learned positions and a LayerNorm."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from d2v_core import Batch, BuildContext, Context, FeatureEncoder, Features

from d2v_plugin_example.options import VectorEncoderOptions


class VectorEncoder(FeatureEncoder):
    def __init__(self, input_dim: int, dim: int, max_positions: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(input_dim, dim)
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())
        self.pos_embed = nn.Embedding(max_positions, dim)
        self.layer_norm = nn.LayerNorm(dim, eps=norm_eps)

    def embed(self, batch: Batch) -> Features:
        return Features(self.proj(batch["vectors"]), batch.get("padding_mask"))

    def contextualize(self, x: Tensor, padding_mask: Tensor | None) -> Context:
        positions = torch.arange(x.shape[1], device=x.device)
        return Context(self.layer_norm(x + self.pos_embed(positions)), padding_mask)


def build_encoder(options: VectorEncoderOptions, ctx: BuildContext) -> VectorEncoder:
    """The modality's encoder factory: its options and the model's width and LayerNorm eps."""
    return VectorEncoder(options.input_dim, ctx.dim, options.max_positions, ctx.norm_eps)
