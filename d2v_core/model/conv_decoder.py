"""data2vec 2.0's 1-D convolutional decoder (audio and text), and the pieces a 2-D one shares.

fairseq ``Decoder1d`` (``examples/data2vec/models/modalities/modules.py``): blocks of
``Conv1d -> SamePad -> LayerNorm (no affine) -> GELU``, a residual around each block whose
input has the block's width, then a projection to the model width. The input dropout is the
core's to apply (to the encoded steps only, before the noise goes in).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from d2v_core.decoder_options import ConvDecoderOptions
from d2v_core.interfaces import Decoder


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


def channel_layer_norm(x: Tensor, channel_dim: int = 1) -> Tensor:
    """LayerNorm without affine over the channels of a (B, C, ...) tensor."""
    moved = x.movedim(channel_dim, -1)
    return F.layer_norm(moved, moved.shape[-1:]).movedim(-1, channel_dim)


class ConvBlock1d(nn.Module):
    """``Conv1d(k, groups)`` keeping the length (an even kernel drops the last step, fairseq
    ``SamePad``), LayerNorm over channels, GELU; on (B, C, T)."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, padding=kernel // 2, groups=groups)
        self.remove_last = kernel % 2 == 0

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.remove_last:
            x = x[..., :-1]
        return F.gelu(channel_layer_norm(x))


class ConvDecoder1d(Decoder):
    """(B, T, D) -> (B, T, D) along time."""

    def __init__(self, options: ConvDecoderOptions, dim: int) -> None:
        super().__init__()
        o = options
        if dim % o.groups:
            raise ValueError(f"model.dim ({dim}) must be divisible by decoder.options.groups ({o.groups})")
        self.residual = o.residual
        self.input_dropout = o.input_dropout
        self.blocks = nn.ModuleList(
            ConvBlock1d(dim if i == 0 else o.channels, o.channels, o.kernel, o.groups) for i in range(o.layers)
        )
        self.proj = decoder_projection(o.channels, dim, o.projection_layers, o.projection_ratio)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, grid: tuple[int, ...] | None = None) -> Tensor:
        x = x.transpose(1, 2)
        for block in self.blocks:
            y = block(x)
            x = y + x if self.residual and y.shape == x.shape else y
        return self.proj(x.transpose(1, 2))


def build_conv_decoder_1d(options: ConvDecoderOptions | None, dim: int) -> ConvDecoder1d:
    """Factory of the core's ``conv1d`` decoder component."""
    return ConvDecoder1d(options or ConvDecoderOptions(), dim)
