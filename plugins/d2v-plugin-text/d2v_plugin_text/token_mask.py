"""fairseq's masked-LM choice of positions, as a pure function of the padding and a generator."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_token_mask(
    batch_size: int,
    length: int,
    padding_mask: Tensor | None,
    mask_prob: float,
    span_length: int,
    generator: torch.Generator,
) -> Tensor:
    """Bool (B, T) mask, True at positions chosen for prediction, never at padding.

    Per row with ``n`` non-pad tokens (fairseq ``MaskTokensDataset``, ``mask_multiple_length``):
    ``k = int(mask_prob * n / span_length + U[0,1))`` distinct start tokens are drawn uniformly
    without replacement; each masks itself and the next ``span_length - 1`` non-pad tokens (cut
    at the row's end; spans may overlap). ``span_length=1`` is BERT's ``int(mask_prob*n + U)``.
    Every non-pad token may be chosen, ``<s>`` and ``</s>`` included, as in fairseq.
    """
    mask = torch.zeros(batch_size, length, dtype=torch.bool)
    valid = torch.ones(batch_size, length, dtype=torch.bool) if padding_mask is None else ~padding_mask.bool().cpu()
    offsets = torch.arange(span_length)
    for b in range(batch_size):
        positions = valid[b].nonzero().squeeze(-1)  # non-pad steps, in order (any padding layout)
        n = int(positions.numel())
        if n == 0:
            continue
        k = min(n, int(mask_prob * n / span_length + float(torch.rand((), generator=generator))))
        if k == 0:
            continue
        starts = torch.randperm(n, generator=generator)[:k]
        idx = (starts[:, None] + offsets).flatten()
        mask[b, positions[idx[idx < n]]] = True
    return mask
