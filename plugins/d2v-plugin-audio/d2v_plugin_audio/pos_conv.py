"""data2vec's convolutional positional embedding: a stack of grouped convolutions.

fairseq ``TransformerEncoder`` with ``pos_conv_depth > 1`` (``wav2vec2.py:L1019-1047``): each
block is ``Conv1d(D, D, k, pad=k//2, groups) -> SamePad -> LayerNorm(D, no affine) -> GELU``.
No weight norm and no special init (PyTorch defaults). Names follow transformers'
``Data2VecAudioPositionalConvEmbedding`` (``layers.{j}.conv``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PositionalConvLayer(nn.Module):
    """One block on (B, D, T); an even kernel drops the last output step to keep length T."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
        self.remove_last = kernel % 2 == 0
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.remove_last:
            x = x[:, :, :-1]
        x = F.layer_norm(x.transpose(1, 2), (self.dim,)).transpose(1, 2)
        return F.gelu(x)


class PositionalConvEmbedding(nn.Module):
    """(B, T, D) -> (B, T, D) relative positional signal, added to the input by the caller."""

    def __init__(self, dim: int, depth: int = 5, kernel: int = 19, groups: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList(PositionalConvLayer(dim, kernel, groups) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return x.transpose(1, 2)
