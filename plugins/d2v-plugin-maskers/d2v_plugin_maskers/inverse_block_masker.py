"""The ``inverse-block`` masker: data2vec 2.0 image masking (fairseq ``compute_block_mask_2d``).

Semantics of ``fairseq/data/data_utils.py:compute_block_mask_2d`` with ``inverse_mask=True``,
``require_same_masks=True`` and no ``expand_adjcent``/``mask_dropout``/``non_overlapping``
(spec section 2.3), re-implemented in torch on an (h, w) patch grid of ``T = h * w`` patches:

1. ``keep = 1 - mask_prob``;
2. ``int(T * ((keep + mask_prob_adjust) / mask_length**2))`` centres per row, uniform with
   replacement, each grown to a ``mask_length`` x ``mask_length`` block (offsets
   ``-(mask_length // 2)`` on, clamped to the grid): the *visible* region;
3. random trimming or topping-up to exactly ``int(T * keep)`` visible patches;
4. invert: the rest is masked (157 of 196 at 14 x 14 with the defaults), the same in every row.

Images have no padding: a padding mask with any True step is refused (ValueError), since padded
patches would break both the grid and the equal count. All randomness comes from the caller's
``torch.Generator``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from d2v_core import Masker, MaskRequest, exact_count, uniform_keys

from d2v_plugin_maskers.options import InverseBlockMaskOptions


def block_region_2d(
    batch_size: int, height: int, width: int, num_centres: int, mask_length: int, generator: torch.Generator
) -> Tensor:
    """(B, h * w) bool, before the count adjustment: the union of ``num_centres`` blocks per row,
    each ``mask_length`` x ``mask_length`` around a uniform random patch, clamped to the grid."""
    total = height * width
    region = torch.zeros(batch_size, total, dtype=torch.bool)
    if num_centres == 0 or batch_size == 0:
        return region
    centres = (uniform_keys((batch_size, num_centres), generator) * total).long().clamp(max=total - 1)
    offsets = torch.arange(mask_length) - mask_length // 2
    rows = (centres // width)[:, :, None, None] + offsets[:, None]  # (B, k, m, 1)
    cols = (centres % width)[:, :, None, None] + offsets[None, :]  # (B, k, 1, m)
    flat = rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)
    return region.scatter_(1, flat.reshape(batch_size, -1), True)


def inverse_block_mask(
    batch_size: int,
    grid: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    mask_prob_adjust: float,
    generator: torch.Generator,
) -> Tensor:
    """(B, h * w) bool, True at masked patches: exactly ``T - int(T * (1 - mask_prob))`` per row,
    the visible rest made of blocks (module docstring)."""
    height, width = grid
    total = height * width
    keep = 1 - mask_prob
    # Python floats in fairseq's order of operations, so the counts match its int() exactly
    num_centres = int(total * ((keep + mask_prob_adjust) / mask_length**2))
    region = block_region_2d(batch_size, height, width, num_centres, mask_length, generator)
    return ~exact_count(region, None, int(total * keep), generator)


def _check_grid(request: MaskRequest) -> tuple[int, int]:
    grid = request.grid
    if grid is None or len(grid) != 2 or int(grid[0]) * int(grid[1]) != request.length:
        raise ValueError(
            f"masker 'inverse-block' needs the 2-D patch grid (height, width) with height*width == length, "
            f"got grid={grid!r} for length {request.length}; use it with a modality whose encoder reports "
            f"its patch grid (image), or pick another masker with --set masking.name=..."
        )
    return int(grid[0]), int(grid[1])


class InverseBlockMasker(Masker):
    """data2vec 2.0 inverse block masking on the request's patch ``grid``: ``mask_prob`` of the
    patches masked, exactly the same count in every row, the visible ones in blocks."""

    equal_counts = True

    def __init__(self, options: InverseBlockMaskOptions | None = None) -> None:
        self.options = options or InverseBlockMaskOptions()

    @property
    def expected_ratio(self) -> float:
        return self.options.mask_prob

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> Tensor:
        grid = _check_grid(request)
        pad = request.padding_mask
        if pad is not None and bool(pad.bool().any()):
            raise ValueError(
                f"masker 'inverse-block' masks whole patch grids and cannot take padding "
                f"({int(pad.bool().sum())} padded steps): give every image of a batch the same size"
            )
        o = self.options
        return inverse_block_mask(request.batch_size, grid, o.mask_prob, o.mask_length, o.mask_prob_adjust, generator)


def build_inverse_block_masker(options: InverseBlockMaskOptions | None = None) -> InverseBlockMasker:
    """Factory registered as masker ``inverse-block``."""
    return InverseBlockMasker(options)
