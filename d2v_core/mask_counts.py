"""Exact-count mask selection for maskers (pure functions): data2vec 2.0 needs every row of a
batch to mask the same number of steps, and its maskers trim or top up a drawn mask to that count.
"""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_keys(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Uniform float64 keys on the CPU, drawn from ``generator`` (on its device). float64 makes
    ties between keys, and the bias of ``floor(u * n)``, negligible."""
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device).cpu()


def exact_count(preferred: Tensor, valid: Tensor | None, n: int, generator: torch.Generator) -> Tensor:
    """(B, T) bool with exactly ``n`` True per row, all within ``valid`` (None: everywhere).

    A row with more than ``n`` ``preferred`` steps keeps a uniform random ``n`` of them; a row
    with fewer keeps them all and gets uniform random other valid steps added (fairseq's
    multinomial trim / top-up in ``compute_block_mask_1d/2d``; with nothing preferred, MAE's
    ``random_masking``). Needs ``n`` <= every row's valid count.
    """
    out = torch.zeros(preferred.shape, dtype=torch.bool)
    if n == 0 or preferred.shape[0] == 0:
        return out
    # preferred steps rank above the others, invalid ones below all; the random keys make the
    # cut inside the group that straddles rank n a uniform choice without replacement
    score = preferred.double() + uniform_keys(tuple(preferred.shape), generator)
    if valid is not None:
        score = torch.where(valid, score, torch.tensor(-1.0, dtype=torch.float64))
    return out.scatter_(1, score.topk(n, dim=1).indices, True)
