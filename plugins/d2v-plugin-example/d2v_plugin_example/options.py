"""Option models (pydantic; validated by the core when it resolves a run config)."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from d2v_core import Options


class VectorEncoderOptions(Options):
    input_dim: PositiveInt = 16
    max_positions: PositiveInt = 512


class VectorDataOptions(Options):
    max_len: PositiveInt = 256
    min_len: PositiveInt = 4


class RandomMaskerOptions(Options):
    mask_prob: float = Field(0.5, gt=0.0, lt=1.0)
