"""BEiT's block-wise mask generator (``beit/masking_generator.py``), driven by a torch.Generator.

The algorithm is BEiT's, step for step: each block draws a target area uniformly between the
minimum block size and the patches still to mask, a log-uniform aspect ratio, a rounded
height/width and a uniform top-left corner; it is accepted if it adds between 1 and the
remaining number of patches, with at most ``max_attempts`` tries. Blocks are added until the
target count is reached or a block makes no progress, so a mask never exceeds the target count
and occasionally falls a few patches short. Python's ``random`` is replaced by uniforms drawn
from the generator, which makes masks reproducible from the generator's state.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from d2v_core import Masker, MaskRequest

from d2v_plugin_image.options import REFERENCE_PATCHES, BlockMaskOptions

Uniform = Callable[[], float]

#: Measured mean masked fraction minus the target ``mask_ratio`` (BEiT's loop sometimes stops a
#: few patches short): -0.0023 at 14 x 14 / 120 and -0.0042 at 8 x 8 / 39, measured over
#: 4,000 draws each; see tests/test_block_masker.py, which re-measures it.
MEASURED_SHORTFALL = 0.003


class GeneratorUniforms:
    """Uniform floats in [0, 1) from a ``torch.Generator``, drawn in chunks (one call per chunk)."""

    def __init__(self, generator: torch.Generator | None, chunk: int = 256) -> None:
        self.generator = generator
        self.chunk = chunk
        self._buf: list[float] = []
        self._pos = 0

    def __call__(self) -> float:
        if self._pos == len(self._buf):
            device = self.generator.device if self.generator is not None else "cpu"
            draws = torch.rand(self.chunk, generator=self.generator, dtype=torch.float64, device=device)
            self._buf = draws.cpu().tolist()
            self._pos = 0
        self._pos += 1
        return self._buf[self._pos - 1]


def scaled_counts(num_patches: int, mask_ratio: float, min_num_patches: int) -> tuple[int, int]:
    """(patches to mask, minimum block area) for a grid of ``num_patches``.

    The count is ``round(mask_ratio * num_patches)``; the minimum block (given for BEiT's 196
    patches) is scaled by ``num_patches / 196`` and kept at least 1.
    """
    num_mask = int(round(mask_ratio * num_patches))
    min_block = max(1, int(round(min_num_patches * num_patches / REFERENCE_PATCHES)))
    return num_mask, min_block


def block_shape(target_area: float, aspect_ratio: float) -> tuple[int, int]:
    """Height and width of a block of about ``target_area`` patches with height/width ``aspect_ratio``."""
    h = int(round(math.sqrt(target_area * aspect_ratio)))
    w = int(round(math.sqrt(target_area / aspect_ratio)))
    return h, w


def sample_block(
    uniform: Uniform, min_area: float, max_area: float, log_aspect: tuple[float, float]
) -> tuple[float, float, int, int]:
    """One block proposal: (target area, aspect ratio, height, width), as BEiT draws it."""
    target_area = min_area + (max_area - min_area) * uniform()
    aspect_ratio = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * uniform())
    h, w = block_shape(target_area, aspect_ratio)
    return target_area, aspect_ratio, h, w


def _randint(uniform: Uniform, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi], both inclusive (like ``random.randint``)."""
    return lo + min(int(uniform() * (hi - lo + 1)), hi - lo)


def _add_block(
    mask: np.ndarray, max_patches: int, min_block: int, log_aspect: tuple[float, float], uniform: Uniform,
    max_attempts: int,
) -> int:
    """Try to add one block adding 1..``max_patches`` new patches; returns how many it added."""
    height, width = mask.shape
    for _ in range(max_attempts):
        _, _, h, w = sample_block(uniform, min_block, max_patches, log_aspect)
        # BEiT requires the block to be strictly smaller than the grid on both sides.
        if w < width and h < height:
            top = _randint(uniform, 0, height - h)
            left = _randint(uniform, 0, width - w)
            window = mask[top: top + h, left: left + w]
            new = h * w - int(window.sum())
            if 0 < new <= max_patches:
                window[...] = True
                return new
    return 0


def block_mask(
    height: int,
    width: int,
    num_masking_patches: int,
    min_num_patches: int,
    log_aspect: tuple[float, float],
    uniform: Uniform,
    max_attempts: int = 10,
) -> np.ndarray:
    """A (height, width) bool mask of at most ``num_masking_patches`` patches made of blocks."""
    mask = np.zeros((height, width), dtype=bool)
    count = 0
    while count < num_masking_patches:
        delta = _add_block(mask, num_masking_patches - count, min_num_patches, log_aspect, uniform, max_attempts)
        if delta == 0:
            break
        count += delta
    return mask


class BlockMasker(Masker):
    """The ``block`` masker: BEiT block-wise masks on the request's 2-D patch ``grid``."""

    equal_counts = False

    def __init__(self, options: BlockMaskOptions | None = None) -> None:
        self.options = options or BlockMaskOptions()
        self.log_aspect = (-math.log(self.options.max_aspect), math.log(self.options.max_aspect))

    @property
    def expected_ratio(self) -> float:
        return self.options.mask_ratio - MEASURED_SHORTFALL

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> Tensor:
        grid = request.grid
        if grid is None or len(grid) != 2:
            raise ValueError(f"the block masker needs a 2-D patch grid (height, width), got grid={grid!r}")
        height, width = int(grid[0]), int(grid[1])
        if height * width != request.length:
            raise ValueError(f"grid {height}x{width} does not match the sequence length {request.length}")
        num_mask, min_block = scaled_counts(request.length, self.options.mask_ratio, self.options.min_num_patches)
        if request.batch_size == 0:
            return torch.zeros(0, request.length, dtype=torch.bool)
        uniform = GeneratorUniforms(generator)
        rows = [
            block_mask(height, width, num_mask, min_block, self.log_aspect, uniform, self.options.max_attempts)
            for _ in range(request.batch_size)
        ]
        mask = torch.from_numpy(np.stack(rows).reshape(request.batch_size, request.length))
        if request.padding_mask is not None:
            mask &= ~request.padding_mask.bool().cpu()
        return mask


def build_block_masker(options: BlockMaskOptions | None = None) -> BlockMasker:
    """Factory registered as masker ``block``."""
    return BlockMasker(options)
