"""The ``random`` masker: round(mask_prob * length) steps of each row, uniformly (MAE-style)."""

from __future__ import annotations

import torch
from torch import Tensor

from d2v_core.interfaces import MaskRequest, Masker
from d2v_plugin_example.options import RandomMaskerOptions


def random_mask(lengths: Tensor, total: int, mask_prob: float, generator: torch.Generator) -> Tensor:
    """(B, total) bool: in row b, round(mask_prob * lengths[b]) (at least 1) of the first
    lengths[b] steps, chosen uniformly without replacement."""
    mask = torch.zeros(len(lengths), total, dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        k = max(1, round(mask_prob * n))
        mask[b, torch.randperm(n, generator=generator)[:k]] = True
    return mask


class RandomMasker(Masker):
    def __init__(self, options: RandomMaskerOptions | None = None) -> None:
        self.mask_prob = (options or RandomMaskerOptions()).mask_prob

    @property
    def expected_ratio(self) -> float:
        return self.mask_prob

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> Tensor:
        return random_mask(request.valid_lengths(), request.length, self.mask_prob, generator)
