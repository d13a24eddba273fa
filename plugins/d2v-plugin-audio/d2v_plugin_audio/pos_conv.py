"""data2vec's convolutional positional embedding: a stack of grouped convolutions.

fairseq ``TransformerEncoder`` with ``pos_conv_depth > 1`` (``wav2vec2.py:L1019-1047``): each
block is ``Conv1d(D, D, k, pad=k//2, groups) -> SamePad -> LayerNorm(D, no affine) -> GELU``.
No weight norm and no special init (PyTorch defaults). Names follow transformers'
``Data2VecAudioPositionalConvEmbedding`` (``layers.{j}.conv``). Each block is the core's
:class:`d2v_core.ConvBlock` (the 2.0 decoders' block).
"""

from __future__ import annotations

from torch import Tensor, nn

from d2v_core import ConvBlock


class PositionalConvEmbedding(nn.Module):
    """(B, T, D) -> (B, T, D) relative positional signal, added to the input by the caller."""

    def __init__(self, dim: int, depth: int = 5, kernel: int = 19, groups: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ConvBlock(dim, dim, kernel, groups) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return x.transpose(1, 2)
