"""``span`` masker: spans of 4 tokens from 35%/4 of the positions (fairseq's released text config)."""

from __future__ import annotations

import torch
from torch import Tensor

from d2v_core import Masker, MaskRequest

from d2v_plugin_text.options import SpanMaskOptions
from d2v_plugin_text.token_mask import sample_token_mask


class SpanMasker(Masker):
    """``int(mask_prob * n / span_length + U)`` distinct starts per row, each masking
    ``span_length`` tokens; overlaps allowed, so 0.35 / 4 masks about 31% of the tokens."""

    def __init__(self, mask_prob: float = 0.35, span_length: int = 4) -> None:
        self.mask_prob = float(mask_prob)
        self.span_length = int(span_length)

    @property
    def expected_ratio(self) -> float:
        # Long-row limit: each token is covered by span_length possible starts, each drawn with
        # probability mask_prob / span_length (rows of a few hundred tokens are within ~0.005).
        return 1.0 - (1.0 - self.mask_prob / self.span_length) ** self.span_length

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> Tensor:
        return sample_token_mask(
            request.batch_size, request.length, request.padding_mask, self.mask_prob, self.span_length, generator
        )


def build_span_masker(options: SpanMaskOptions | None = None) -> SpanMasker:
    """Factory the registry calls with the validated ``masking.options``."""
    opts = options or SpanMaskOptions()
    return SpanMasker(opts.mask_prob, opts.span_length)
