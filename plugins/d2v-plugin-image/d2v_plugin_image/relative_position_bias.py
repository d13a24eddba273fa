"""BEiT's shared relative position bias (one table for all layers, as data2vec_vision uses it)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def relative_position_index(grid: tuple[int, int]) -> Tensor:
    """(N+1, N+1) long index into a table of ``(2h-1)(2w-1) + 3`` rows for an h x w grid plus CLS.

    Patch pairs index their (dy, dx) offset; the last three rows are CLS->patch, patch->CLS and
    CLS->CLS. Identical to BEiT's ``RelativePositionBias`` and Hugging Face's
    ``Data2VecVisionRelativePositionBias.generate_relative_position_index``.
    """
    h, w = grid
    num_relative_distance = (2 * h - 1) * (2 * w - 1) + 3
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # N, N, 2
    rel[:, :, 0] += h - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    index = torch.zeros((h * w + 1, h * w + 1), dtype=torch.long)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:] = num_relative_distance - 3
    index[0:, 0] = num_relative_distance - 2
    index[0, 0] = num_relative_distance - 1
    return index


class RelativePositionBias(nn.Module):
    """A learned bias per head for every (query, key) offset on the patch grid, plus CLS.

    ``relative_position_bias_table`` ((2h-1)(2w-1)+3, heads) starts at zero, as in BEiT. Calling
    the module gives the additive attention bias (1, heads, N+1, N+1).
    """

    def __init__(self, grid: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_heads = num_heads
        num_relative_distance = (2 * self.grid[0] - 1) * (2 * self.grid[1] - 1) + 3
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_relative_distance, num_heads))
        # Derived from the grid, so not saved (Hugging Face ignores the key on load as well).
        self.register_buffer("relative_position_index", relative_position_index(self.grid), persistent=False)

    def forward(self) -> Tensor:
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)
