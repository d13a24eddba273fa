"""The ``random`` masker: round(mask_prob * length) steps of each row, uniformly (MAE-style)."""

from __future__ import annotations

import torch
from torch import Tensor

from d2v_core import Masker, MaskRequest

from d2v_plugin_example.options import RandomMaskerOptions


def random_mask(valid: Tensor, mask_prob: float, generator: torch.Generator) -> Tensor:
    """(B, T) bool: in row b, round(mask_prob * n_b) (at least 1) of its n_b valid steps
    (``valid``: (B, T) bool, True where not padding), chosen uniformly without replacement."""
    mask = torch.zeros_like(valid)
    for b in range(valid.shape[0]):
        steps = valid[b].nonzero().flatten()
        k = max(1, round(mask_prob * len(steps)))
        mask[b, steps[torch.randperm(len(steps), generator=generator)[:k]]] = True
    return mask


class RandomMasker(Masker):
    def __init__(self, options: RandomMaskerOptions | None = None) -> None:
        self.mask_prob = (options or RandomMaskerOptions()).mask_prob

    @property
    def expected_ratio(self) -> float:
        return self.mask_prob

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> Tensor:
        pad = request.padding_mask
        valid = torch.ones(request.batch_size, request.length, dtype=torch.bool) if pad is None else ~pad.bool()
        return random_mask(valid, self.mask_prob, generator)
