"""Guarantee 6 (maskers): for random batch sizes, lengths, padding and seeds, every masker returns
a (B, T) bool CPU mask, never masks padding, gives the same mask for the same generator state,
and masks the number of steps its formula promises (checked against the formula, per row)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from d2v_core.interfaces import MaskRequest

SETTINGS = settings(max_examples=60, deadline=None, database=None)  # no example database in the repo


@st.composite
def right_padded(draw, max_batch: int = 6, max_len: int = 80, min_valid: int = 1):  # type: ignore[no-untyped-def]
    """(request, valid lengths): rows padded at the end, as ``pad_sequences`` makes them."""
    batch = draw(st.integers(1, max_batch))
    length = draw(st.integers(max(1, min_valid), max_len))
    valid = draw(st.lists(st.integers(min_valid, length), min_size=batch, max_size=batch))
    padded = draw(st.booleans())
    if not padded:
        return MaskRequest(batch, length, None), [length] * batch
    pad = torch.arange(length)[None, :] >= torch.tensor(valid)[:, None]
    return MaskRequest(batch, length, pad), valid


@st.composite
def any_padding(draw, max_batch: int = 6, max_len: int = 80, min_valid: int = 1):  # type: ignore[no-untyped-def]
    """Padding anywhere in a row (left, middle, scattered), at least ``min_valid`` valid steps."""
    batch = draw(st.integers(1, max_batch))
    length = draw(st.integers(max(1, min_valid), max_len))
    rows = []
    for _ in range(batch):
        row = draw(st.lists(st.booleans(), min_size=length, max_size=length))
        keep = draw(st.permutations(range(length)))[:min_valid]  # force min_valid valid steps
        for i in keep:
            row[i] = False
        rows.append(row)
    pad = torch.tensor(rows, dtype=torch.bool)
    return MaskRequest(batch, length, pad), (~pad).sum(-1).tolist()


seeds = st.integers(0, 2**31 - 1)


def check_common(masker, request: MaskRequest, seed: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    mask = masker(request, torch.Generator().manual_seed(seed))
    assert mask.shape == (request.batch_size, request.length) and mask.dtype == torch.bool and mask.device.type == "cpu"
    assert torch.equal(mask, masker(request, torch.Generator().manual_seed(seed)))
    if request.padding_mask is not None:
        assert not (mask & request.padding_mask).any(), "masked a padded step"
    if getattr(masker, "equal_counts", False):
        counts = mask.sum(-1)
        assert (counts == counts[0]).all(), counts.tolist()
    return mask


# -- the example plugin's random masker ------------------------------------------------------------


@SETTINGS
@given(right_padded(), seeds, st.floats(0.01, 0.99))
def test_random_masker_masks_round_p_n_of_each_rows_valid_steps(case, seed, p):
    from d2v_plugin_example.masking import RandomMasker
    from d2v_plugin_example.options import RandomMaskerOptions

    request, valid = case
    masker = RandomMasker(RandomMaskerOptions(mask_prob=p))
    mask = check_common(masker, request, seed)
    for row, n in zip(mask, valid, strict=True):
        assert int(row.sum()) == max(1, round(p * n))
        assert not row[n:].any()
    assert masker.expected_ratio == p


# -- the audio span masker (fairseq compute_mask_indices) ------------------------------------------


@SETTINGS
@given(right_padded(max_len=120), seeds, st.floats(0.05, 0.9), st.integers(1, 12), st.booleans())
def test_audio_span_masker(case, seed, p, span, same):
    audio = pytest.importorskip("d2v_plugin_audio.span_masker")
    from d2v_plugin_audio.options import SpanMaskerOptions

    request, valid = case
    masker = audio.SpanMasker(SpanMaskerOptions(mask_prob=p, mask_length=span, require_same_masks=same))
    mask = check_common(masker, request, seed)
    counts = mask.sum(-1).tolist()
    for count, n in zip(counts, valid, strict=True):
        # at most as many spans as fairseq draws (p*n/span rounded up, at least min_masks=1) times span
        assert count <= min(n, max(1, math.floor(p * n / span) + 1) * span)
        if not same and n - span > math.floor(p * n / span) + 1:
            # room for every start: each of the (at least min_masks=1) spans lies whole in the row.
            # Shorter rows may end up with nothing masked, exactly as in fairseq (starts past the end).
            assert count >= span
    if same:
        assert len(set(counts)) == 1


@SETTINGS
@given(any_padding(max_len=60), seeds)
def test_audio_span_masker_never_masks_padding_anywhere_in_a_row(case, seed):
    audio = pytest.importorskip("d2v_plugin_audio.span_masker")
    request, _ = case
    check_common(audio.SpanMasker(), request, seed)


# -- the image block masker (BEiT) -----------------------------------------------------------------


@SETTINGS
@given(st.integers(1, 4), st.integers(2, 14), st.integers(2, 14), seeds, st.floats(0.1, 0.8))
def test_image_block_masker_never_exceeds_its_target(batch, height, width, seed, ratio):
    image = pytest.importorskip("d2v_plugin_image.block_masker")
    from d2v_plugin_image.options import BlockMaskOptions

    masker = image.BlockMasker(BlockMaskOptions(mask_ratio=ratio))
    request = MaskRequest(batch, height * width, None, (height, width))
    mask = check_common(masker, request, seed)
    target = int(round(ratio * height * width))
    assert (mask.sum(-1) <= target).all()


@SETTINGS
@given(st.integers(1, 4), st.integers(2, 10), st.integers(2, 10), seeds, st.data())
def test_image_block_masker_respects_a_padding_mask(batch, height, width, seed, data):
    image = pytest.importorskip("d2v_plugin_image.block_masker")
    n = height * width
    pad = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=batch, max_size=batch)))
    check_common(image.BlockMasker(), MaskRequest(batch, n, pad, (height, width)), seed)


# -- the text maskers (fairseq MaskTokensDataset) --------------------------------------------------


@SETTINGS
@given(any_padding(max_len=100, min_valid=0), seeds, st.floats(0.01, 0.99))
def test_text_bert_masker_masks_int_p_n_plus_u_tokens(case, seed, p):
    text = pytest.importorskip("d2v_plugin_text.bert_masker")
    request, valid = case
    mask = check_common(text.BertMasker(p), request, seed)
    for count, n in zip(mask.sum(-1).tolist(), valid, strict=True):
        assert count in {min(n, math.floor(p * n)), min(n, math.floor(p * n) + 1)}


@SETTINGS
@given(any_padding(max_len=100, min_valid=0), seeds, st.floats(0.01, 0.99), st.integers(1, 8))
def test_text_span_masker_masks_between_k_and_k_spans_of_tokens(case, seed, p, span):
    text = pytest.importorskip("d2v_plugin_text.span_masker")
    request, valid = case
    mask = check_common(text.SpanMasker(p, span), request, seed)
    for count, n in zip(mask.sum(-1).tolist(), valid, strict=True):
        k_lo = min(n, math.floor(p * n / span))  # distinct starts: each masks at least itself
        k_hi = min(n, math.floor(p * n / span) + 1)
        assert k_lo <= count <= min(n, k_hi * span)
