"""data2vec 2.0's 2-D convolutional decoder for images (fairseq ``Decoder2d``).

The (B, h*w, D) patch sequence is laid out on its grid; blocks of ``Conv2d -> LayerNorm over
channels (no affine) -> GELU`` (an even kernel drops the last row and column, fairseq
``SamePad2d``), a residual around each block whose input has its width, then ``Linear`` back to
the model width. The options are the core's :class:`ConvDecoderOptions`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from d2v_core import ConvDecoderOptions, Decoder, channel_layer_norm, decoder_projection


class ConvBlock2d(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel, padding=kernel // 2, groups=groups)
        self.remove_last = kernel % 2 == 0

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.remove_last:
            x = x[..., :-1, :-1]
        return F.gelu(channel_layer_norm(x))


class ConvDecoder2d(Decoder):
    """(B, T, D) -> (B, T, D) on the ``grid`` (h, w) with h * w == T."""

    def __init__(self, options: ConvDecoderOptions, dim: int) -> None:
        super().__init__()
        o = options
        if dim % o.groups:
            raise ValueError(f"model.dim ({dim}) must be divisible by decoder.options.groups ({o.groups})")
        self.residual = o.residual
        self.input_dropout = o.input_dropout
        self.blocks = nn.ModuleList(
            ConvBlock2d(dim if i == 0 else o.channels, o.channels, o.kernel, o.groups) for i in range(o.layers)
        )
        self.proj = decoder_projection(o.channels, dim, o.projection_layers, o.projection_ratio)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, grid: tuple[int, ...] | None = None) -> Tensor:
        B, T, D = x.shape
        if grid is None or len(grid) != 2 or grid[0] * grid[1] != T:
            raise ValueError(f"the 2-D decoder needs the patch grid of the {T} steps, got {grid}")
        h = x.transpose(1, 2).reshape(B, D, grid[0], grid[1])
        for block in self.blocks:
            y = block(h)
            h = y + h if self.residual and y.shape == h.shape else y
        return self.proj(h.flatten(2).transpose(1, 2))


def build_conv_decoder_2d(options: ConvDecoderOptions | None, dim: int) -> ConvDecoder2d:
    """Factory of the image plugin's ``conv2d`` decoder component."""
    return ConvDecoder2d(options or ConvDecoderOptions(), dim)
