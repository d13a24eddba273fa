"""Token-budget batching and block packing against line-by-line transcriptions of fairseq
(``data_utils_fast.pyx: batch_by_size_vec``, ``token_block_utils_fast.pyx:
_get_slice_indices_fast`` + ``_get_block_to_dataset_index_fast``)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from d2v_core.data.batching import (
    BlockPacker,
    batch_by_tokens,
    block_batches,
    budget_batches,
    order_by_length,
    pack_blocks,
    rank_batches,
    streaming_batches,
)


def fairseq_batch_by_size_vec(indices, num_tokens_vec, max_tokens, max_sentences, bsz_mult):
    """fairseq/data/data_utils_fast.pyx ``batch_by_size_vec``, transcribed statement by statement
    (``num_tokens_vec`` is indexed by position, as fairseq's callers pass it), followed by
    ``data_utils.batch_by_size``'s final ``if bsz_mult > 1 and len(b[-1]) % bsz_mult != 0``."""
    if len(indices) == 0:
        return []
    indices_len = len(indices)
    batches_ends = np.zeros(indices_len, dtype=np.int32)
    batch_start = 0
    tail_max_tokens = 0
    batch_max_tokens = 0
    batches_count = 0
    for pos in range(indices_len):
        tail_max_tokens = tail_max_tokens if tail_max_tokens > num_tokens_vec[pos] else num_tokens_vec[pos]
        new_batch_end = pos + 1
        new_batch_max_tokens = batch_max_tokens if batch_max_tokens > tail_max_tokens else tail_max_tokens
        new_batch_sentences = new_batch_end - batch_start
        new_batch_num_tokens = new_batch_sentences * new_batch_max_tokens
        overflow = (new_batch_sentences > max_sentences > 0) or (new_batch_num_tokens > max_tokens > 0)
        size_matches_with_bsz_mult = new_batch_sentences < bsz_mult or new_batch_sentences % bsz_mult == 0
        if overflow:
            tail_num_tokens = tail_max_tokens * (new_batch_end - batches_ends[batches_count])
            tail_overflow = tail_num_tokens > max_tokens > 0
            if tail_overflow:
                batches_count += 1
                batches_ends[batches_count] = pos
                tail_max_tokens = num_tokens_vec[pos]
            batch_start = batches_ends[batches_count]
            batches_count += 1
            new_batch_max_tokens = tail_max_tokens
        if overflow or size_matches_with_bsz_mult:
            batches_ends[batches_count] = new_batch_end
            batch_max_tokens = new_batch_max_tokens
            tail_max_tokens = 0
    if batches_ends[batches_count] != indices_len:
        batches_count += 1
    b = [list(x) for x in np.split(np.asarray(indices), batches_ends[:batches_count])]
    if bsz_mult > 1 and len(b[-1]) % bsz_mult != 0:
        b = b[:-1]
    return b


def fairseq_slice_indices(sizes, break_mode, block_size, document_sep_len=1):
    """token_block_utils_fast.pyx ``_get_slice_indices_fast`` (none, complete, complete_doc, eos)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if break_mode == "none":
        total = int(sizes.sum())
        length = -(-total // block_size)
        return [(i * block_size, min(i * block_size + block_size, total)) for i in range(length)]
    out, tok_idx, sz_idx, curr = [], 0, 0, 0
    if break_mode == "complete":
        while sz_idx < len(sizes):
            if curr + sizes[sz_idx] <= block_size or curr == 0:
                curr += sizes[sz_idx]
                sz_idx += 1
            else:
                out.append((tok_idx, tok_idx + curr))
                tok_idx += curr
                curr = 0
        if curr > 0:
            out.append((tok_idx, tok_idx + curr))
        return out
    if break_mode == "complete_doc":
        while sz_idx < len(sizes):
            if (curr + sizes[sz_idx] <= block_size or curr == 0) and sizes[sz_idx] != document_sep_len:
                curr += sizes[sz_idx]
                sz_idx += 1
            else:
                if curr > 1:
                    out.append((tok_idx, tok_idx + curr))
                tok_idx += curr
                curr = 0
                if sizes[sz_idx] == document_sep_len:
                    tok_idx += sizes[sz_idx]
                    sz_idx += 1
        if curr > 1:
            out.append((tok_idx, tok_idx + curr))
        return out
    cum = np.cumsum(sizes)
    return [(int(cum[i - 1]) if i else 0, int(cum[i])) for i in range(len(sizes))]


def fairseq_block_pieces(sizes, slices):
    """``_get_block_to_dataset_index_fast`` + ``TokenBlockDataset.__getitem__``: each slice of
    the flat stream as ``(record, start, stop)`` pieces."""
    starts = np.concatenate([[0], np.cumsum(sizes)])
    blocks = []
    for s, e in slices:
        pieces = []
        for r in range(len(sizes)):
            a, b = max(s, starts[r]), min(e, starts[r + 1])
            if a < b:
                pieces.append((r, int(a - starts[r]), int(b - starts[r])))
        blocks.append(tuple(pieces))
    return blocks


@pytest.mark.parametrize("seed", range(40))
def test_batch_by_tokens_matches_fairseq_batch_by_size(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    lengths = [rng.randint(1, 50) for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    if seed % 2:
        order.sort(key=lambda i: -lengths[i])
    max_tokens = rng.choice([None, 50, 64, 120, 333])
    max_sentences = rng.choice([None, 3, 7]) if max_tokens else rng.choice([3, 7])
    mult = rng.choice([1, 1, 2, 4])
    ours = batch_by_tokens(order, lengths, max_tokens, max_sentences, mult)
    theirs = fairseq_batch_by_size_vec(order, np.array([lengths[i] for i in order]), max_tokens or -1, max_sentences or -1, mult)
    assert ours == [list(map(int, b)) for b in theirs]


def test_batch_by_tokens_hand_example():
    # longest first: 10, 9 fit 20 (2 x 10); 8 would make 3 x 10 = 30 > 20; then 8, 5 (16), 5 alone...
    lengths = [5, 10, 8, 9, 5, 3]
    order = [1, 3, 2, 0, 4, 5]
    assert batch_by_tokens(order, lengths, 20) == [[1, 3], [2, 0], [4, 5]]
    with pytest.raises(ValueError, match="exceeds max_tokens"):
        batch_by_tokens([0], [30], 20)


def test_order_by_length_is_longest_first_with_random_ties():
    lengths = [3, 7, 7, 1, 7, 3]
    seen = set()
    for s in range(20):
        order = order_by_length(lengths, torch.Generator().manual_seed(s))
        assert [lengths[i] for i in order] == [7, 7, 7, 3, 3, 1]
        seen.add(tuple(order[:3]))
    assert len(seen) > 1  # ties are not in a fixed order


def test_order_by_length_sorts_within_windows_only():
    lengths = list(range(100))
    order = order_by_length(lengths, torch.Generator().manual_seed(0), window=10)
    assert sorted(order) == list(range(100))
    for w in range(10):
        part = [lengths[i] for i in order[w * 10 : (w + 1) * 10]]
        assert part == sorted(part, reverse=True)
    assert [lengths[i] for i in order] != sorted(lengths, reverse=True)


def test_budget_batches_use_every_kept_record_once_within_the_budget():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 400, (500,), generator=g)
    batches = budget_batches(lengths, 1000, generator=torch.Generator().manual_seed(1), min_len=20, max_len=300)
    flat = sorted(i for b in batches for i in b)
    assert flat == [i for i in range(500) if lengths[i] >= 20]
    clipped = lengths.clamp(max=300)
    for b in batches:
        assert len(b) * int(clipped[b].max()) <= 1000
    # the order of batches is shuffled: not longest first
    firsts = [int(clipped[b].max()) for b in batches]
    assert firsts != sorted(firsts, reverse=True)
    again = budget_batches(lengths, 1000, generator=torch.Generator().manual_seed(1), min_len=20, max_len=300)
    assert again == batches


def test_budget_batches_equal_fairseq_on_a_sorted_order():
    # with the tie order fixed (distinct lengths) our epoch is fairseq's batches, reordered
    lengths = list(range(1, 80))
    ours = budget_batches(lengths, 150, generator=torch.Generator().manual_seed(3))
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    theirs = fairseq_batch_by_size_vec(order, np.array([lengths[i] for i in order]), 150, -1, 1)
    assert sorted(map(tuple, ours)) == sorted(tuple(map(int, b)) for b in theirs)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_rank_batches_are_disjoint_and_equal_in_count(world_size):
    batches = [[i, i + 100] for i in range(10)]
    per_rank = [rank_batches(batches, r, world_size) for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == 10 // world_size
    flat = [i for rb in per_rank for b in rb for i in b]
    assert len(flat) == len(set(flat))


@pytest.mark.parametrize("mode", ["none", "complete", "complete_doc", "eos"])
@pytest.mark.parametrize("seed", range(15))
def test_pack_blocks_matches_fairseq_token_blocks(mode, seed):
    rng = random.Random(seed)
    block = rng.choice([4, 7, 16])
    # fairseq's complete modes emit one over-long block for a record longer than a block (d2v
    # splits it, see the next test); here records fit. 1-token records would be complete_doc's
    # document separators, which d2v records never are.
    top = 3 * block if mode == "none" else block
    sizes = [rng.randint(2, top) for _ in range(rng.randint(1, 30))]
    theirs = fairseq_block_pieces(sizes, fairseq_slice_indices(sizes, mode, block))
    assert pack_blocks(sizes, block, mode) == theirs


@pytest.mark.parametrize("mode", ["complete", "complete_doc", "eos"])
def test_long_records_are_split_into_blocks_of_their_own(mode):
    assert pack_blocks([3, 10, 2], 4, mode) == [
        ((0, 0, 3),), ((1, 0, 4),), ((1, 4, 8),), ((1, 8, 10),), ((2, 0, 2),),
    ]


def test_streaming_packer_equals_the_whole_corpus_packing():
    sizes = [5, 1, 9, 3, 3, 12, 2]
    packer, streamed = BlockPacker(6, "none"), []
    for i, n in enumerate(sizes):
        streamed += packer.add(i, n)
    assert streamed + packer.finish() == pack_blocks(sizes, 6, "none")
    assert all(sum(b - a for _, a, b in blk) == 6 for blk in streamed)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_block_batches_have_exactly_rows_rows_and_ranks_are_disjoint(world_size):
    per_rank = [block_batches(50, 4, r, world_size, torch.Generator().manual_seed(7)) for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1
    assert all(len(b) == 4 for rb in per_rank for b in rb)
    flat = [i for rb in per_rank for b in rb for i in b]
    assert len(flat) == len(set(flat)) and len(flat) == len(per_rank[0]) * 4 * world_size


def test_streaming_batches_use_every_item_once_within_the_budget_and_carry_short_batches():
    rng = random.Random(0)
    items = [(f"r{i}", rng.randint(1, 30)) for i in range(300)]
    lengths = dict(items)
    chunks = []

    def shuffle(batches, chunk):
        chunks.append(chunk)
        random.Random(chunk).shuffle(batches)

    batches = list(streaming_batches(iter(items), 60, 40, shuffle))
    assert sorted(k for b in batches for k in b) == sorted(k for k, _ in items)
    assert all(len(b) * max(lengths[k] for k in b) <= 60 for b in batches)
    assert chunks == list(range(len(chunks))) and len(chunks) > 5
    # a buffer's last (shortest, partial) batch waits for the next buffer, so the stream needs
    # fewer batches than cutting every buffer of 40 on its own
    alone = 0
    for s in range(0, 300, 40):
        local = [n for _, n in items[s : s + 40]]
        alone += len(batch_by_tokens(sorted(range(len(local)), key=lambda i: -local[i]), local, 60))
    assert len(batches) < alone
    assert list(streaming_batches(iter(items), 60, 40, lambda b, c: random.Random(c).shuffle(b))) == batches
