"""Collate helpers against hand-built expectations."""

from __future__ import annotations

import pytest
import torch

import d2v_core
from d2v_core.data.collate import (
    bucket_by_length,
    crop_offset,
    crop_to_shortest,
    crop_window,
    lengths_to_padding_mask,
    pad_sequences,
)


def test_pad_sequences_matches_hand_built_batch():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    b = torch.tensor([[7.0, 8.0]])
    padded, mask = pad_sequences([a, b], pad_value=-1)
    assert torch.equal(padded, torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0], [-1.0, -1.0], [-1.0, -1.0]]]))
    assert torch.equal(mask, torch.tensor([[False, False, False], [False, True, True]]))
    assert mask.dtype == torch.bool


def test_pad_sequences_1d_and_equal_lengths():
    padded, mask = pad_sequences([torch.tensor([1, 2]), torch.tensor([3, 4])])
    assert torch.equal(padded, torch.tensor([[1, 2], [3, 4]])) and not mask.any()
    with pytest.raises(ValueError):
        pad_sequences([])


def test_lengths_to_padding_mask():
    assert torch.equal(
        lengths_to_padding_mask([2, 0, 4], max_len=5),
        torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool),
    )
    assert lengths_to_padding_mask(torch.tensor([1, 3])).shape == (2, 3)


def test_root_package_exports_collate_helpers():
    assert d2v_core.pad_sequences is pad_sequences and d2v_core.lengths_to_padding_mask is lengths_to_padding_mask


def test_crop_to_shortest_takes_contiguous_windows_at_random_offsets():
    seqs = [torch.arange(10), torch.arange(100, 104), torch.arange(200, 207)]
    starts = {0: set(), 2: set()}
    for seed in range(200):
        out = crop_to_shortest(seqs, torch.Generator().manual_seed(seed))
        assert out.shape == (3, 4)
        assert torch.equal(out[1], torch.arange(100, 104))  # the shortest is never cut
        for row in (0, 2):
            start = int(out[row, 0]) - int(seqs[row][0])
            assert torch.equal(out[row], seqs[row][start : start + 4])
            starts[row].add(start)
    assert starts[0] == set(range(7)) and starts[2] == set(range(4))  # every offset 0..L-L_min occurs
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(crop_to_shortest(seqs, g1), crop_to_shortest(seqs, g2))


def test_crop_window_start_is_the_offset_times_the_number_of_starts():
    """One rule: start = floor(offset * (L - size + 1)); each start owns an equal share of [0, 1)."""
    x = torch.arange(10)
    for k in range(7):  # 10 - 4 + 1 = 7 starts
        for offset in (k / 7, (k + 0.5) / 7, (k + 1) / 7 - 1e-12):
            assert torch.equal(crop_window(x, 4, offset), torch.arange(k, k + 4)), (k, offset)
    assert torch.equal(crop_window(x, 10, 0.99), x) and torch.equal(crop_window(x, 12, 0.5), x)  # not longer: kept whole
    assert torch.equal(crop_window(torch.ones(5, 2), 3, 0.0), torch.ones(3, 2))  # steps are dim 0


def test_crop_offsets_give_fairseqs_uniform_start():
    """fairseq's RawAudioDataset.crop_to_max_size: start = np.random.randint(0, diff + 1), every
    start equally likely; 14,000 offsets over 7 starts: each within 10% (about 5 sd) of 2,000."""
    g = torch.Generator().manual_seed(0)
    x = torch.arange(10)
    counts = [0] * 7
    for _ in range(14_000):
        counts[int(crop_window(x, 4, crop_offset(g))[0])] += 1
    assert all(abs(c - 2000) < 200 for c in counts), counts


def test_crop_to_shortest_with_max_len_and_trailing_dims():
    seqs = [torch.ones(6, 2), torch.zeros(9, 2)]
    assert crop_to_shortest(seqs, torch.Generator().manual_seed(0), max_len=3).shape == (2, 3, 2)


def test_bucket_by_length_covers_each_index_once_with_similar_lengths():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randperm(100, generator=g) * 10 + 5  # distinct lengths 5..995
    batches = bucket_by_length(lengths, batch_size=10, num_buckets=10, generator=torch.Generator().manual_seed(1))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(100))
    assert all(len(b) == 10 for b in batches)
    for b in batches:  # sorted into 10 buckets of 10: each batch spans 10 consecutive ranks
        ls = lengths[b]
        assert int(ls.max() - ls.min()) == 90
    # a random split would put far-apart lengths together
    assert max(int(lengths[b].max() - lengths[b].min()) for b in torch.randperm(100, generator=g).split(10)) > 90


def test_bucket_by_length_uneven_sizes_and_determinism():
    lengths = [3, 1, 2, 8, 8, 8, 5]
    a = bucket_by_length(lengths, batch_size=2, num_buckets=2, generator=torch.Generator().manual_seed(3))
    b = bucket_by_length(lengths, batch_size=2, num_buckets=2, generator=torch.Generator().manual_seed(3))
    assert a == b and sorted(i for x in a for i in x) == list(range(7))
    assert bucket_by_length([], 4, 2) == []
