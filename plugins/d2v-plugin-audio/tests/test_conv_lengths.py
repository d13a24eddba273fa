"""Frame counts of the conv feature extractor and the frame padding mask."""

from __future__ import annotations

import math

import torch

from d2v_plugin_audio.conv_feature_extractor import ConvFeatureExtractor, conv_output_lengths, frame_padding_mask
from d2v_plugin_audio.options import PAPER_CONV_KERNELS, PAPER_CONV_STRIDES

PAPER = list(zip(PAPER_CONV_KERNELS, PAPER_CONV_STRIDES, strict=True))


def by_formula(length: int, layers) -> int:
    for k, s in layers:
        length = math.floor((length - k) / s + 1)
    return length


def test_lengths_follow_the_formula_for_many_lengths():
    lengths = list(range(380, 3000, 7)) + [16000, 16001, 31999, 32000, 320000, 320319]
    for n in lengths:
        assert conv_output_lengths(n, PAPER) == by_formula(n, PAPER), n
    got = conv_output_lengths(torch.tensor(lengths), PAPER)
    assert got.tolist() == [by_formula(n, PAPER) for n in lengths]


def test_paper_stack_facts():
    # receptive field 400 samples (25 ms), stride 320 (20 ms): 1 s of 16 kHz audio is 49 frames
    assert conv_output_lengths(400, PAPER) == 1
    assert conv_output_lengths(399, PAPER) == 0
    assert conv_output_lengths(16000, PAPER) == 49
    assert conv_output_lengths(400 + 320 * 99, PAPER) == 100
    assert conv_output_lengths(400 + 320 * 99 - 1, PAPER) == 99


def test_lengths_match_the_conv_stack_output():
    layers = [(4, k, s) for k, s in PAPER]
    stack = ConvFeatureExtractor(layers).eval()
    for n in (400, 401, 719, 720, 1000, 3333, 4800):
        with torch.no_grad():
            out = stack(torch.randn(2, n))
        assert out.shape == (2, 4, by_formula(n, PAPER)), n
        assert stack.output_lengths(n) == out.shape[-1]


def test_frame_padding_mask_keeps_the_frames_of_the_valid_samples():
    lengths = [16000, 12345, 4000, 400]
    total = 16000
    sample_pad = torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]
    frames = by_formula(total, PAPER)
    mask = frame_padding_mask(sample_pad, frames, PAPER)
    assert mask.shape == (4, frames) and mask.dtype == torch.bool
    for row, n in zip(mask, lengths, strict=True):
        valid = by_formula(n, PAPER)
        assert not row[:valid].any() and row[valid:].all()


def test_frame_padding_mask_is_none_without_padding():
    assert frame_padding_mask(None, 10, PAPER) is None
    assert frame_padding_mask(torch.zeros(2, 4000, dtype=torch.bool), 12, PAPER) is None
