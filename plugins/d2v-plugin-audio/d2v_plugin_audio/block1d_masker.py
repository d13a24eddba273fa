"""The ``block-1d`` masker: data2vec 2.0 audio masking (fairseq ``compute_block_mask_1d``).

Semantics of ``fairseq/data/data_utils.py:compute_block_mask_1d`` with ``inverse_mask=False``,
``require_same_masks=True`` and no ``expand_adjcent``/``mask_dropout``/``non_overlapping``
(data2vec 2.0 audio, spec section 2.3), re-implemented in torch:

1. ``int(T * ((mask_prob + mask_prob_adjust) / mask_length))`` centres per row, uniform with
   replacement; each masks ``mask_length`` steps starting ``mask_length // 2`` before it,
   clamped to the row;
2. random trimming or topping-up to exactly ``int(T * mask_prob)`` masked steps per row.

data2vec 2.0 encodes only the visible steps of each clone, so every row must have the same
count. With padding, centres are drawn over each row's own unpadded steps and every row gets the
count of the shortest one. All randomness comes from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from d2v_core import Masker, MaskRequest, exact_count, uniform_keys

from d2v_plugin_audio.options import Block1dMaskerOptions


def span_mask_1d(lengths: Tensor, length: int, num_centres: Tensor, mask_length: int, generator: torch.Generator) -> Tensor:
    """(B, length) bool, before the count adjustment: row ``b`` gets ``num_centres[b]`` centres
    uniform over ``[0, lengths[b])`` (with replacement), each masking
    ``[c - mask_length // 2, c - mask_length // 2 + mask_length)`` clamped to ``[0, lengths[b])``."""
    batch = lengths.numel()
    mask = torch.zeros(batch, length, dtype=torch.bool)
    k = int(num_centres.max()) if batch else 0
    if k == 0:
        return mask
    last = (lengths - 1).clamp(min=0)[:, None]
    centres = torch.minimum((uniform_keys((batch, k), generator) * lengths[:, None]).long(), last)
    offsets = torch.arange(mask_length) - mask_length // 2
    pos = torch.minimum((centres[:, :, None] + offsets).clamp(min=0), last[:, :, None])
    used = (torch.arange(k)[None, :] < num_centres[:, None])[:, :, None].expand_as(pos)
    rows = torch.arange(batch)[:, None, None].expand_as(pos)
    mask[rows[used], pos[used]] = True
    return mask


def block_mask_1d(
    lengths: Tensor, length: int, mask_prob: float, mask_length: int, mask_prob_adjust: float, generator: torch.Generator
) -> Tensor:
    """(B, length) bool with row ``b``'s steps ``0..lengths[b]-1`` standing for its unpadded
    steps: spans from :func:`span_mask_1d`, then exactly ``int(min(lengths) * mask_prob)``
    masked steps in every row."""
    lengths = lengths.long().cpu()
    # Python floats, in fairseq's order of operations, so the counts match its int() exactly
    per_step = (mask_prob + mask_prob_adjust) / mask_length
    num_centres = torch.tensor([int(t * per_step) for t in lengths.tolist()], dtype=torch.long)
    spans = span_mask_1d(lengths, length, num_centres, mask_length, generator)
    n = int(int(lengths.min()) * mask_prob) if lengths.numel() else 0
    valid = torch.arange(length)[None, :] < lengths[:, None]
    return exact_count(spans, valid, n, generator)


def to_valid_steps(compact: Tensor, valid: Tensor) -> Tensor:
    """Move column ``j`` of each row of ``compact`` to that row's ``j``-th valid step (any
    padding layout); columns past a row's valid count must be False."""
    # a stable sort lists each row's valid steps first, in order
    order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices
    return torch.zeros_like(compact).scatter_(1, order, compact)


class Block1dMasker(Masker):
    """data2vec 2.0 audio masking: spans of ``mask_length`` frames, exactly ``int(mask_prob * T)``
    masked frames in every row (``T``: the shortest unpadded row), never in padding."""

    equal_counts = True

    def __init__(self, options: Block1dMaskerOptions | None = None) -> None:
        self.options = options or Block1dMaskerOptions()

    @property
    def expected_ratio(self) -> float:
        return self.options.mask_prob

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> Tensor:
        pad = request.padding_mask
        valid = request.valid_steps()
        o = self.options
        compact = block_mask_1d(valid.sum(-1), request.length, o.mask_prob, o.mask_length, o.mask_prob_adjust, generator)
        return compact if pad is None else to_valid_steps(compact, valid)


def build_block1d_masker(options: Block1dMaskerOptions | None = None) -> Block1dMasker:
    """Factory registered as masker ``block-1d``."""
    return Block1dMasker(options)
