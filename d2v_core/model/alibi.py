"""ALiBi attention biases (Press et al., 2022), symmetric, as data2vec 2.0 audio uses them.

fairseq ``get_alibi`` (``examples/data2vec/models/modalities/base.py``): head h gets slope
``s_h`` from the geometric sequence of the ALiBi paper and the bias ``-s_h * |i - j|``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def alibi_slopes(heads: int) -> list[float]:
    """The ALiBi slopes: ``2^(-8/n), 2^(-16/n), ...`` for a power of two ``n``; otherwise those of
    the closest smaller power of two, then every other slope of the next power of two."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: heads - closest]


def alibi_bias(length: int, heads: int, device: torch.device | str | None = None) -> Tensor:
    """(heads, length, length) float32: ``-slope_h * |i - j|``."""
    pos = torch.arange(length, device=device)
    distance = (pos[None, :] - pos[:, None]).abs().to(torch.float32)
    slopes = torch.tensor(alibi_slopes(heads), dtype=torch.float32, device=device)
    return -slopes[:, None, None] * distance
