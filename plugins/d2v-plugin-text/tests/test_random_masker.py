"""The ``text-random`` masker (data2vec 2.0 text, MAE ``random_masking``): exact equal counts,
padding, uniformity and determinism, against hand-computed counts and MAE's own algorithm."""

from __future__ import annotations

import pytest
import torch

from d2v_core.interfaces import MaskRequest
from d2v_core.testing import check_masker, plugin_context

from d2v_plugin_text import plugin
from d2v_plugin_text.options import RandomMaskOptions
from d2v_plugin_text.random_masker import RandomMasker


def test_conformance_kit():
    ratio = check_masker(RandomMasker(), length=200)
    assert ratio == 96 / 200  # 200 - int(200 * 0.52)
    assert RandomMasker.equal_counts is True and RandomMasker().expected_ratio == 0.48
    assert RandomMaskOptions().mask_prob == 0.48  # data2vec 2.0 text Base


@pytest.mark.parametrize(
    "length, mask_prob, expected",
    [
        (512, 0.48, 246),  # keep int(266.24) = 266
        (128, 0.48, 62),  # keep int(66.56) = 66
        (200, 0.48, 96),  # keep 104
        (50, 0.48, 24),  # keep 26
        (7, 0.48, 4),  # keep int(3.64) = 3
        (512, 0.5, 256),  # Large
        (101, 0.5, 51),  # keep int(50.5) = 50
    ],
)
def test_every_row_masks_exactly_length_minus_kept(length, mask_prob, expected):
    masker = RandomMasker(RandomMaskOptions(mask_prob=mask_prob))
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        assert masker(MaskRequest(16, length), gen).sum(-1).tolist() == [expected] * 16


def test_padding_is_never_masked_and_counts_follow_the_shortest_row():
    lengths = torch.tensor([128, 100, 64, 90])
    right = torch.arange(128)[None, :] >= lengths[:, None]
    left = torch.arange(128)[None, :] < (128 - lengths)[:, None]
    middle = right.clone()
    middle[0, 10:20] = True  # 118 valid steps, some after the gap
    gen = torch.Generator().manual_seed(1)
    for pad in (right, left, middle):
        for _ in range(30):
            mask = RandomMasker()(MaskRequest(4, 128, pad), gen)
            assert not (mask & pad).any()
            assert mask.sum(-1).tolist() == [31] * 4  # 64 - int(64 * 0.52) = 64 - 33


def test_rows_too_short_and_empty_batches():
    pad = torch.arange(10)[None, :] >= torch.tensor([[10], [1]])
    mask = RandomMasker()(MaskRequest(2, 10, pad), torch.Generator())
    assert mask.sum(-1).tolist() == [1, 1] and mask[1, 0]  # 1 - int(1 * 0.52) = 1: MAE keeps none of 1
    pad[1, 0] = True  # an all-padding row: nothing to mask anywhere
    assert not RandomMasker()(MaskRequest(2, 10, pad), torch.Generator()).any()
    assert RandomMasker()(MaskRequest(0, 10), torch.Generator()).shape == (0, 10)


def test_each_valid_token_is_equally_likely():
    pad = torch.arange(20)[None, :] >= torch.tensor([[20], [10]])
    gen = torch.Generator().manual_seed(2)
    hits = torch.zeros(2, 20)
    for _ in range(3000):
        hits += RandomMasker()(MaskRequest(2, 20, pad), gen)
    freq = hits / 3000
    n = 10 - int(10 * 0.52)  # 5 per row
    assert torch.allclose(freq[0], torch.full((20,), n / 20), atol=0.035)
    assert torch.allclose(freq[1, :10], torch.full((10,), n / 10), atol=0.035)
    assert freq[1, 10:].sum() == 0


def mae_random_masking(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """MAE (``models_mae.py``) / fairseq ``random_masking``: sort the noise, keep the first
    ``int(L * (1 - mask_ratio))`` ids, mask the rest, unshuffle."""
    B, L = noise.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(B, L)
    mask[:, :len_keep] = 0
    return torch.gather(mask, 1, ids_restore).bool()


@pytest.mark.parametrize("seed, length", [(0, 7), (1, 128), (2, 512)])
def test_equals_mae_random_masking_on_the_same_noise(seed, length):
    # the masker draws one float64 key per step: the same noise MAE would sort
    noise = torch.rand(8, length, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = RandomMasker()(MaskRequest(8, length), torch.Generator().manual_seed(seed))
    assert torch.equal(got, mae_random_masking(noise, 0.48))


def test_the_generator_state_decides_the_mask():
    req = MaskRequest(8, 100)
    a = RandomMasker()(req, torch.Generator().manual_seed(5))
    assert torch.equal(a, RandomMasker()(req, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, RandomMasker()(req, torch.Generator().manual_seed(6)))


def test_registered_for_text_only():
    with plugin_context(plugin) as loaded:
        spec = loaded.registry.component("masker", "text-random", modality="text")
        assert spec.modalities == ("text",)
        masker = spec.load_factory()(spec.load_options()(mask_prob=0.5))
        assert isinstance(masker, RandomMasker) and masker.expected_ratio == 0.5
