"""data2vec 2.0's convolutional decoders: the shared block stack, and the 1-D one (audio, text).

fairseq ``Decoder1d`` / ``Decoder2d`` (``examples/data2vec/models/modalities/modules.py``): blocks
of ``Conv -> SamePad -> LayerNorm over channels (no affine) -> GELU``, a residual around each
block whose input has the block's width, then a projection to the model width. The input
dropout is the core's to apply (to the encoded steps only, before the noise goes in).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from d2v_core.decoder_options import ConvDecoderOptions
from d2v_core.interfaces import BuildContext, Decoder


def decoder_projection(channels: int, dim: int, layers: int = 1, ratio: float = 2.0) -> nn.Module:
    """``Linear(channels, dim)``, or for ``layers`` > 1: Linear to ``ratio * channels``, GELU,
    (Linear, GELU) at that width, then Linear to ``dim`` (fairseq ``projection_layers``)."""
    mods: list[nn.Module] = []
    width = channels
    for i in range(layers - 1):
        nxt = int(width * ratio) if i == 0 else width
        mods += [nn.Linear(width, nxt), nn.GELU()]
        width = nxt
    mods.append(nn.Linear(width, dim))
    return mods[0] if len(mods) == 1 else nn.Sequential(*mods)


class ConvBlock(nn.Module):
    """``Conv{1,2}d(k, groups)`` keeping the size (an even kernel drops the last step of each
    spatial dim, fairseq ``SamePad``/``SamePad2d``), LayerNorm over channels, GELU; on (B, C, ...)."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, groups: int, ndim: int = 1) -> None:
        super().__init__()
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        self.conv = conv(in_dim, out_dim, kernel, padding=kernel // 2, groups=groups)
        self.trim = (slice(None), slice(None)) + (slice(None, -1),) * ndim if kernel % 2 == 0 else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.trim is not None:
            x = x[self.trim]
        x = F.layer_norm(x.movedim(1, -1), (x.shape[1],)).movedim(-1, 1)
        return F.gelu(x)


class ConvDecoder(Decoder):
    """The block stack and projection of a conv decoder; a subclass sets ``ndim`` and lays the
    (B, T, D) sequence out as (B, D, ...) in :meth:`to_channels`."""

    ndim = 1

    def __init__(self, options: ConvDecoderOptions, dim: int) -> None:
        super().__init__()
        o = options
        if dim % o.groups:
            raise ValueError(f"model.dim ({dim}) must be divisible by decoder.options.groups ({o.groups})")
        self.residual = o.residual
        self.input_dropout = o.input_dropout
        self.blocks = nn.ModuleList(
            ConvBlock(dim if i == 0 else o.channels, o.channels, o.kernel, o.groups, self.ndim) for i in range(o.layers)
        )
        self.proj = decoder_projection(o.channels, dim, o.projection_layers, o.projection_ratio)

    def to_channels(self, x: Tensor, grid: tuple[int, ...] | None) -> Tensor:
        return x.transpose(1, 2)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, grid: tuple[int, ...] | None = None) -> Tensor:
        h = self.to_channels(x, grid)
        for block in self.blocks:
            y = block(h)
            h = y + h if self.residual and y.shape == h.shape else y
        return self.proj(h.flatten(2).transpose(1, 2))


class ConvDecoder1d(ConvDecoder):
    """(B, T, D) -> (B, T, D), convolving along time."""


def build_conv_decoder_1d(options: ConvDecoderOptions | None, ctx: BuildContext) -> ConvDecoder1d:
    """Factory of the core's ``conv1d`` decoder component (``ctx.dim``: the model width)."""
    return ConvDecoder1d(options or ConvDecoderOptions(), ctx.dim)
