"""wav2vec 2.0 convolutional feature extractor in layer-norm mode, as data2vec audio uses it.

fairseq ``ConvFeatureExtractionModel(mode="layer_norm")``: every block is
``Conv1d (no bias) -> LayerNorm over channels (affine, fp32) -> GELU``; weights use
``kaiming_normal_``. Module names follow transformers' ``Data2VecAudioFeatureEncoder`` so that an
export is a rename of the prefix only.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

Lengths = TypeVar("Lengths", int, Tensor)


def conv_output_lengths(lengths: Lengths, layers: Sequence[tuple[int, int]]) -> Lengths:
    """Frames after a stack of unpadded convolutions: ``floor((L - k) / s + 1)`` per layer.

    ``layers`` holds ``(kernel, stride)`` pairs; ``lengths`` is an int or an integer tensor. The
    result is not clamped (inputs shorter than the receptive field give zero or less).
    """
    for kernel, stride in layers:
        if isinstance(lengths, Tensor):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        else:
            lengths = (lengths - kernel) // stride + 1
    return lengths



def frame_padding_mask(
    sample_padding_mask: Tensor | None, num_frames: int, layers: Sequence[tuple[int, int]]
) -> Tensor | None:
    """Frame-level padding mask (B, T) from a sample-level one (B, L), True at padding.

    A row with ``n`` valid (unpadded) samples keeps its first ``conv_output_lengths(n)`` frames,
    as fairseq ``data2vec_audio`` and transformers ``_get_feature_vector_attention_mask`` do.
    Returns None when nothing is padded (fairseq), so unpadded batches take the fast path.
    """
    if sample_padding_mask is None or not bool(sample_padding_mask.any()):
        return None
    valid = (~sample_padding_mask.bool()).long().sum(-1)
    frames = conv_output_lengths(valid, layers).clamp(0, num_frames)
    steps = torch.arange(num_frames, device=sample_padding_mask.device)
    return steps[None, :] >= frames[:, None]

class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (fairseq ``Fp32LayerNorm``), so that fp16/bf16
    training normalises the large conv activations accurately."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.layer_norm(
            x.float(),
            self.normalized_shape,
            None if self.weight is None else self.weight.float(),
            None if self.bias is None else self.bias.float(),
            self.eps,
        )
        return out.type_as(x)


class ConvBlock(nn.Module):
    """One layer: Conv1d -> LayerNorm over channels -> GELU, on (B, C, T)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.layer_norm = Fp32LayerNorm(out_channels, elementwise_affine=True)
        self.activation = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return self.activation(x)


class ConvFeatureExtractor(nn.Module):
    """Waveform (B, L) -> conv features (B, C_last, T).

    With ``activation_checkpointing`` each block's activations are recomputed in the backward
    pass (non-reentrant ``torch.utils.checkpoint``, in training with grad only): at 16 kHz the
    first blocks' outputs (512 channels at 3.2 kHz) outweigh a Transformer layer's, so
    checkpointing the Transformer alone leaves most of an audio step's activation memory."""

    def __init__(self, layers: Sequence[tuple[int, int, int]], bias: bool = False, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        blocks = []
        in_channels = 1
        for channels, kernel, stride in layers:
            blocks.append(ConvBlock(in_channels, channels, kernel, stride, bias))
            in_channels = channels
        self.conv_layers = nn.ModuleList(blocks)
        self.kernels_strides = [(k, s) for _, k, s in layers]
        self.out_channels = in_channels

    def output_lengths(self, lengths: Lengths) -> Lengths:
        return conv_output_lengths(lengths, self.kernels_strides)

    def forward(self, wav: Tensor) -> Tensor:
        x = wav.unsqueeze(1)
        # the student in training only: without grad (teacher, inference) nothing is stored
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.conv_layers:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x


class FeatureProjection(nn.Module):
    """LayerNorm over the conv channels, then Linear to the model width (fairseq ``layer_norm``
    + ``post_extract_proj``; transformers ``feature_projection``)."""

    def __init__(self, in_channels: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_channels, eps=eps)
        self.projection = nn.Linear(in_channels, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.layer_norm(x))

