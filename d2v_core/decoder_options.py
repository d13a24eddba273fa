"""Options of data2vec 2.0's convolutional decoders (pydantic, no torch).

Defaults are fairseq's ``D2vDecoderConfig``; the presets set each modality's values
(spec section 2.1: audio 384 channels, kernel 7, groups 16, 4 layers; text 768, 9, 1, 5 layers,
no residual, a 2-layer projection; image 768, 3, 16, 6 layers).
"""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from d2v_core.config import Options


class ConvDecoderOptions(Options):
    """``layers`` blocks of ``Conv(k=kernel, groups) -> LayerNorm (no affine) -> GELU`` with
    ``channels`` outputs, a residual around every block whose input has its width (``residual``),
    then a projection back to the model width: one Linear, or with ``projection_layers`` > 1 a
    ``Linear(channels, ratio*channels) -> GELU -> ... -> Linear(.., dim)`` stack. Dropout
    ``input_dropout`` is applied to the encoded steps before the masked ones are filled in."""

    channels: PositiveInt = 384
    kernel: PositiveInt = 5
    groups: PositiveInt = 16
    layers: PositiveInt = 5
    residual: bool = True
    projection_layers: PositiveInt = 1
    projection_ratio: PositiveFloat = 2.0
    input_dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _groups_divide(self) -> "ConvDecoderOptions":
        if self.channels % self.groups:
            raise ValueError(f"channels ({self.channels}) must be divisible by groups ({self.groups})")
        return self
