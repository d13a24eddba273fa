"""Option models of the audio modality (pydantic, no torch): encoder, maskers, data.

Defaults are the data2vec v1 audio Base values (fairseq ``data2vec_audio`` +
``config/audio/pretraining/base_librispeech.yaml``); presets override them.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from d2v_core import Options

#: wav2vec 2.0 / data2vec conv stack: kernels and strides of the 7 layers (total stride 320 samples).
PAPER_CONV_KERNELS = [10, 3, 3, 3, 3, 2, 2]
PAPER_CONV_STRIDES = [5, 2, 2, 2, 2, 2, 2]


class AudioEncoderOptions(Options):
    """The local feature encoder: conv feature extractor (layer-norm mode) and the convolutional
    positional embedding. ``model.dim`` (the Transformer width) is the projection's output size.

    - ``conv_channels``: output channels of every conv layer (one number) or one per layer.
    - ``conv_kernels`` / ``conv_strides``: one entry per conv layer.
    - ``pos_conv_depth``/``pos_conv_kernel``/``pos_conv_groups``: the positional conv stack
      (fairseq ``pos_conv_depth 5``, ``conv_pos 95`` -> kernel ``max(3, 95 // 5) = 19``, groups 16).
    - ``alibi`` (data2vec 2.0 audio): add a symmetric ALiBi bias to every layer's attention logits,
      times a learned per-head scale that starts at ``alibi_scale_init`` (clamped at 0 in use).
    - ``pos_conv_zero_pads``: zero padded frames before the positional conv (fairseq data2vec 1.0,
      ``wav2vec2.py`` ``index_put``); data2vec 2.0's ``AudioEncoder`` does not, so checkpoints
      imported from it set this to false.
    """

    conv_channels: Union[PositiveInt, list[PositiveInt]] = 512
    conv_kernels: list[PositiveInt] = Field(default_factory=lambda: list(PAPER_CONV_KERNELS))
    conv_strides: list[PositiveInt] = Field(default_factory=lambda: list(PAPER_CONV_STRIDES))
    conv_bias: bool = False
    pos_conv_depth: PositiveInt = 5
    pos_conv_kernel: PositiveInt = 19
    pos_conv_groups: PositiveInt = 16
    alibi: bool = False
    alibi_scale_init: float = Field(1.0, ge=0.0)
    pos_conv_zero_pads: bool = True

    @model_validator(mode="after")
    def _layers_agree(self) -> "AudioEncoderOptions":
        n = len(self.conv_kernels)
        if n == 0:
            raise ValueError("conv_kernels must list at least one layer")
        if len(self.conv_strides) != n:
            raise ValueError(f"conv_strides has {len(self.conv_strides)} entries but conv_kernels has {n}; give one per conv layer")
        if isinstance(self.conv_channels, list) and len(self.conv_channels) != n:
            raise ValueError(f"conv_channels has {len(self.conv_channels)} entries but conv_kernels has {n}; give one number or one per layer")
        return self

    def conv_layers(self) -> list[tuple[int, int, int]]:
        """``(channels, kernel, stride)`` of each conv layer, as fairseq's ``conv_feature_layers``."""
        n = len(self.conv_kernels)
        channels = self.conv_channels if isinstance(self.conv_channels, list) else [self.conv_channels] * n
        return list(zip(channels, self.conv_kernels, self.conv_strides, strict=True))


class SpanMaskerOptions(Options):
    """fairseq ``compute_mask_indices`` (2022) with static span lengths.

    ``mask_prob`` is the expected fraction of steps that *start* a span times ``mask_length``
    (0.65 -> 6.5 % starts, about 49 % of steps masked once spans overlap).
    """

    mask_prob: float = Field(0.65, gt=0.0, le=1.0)
    mask_length: PositiveInt = 10
    min_masks: NonNegativeInt = 1
    require_same_masks: bool = True
    no_overlap: bool = False
    mask_min_space: NonNegativeInt = 1


class Block1dMaskerOptions(Options):
    """data2vec 2.0 audio masking (fairseq ``compute_block_mask_1d``, ``require_same_masks``).

    ``int(T * (mask_prob + mask_prob_adjust) / mask_length)`` random centres per row, each a span
    of ``mask_length`` frames, then exactly ``int(mask_prob * T)`` masked frames in every row
    (``T``: the batch's shortest unpadded row). ``mask_prob_adjust`` over-provisions the spans,
    whose overlaps would otherwise leave fewer than ``mask_prob * T`` frames to trim from.
    """

    mask_prob: float = Field(0.5, gt=0.0, lt=1.0)
    mask_length: PositiveInt = 5
    mask_prob_adjust: float = Field(0.05, ge=0.0, le=1.0)


class AudioDataOptions(Options):
    """Decoding and batching of audio records.

    Clips are down-mixed to mono, resampled to ``sample_rate``, normalised to zero mean and unit
    variance (``normalize``, fairseq ``F.layer_norm(wav, wav.shape)``), skipped if shorter than
    ``min_sample_size`` samples and randomly cropped to ``max_sample_size``. ``batching``:
    ``crop`` cuts every clip of a batch to the shortest one at a random offset (no padding,
    fairseq pretraining); ``pad`` pads with zeros and returns a sample-level padding mask.
    ``max_duration_s``: the size limit, the duration in the file's header, checked before any
    sample is decoded; longer files are skipped as ``too_long``.
    """

    sample_rate: PositiveInt = 16000
    max_sample_size: Optional[PositiveInt] = 320000
    min_sample_size: NonNegativeInt = 32000
    normalize: bool = True
    batching: Literal["crop", "pad"] = "crop"
    max_duration_s: PositiveFloat = 3600.0

    @model_validator(mode="after")
    def _sizes(self) -> "AudioDataOptions":
        if self.max_sample_size is not None and self.min_sample_size > self.max_sample_size:
            raise ValueError(
                f"min_sample_size ({self.min_sample_size}) is larger than max_sample_size ({self.max_sample_size})"
            )
        return self
