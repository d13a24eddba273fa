"""``text-random`` masker: data2vec 2.0 text masking (MAE ``random_masking``, fairseq
``examples/data2vec/models/modalities/base.py``), re-implemented in torch.

MAE keeps the ``int(L * (1 - mask_prob))`` steps with the smallest random keys and masks the
other ``L - int(L * (1 - mask_prob))``, so every row masks the same number: data2vec 2.0 then
encodes only the kept tokens of each clone in one dense batch. Padding is never masked; with
padding the count comes from the batch's shortest unpadded row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from d2v_core import Masker, MaskRequest, exact_count

from d2v_plugin_text.options import RandomMaskOptions


def masked_count(length: int, mask_prob: float) -> int:
    """Masked steps of a row of ``length`` (MAE: ``length - len_keep``)."""
    return length - int(length * (1 - mask_prob))


def random_mask(valid: Tensor, mask_prob: float, generator: torch.Generator) -> Tensor:
    """(B, T) bool: in every row the same ``masked_count(shortest valid length, mask_prob)`` of
    its ``valid`` steps, chosen uniformly without replacement."""
    batch = valid.shape[0]
    n = masked_count(int(valid.sum(-1).min()), mask_prob) if batch else 0
    return exact_count(torch.zeros_like(valid), valid, n, generator)


class RandomMasker(Masker):
    """Exactly ``L - int(L * (1 - mask_prob))`` tokens of every row, uniformly (``L``: the
    shortest unpadded row of the batch)."""

    equal_counts = True

    def __init__(self, options: RandomMaskOptions | None = None) -> None:
        self.options = options or RandomMaskOptions()

    @property
    def expected_ratio(self) -> float:
        return self.options.mask_prob

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> Tensor:
        return random_mask(request.valid_steps(), self.options.mask_prob, generator)


def build_random_masker(options: RandomMaskOptions | None = None) -> RandomMasker:
    """Factory registered as masker ``text-random``."""
    return RandomMasker(options)
