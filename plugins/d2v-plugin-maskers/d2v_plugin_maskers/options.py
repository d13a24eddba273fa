"""Option models of the maskers plugin (pydantic, no torch: discovery imports nothing heavy)."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from d2v_core import Options


class InverseBlockMaskOptions(Options):
    """``masking.options`` of ``inverse-block`` (fairseq ``compute_block_mask_2d``,
    ``inverse_mask=True``; data2vec 2.0 image Base: 0.8, 3, 0.07; Large/Huge: 0.75, 3, 0.1).

    ``mask_prob`` is the masked fraction: the visible ``1 - mask_prob`` is drawn as
    ``mask_length`` x ``mask_length`` blocks around ``int(T * (1 - mask_prob + mask_prob_adjust)
    / mask_length**2)`` random centres, then trimmed or topped up to exactly
    ``int(T * (1 - mask_prob))`` visible patches. ``mask_prob_adjust`` over-provisions the
    blocks, whose overlaps would otherwise leave too few visible patches.
    """

    mask_prob: float = Field(0.8, gt=0.0, lt=1.0)
    mask_length: PositiveInt = 3
    mask_prob_adjust: float = Field(0.07, ge=0.0, le=1.0)
