"""``bert`` masker: 15% of each row's tokens, chosen uniformly (the data2vec paper's text masking)."""

from __future__ import annotations

import torch
from torch import Tensor

from d2v_core import Masker, MaskRequest

from d2v_plugin_text.options import BertMaskOptions
from d2v_plugin_text.token_mask import sample_token_mask


class BertMasker(Masker):
    """``int(mask_prob * n + U[0,1))`` of each row's ``n`` non-pad tokens, without replacement.

    The chosen positions are all predicted; which of them the student sees as ``<mask>``, a
    random token or the original token is decided by the encoder's ``apply_mask`` (80/10/10).
    """

    def __init__(self, mask_prob: float = 0.15) -> None:
        self.mask_prob = float(mask_prob)

    @property
    def expected_ratio(self) -> float:
        return self.mask_prob  # E[int(p*n + U)] = p*n exactly

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> Tensor:
        return sample_token_mask(request.batch_size, request.length, request.padding_mask, self.mask_prob, 1, generator)


def build_bert_masker(options: BertMaskOptions | None = None) -> BertMasker:
    """Factory the registry calls with the validated ``masking.options``."""
    return BertMasker((options or BertMaskOptions()).mask_prob)
