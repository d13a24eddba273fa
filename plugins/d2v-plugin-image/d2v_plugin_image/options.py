"""Option models of the image modality (pydantic, no torch): encoder, data and block masker."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, NonNegativeFloat, PositiveInt, model_validator

from d2v_core.config import StrictModel

#: BEiT's block-mask numbers (``min_num_patches``) are given for this many patches (14 x 14).
REFERENCE_PATCHES = 196


class ImageEncoderOptions(StrictModel):
    """The patch embedding: square ``image_size`` cut into ``patch_size`` patches (ViT-B/16: 224/16).

    The relative position bias table is sized for this grid, so the data must produce images of
    exactly ``image_size``.

    - ``position``: ``relative`` (BEiT / data2vec: a learned relative position bias shared by all
      layers), ``sincos-mae`` (MAE's exact table, as fairseq's data2vec 2.0 stores it: checkpoints
      imported from fairseq use it; it is saved with the checkpoint) or ``sincos`` (data2vec 2.0 /
      MAE: a fixed 2-D sine-cosine embedding added to the
      patches before masking).
    - ``input_norm``: a LayerNorm after the CLS token is prepended (data2vec 2.0's context encoder).
    - ``init``: ``beit`` (truncated normal, std ``init_std``, for the patch conv, CLS and mask
      token) or ``mae`` (data2vec 2.0: Xavier-uniform patch conv on its flattened weight, CLS
      N(0, 1)).
    """

    image_size: PositiveInt = 224
    patch_size: PositiveInt = 16
    init_std: float = Field(0.02, gt=0.0)
    position: Literal["relative", "sincos", "sincos-mae"] = "relative"
    input_norm: bool = False
    init: Literal["beit", "mae"] = "beit"

    @model_validator(mode="after")
    def _patches_tile_image(self) -> "ImageEncoderOptions":
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        return self


class ImageDataOptions(StrictModel):
    """Decoding and augmentation (data2vec_vision / BEiT recipe).

    Training augmentation, in BEiT's order: ColorJitter(``color_jitter`` for brightness, contrast
    and saturation), horizontal flip with probability ``hflip``, random resized crop (area
    fraction ``crop_scale``, aspect ``crop_ratio``, ``interpolation``) to ``image_size``, then
    ImageNet mean/std normalisation. Without ``augment``: resize the short side and centre-crop.
    ``image_size`` ``None`` means the encoder's ``image_size`` (the two must agree).
    ``max_pixels``: the size limit, width x height read from the file's header before decoding;
    larger images are skipped as ``too_large`` (a 12000x12000 PNG would take ~3 GB to decode).
    """

    image_size: Optional[PositiveInt] = None
    augment: bool = True
    color_jitter: NonNegativeFloat = 0.4
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    max_pixels: PositiveInt = 40_000_000

    @model_validator(mode="after")
    def _ranges(self) -> "ImageDataOptions":
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {list(self.crop_scale)}")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {list(self.crop_ratio)}")
        return self


class BlockMaskOptions(StrictModel):
    """BEiT block-wise masking.

    ``mask_ratio`` of the patches are masked (BEiT/data2vec: 120 of 196) with rectangular blocks
    of at least ``min_num_patches`` patches (a number for the 14 x 14 grid; other grids scale it
    by their patch count / 196) whose aspect ratio is log-uniform in [1/``max_aspect``,
    ``max_aspect``]; each block gets at most ``max_attempts`` placements.
    """

    mask_ratio: float = Field(120 / REFERENCE_PATCHES, gt=0.0, lt=1.0)
    min_num_patches: PositiveInt = 16
    max_aspect: float = Field(1 / 0.3, ge=1.0)
    max_attempts: PositiveInt = 10
