"""Guarantee 6 (collation): ``d2v_core.data.collate`` for random lengths, trailing shapes, pad
values, batch sizes and seeds, checked element by element against the definition of each helper."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from d2v_core.data.collate import bucket_by_length, crop_to_shortest, lengths_to_padding_mask, pad_sequences

SETTINGS = settings(max_examples=80, deadline=None, database=None)  # no example database in the repo
seeds = st.integers(0, 2**31 - 1)
lengths_st = st.lists(st.integers(0, 40), min_size=1, max_size=8)
trailing_st = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


def sequences(lengths: list[int], trailing: tuple[int, ...], seed: int, dtype=torch.float32) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((n, *trailing), generator=g) * 10).to(dtype) for n in lengths]


@SETTINGS
@given(lengths_st, trailing_st, seeds, st.sampled_from([0, -1, 7.5]), st.sampled_from([torch.float32, torch.int64]))
def test_pad_sequences_keeps_every_value_and_pads_after_each_end(lengths, trailing, seed, pad_value, dtype):
    seqs = sequences(lengths, trailing, seed, dtype)
    padded, mask = pad_sequences(seqs, pad_value=pad_value)
    longest = max(lengths)
    assert padded.shape == (len(seqs), longest, *trailing) and padded.dtype == dtype
    assert mask.shape == (len(seqs), longest) and mask.dtype == torch.bool
    for b, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
        assert torch.equal(padded[b, :n], s)
        assert (padded[b, n:] == torch.tensor(pad_value).to(dtype)).all()
        assert mask[b].tolist() == [t >= n for t in range(longest)]


@SETTINGS
@given(lengths_st, st.one_of(st.none(), st.integers(0, 50)))
def test_lengths_to_padding_mask_is_true_exactly_from_each_length_on(lengths, max_len):
    mask = lengths_to_padding_mask(lengths, max_len)
    width = max(lengths) if max_len is None else max_len
    assert mask.shape == (len(lengths), width) and mask.dtype == torch.bool
    assert mask.tolist() == [[t >= n for t in range(width)] for n in lengths]
    assert (~mask).sum(-1).tolist() == [min(n, width) for n in lengths]


@SETTINGS
@given(st.lists(st.integers(1, 40), min_size=1, max_size=8), trailing_st, seeds, st.one_of(st.none(), st.integers(1, 50)))
def test_crop_to_shortest_takes_one_contiguous_window_of_each_sequence(lengths, trailing, seed, max_len):
    # distinct values per position, so a window's start can be read off its first element
    seqs = [torch.arange(n * 1000, n * 1000 + n).reshape(n, *([1] * len(trailing))).expand(n, *trailing).clone() + 100_000 * i
            for i, n in enumerate(lengths)]
    out = crop_to_shortest(seqs, torch.Generator().manual_seed(seed), max_len=max_len)
    target = min(lengths) if max_len is None else min(min(lengths), max_len)
    assert out.shape == (len(seqs), target, *trailing)
    for row, s in zip(out, seqs, strict=True):
        start = int((row.reshape(target, -1)[0, 0] - s.reshape(len(s), -1)[0, 0]).item())
        assert 0 <= start <= len(s) - target
        assert torch.equal(row, s[start : start + target])
    again = crop_to_shortest(seqs, torch.Generator().manual_seed(seed), max_len=max_len)
    assert torch.equal(out, again)


@SETTINGS
@given(st.lists(st.integers(1, 500), min_size=0, max_size=60), st.integers(1, 9), st.integers(1, 6), seeds)
def test_bucket_by_length_uses_each_index_once_in_batches_of_similar_length(lengths, batch_size, num_buckets, seed):
    batches = bucket_by_length(lengths, batch_size, num_buckets, torch.Generator().manual_seed(seed))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    assert all(1 <= len(b) <= batch_size for b in batches)
    if not lengths:
        assert batches == []
        return
    # the buckets: equal-count slices of the sorted lengths; a batch never mixes two of them, so
    # its lengths lie within one bucket's [shortest, longest]
    ordered = sorted(lengths)
    k = min(num_buckets, len(lengths))
    sizes = [len(lengths) // k + (1 if j < len(lengths) % k else 0) for j in range(k)]
    bounds, start = [], 0
    for size in sizes:
        bounds.append((ordered[start], ordered[start + size - 1]))
        start += size
    for b in batches:
        values = [lengths[i] for i in b]
        assert any(lo <= min(values) and max(values) <= hi for lo, hi in bounds), (values, bounds)
    # batch count: each bucket is cut into ceil(size / batch_size) batches
    assert len(batches) == sum(-(-size // batch_size) for size in sizes)
    assert batches == bucket_by_length(lengths, batch_size, num_buckets, torch.Generator().manual_seed(seed))
