"""data2vec 2.0's 2-D convolutional decoder for images (fairseq ``Decoder2d``): the core's conv
decoder with ``Conv2d`` blocks on the (h, w) patch grid. The options are the core's
:class:`ConvDecoderOptions`.
"""

from __future__ import annotations

from torch import Tensor

from d2v_core import BuildContext, ConvDecoder, ConvDecoderOptions


class ConvDecoder2d(ConvDecoder):
    """(B, T, D) -> (B, T, D) on the ``grid`` (h, w) with h * w == T."""

    ndim = 2

    def to_channels(self, x: Tensor, grid: tuple[int, ...] | None) -> Tensor:
        B, T, D = x.shape
        if grid is None or len(grid) != 2 or grid[0] * grid[1] != T:
            raise ValueError(f"the 2-D decoder needs the patch grid of the {T} steps, got {grid}")
        return x.transpose(1, 2).reshape(B, D, grid[0], grid[1])


def build_conv_decoder_2d(options: ConvDecoderOptions | None, ctx: BuildContext) -> ConvDecoder2d:
    """Factory of the image plugin's ``conv2d`` decoder component (``ctx.dim``: the model width)."""
    return ConvDecoder2d(options or ConvDecoderOptions(), ctx.dim)
