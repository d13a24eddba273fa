"""Batching rules as pure functions: token-budget batches and corpus-level block packing.

- :func:`order_by_length` + :func:`batch_by_tokens` are fairseq's ``ordered_indices`` (longest
  first, ties in random order) and ``batch_by_size``: records are added to a batch while
  ``records x longest <= max_tokens`` (and ``records <= max_records``), with fairseq's
  ``required_batch_size_multiple`` rule.
- :func:`budget_batches` is one epoch of them: lengths clipped to ``max_len``, records shorter than
  ``min_len`` dropped (fairseq filters ``min_sample_size`` when it reads the manifest), sorted
  within bucketing windows (``window=0``: the whole list, as fairseq), then the batch order
  shuffled with the epoch's seed. fairseq freezes its batches after the first epoch and only
  reshuffles their order; here the ties and windows are re-drawn every epoch too.
- :func:`rank_batches` gives every rank distinct batches and the same number of them.
- :class:`BlockPacker` / :func:`pack_blocks` are fairseq's ``TokenBlockDataset`` slice rules
  over record lengths (``break_mode`` none / complete / complete_doc / eos); a block is a tuple
  of ``(record, start, stop)`` pieces.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

BREAK_MODES = ("none", "complete", "complete_doc", "eos")

#: One block of a packed corpus: ``(record index, start, stop)`` pieces, in stream order.
Block = tuple[tuple[int, int, int], ...]


def order_by_length(lengths: Sequence[int] | torch.Tensor, generator: torch.Generator | None = None,
                    window: int = 0) -> list[int]:
    """Indices longest first, ties in random order (fairseq ``np.lexsort([perm, sizes])[::-1]``).
    ``window > 0``: cut a random permutation into windows of ``window`` records and sort each one,
    so that a streaming or huge corpus needs no global sort."""
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
    n = lengths.numel()
    perm = torch.randperm(n, generator=generator)
    if window <= 0 or window >= n:
        windows = [perm]
    else:
        windows = list(torch.split(perm, window))
    out: list[int] = []
    for w in windows:
        # stable sort of a random order: equal lengths stay in random order
        out += w[torch.argsort(lengths[w], descending=True, stable=True)].tolist()
    return out


def batch_by_tokens(order: Sequence[int], lengths: Sequence[int] | torch.Tensor, max_tokens: int | None,
                    max_records: int | None = None, multiple: int = 1) -> list[list[int]]:
    """fairseq ``batch_by_size`` over ``order``: a batch may hold ``n`` records of longest
    ``m`` while ``n * m <= max_tokens`` and ``n <= max_records``. With ``multiple > 1`` a batch
    grows ``multiple`` records at a time (the records since the last multiple are a tail that
    starts the next batch when the budget overflows) and a short last batch is dropped."""
    if max_tokens is None and max_records is None:
        raise ValueError("batch_by_tokens needs max_tokens or max_records")
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1).tolist()
    cap_tokens = max_tokens if max_tokens is not None and max_tokens > 0 else None
    cap_records = max_records if max_records is not None and max_records > 0 else None

    def overflows(count: int, longest: int) -> bool:
        return (cap_records is not None and count > cap_records) or (cap_tokens is not None and count * longest > cap_tokens)

    batches: list[list[int]] = []
    batch: list[int] = []  # the committed part: a multiple of ``multiple`` records (or fewer)
    tail: list[int] = []
    batch_max = tail_max = 0
    for i in order:
        size = lengths[i]
        if cap_tokens is not None and size > cap_tokens:
            raise ValueError(f"a record of {size} exceeds max_tokens={cap_tokens}")
        tail_max = max(tail_max, size)
        count = len(batch) + len(tail) + 1
        if overflows(count, max(batch_max, tail_max)):
            # fairseq checks only the token budget here: a tail that alone overflows becomes a batch
            if cap_tokens is not None and (len(tail) + 1) * tail_max > cap_tokens:
                batches += [batch, tail] if batch else [tail]
                batch, batch_max = [i], size
            else:
                batches.append(batch)
                batch, batch_max = tail + [i], tail_max
            tail, tail_max = [], 0
        elif count < multiple or count % multiple == 0:
            batch, batch_max = batch + tail + [i], max(batch_max, tail_max)
            tail, tail_max = [], 0
        else:
            tail.append(i)
    batches += [b for b in (batch, tail) if b]
    if multiple > 1 and batches and len(batches[-1]) % multiple:
        batches = batches[:-1]
    return batches


def budget_batches(
    lengths: Sequence[int] | torch.Tensor,
    max_tokens: int,
    *,
    generator: torch.Generator | None = None,
    min_len: int = 0,
    max_len: int | None = None,
    window: int = 0,
    max_records: int | None = None,
    multiple: int = 1,
) -> list[list[int]]:
    """One epoch of token-budget batches of record indices: lengths clipped to ``max_len`` (what
    a batch is cropped to at most), records shorter than ``min_len`` (or of length 0: unreadable)
    left out, longest-first within ``window``, :func:`batch_by_tokens`, then the batch order
    shuffled. Every kept index appears exactly once."""
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
    clipped = lengths.clamp(max=max_len) if max_len is not None else lengths
    keep = torch.nonzero((lengths >= max(min_len, 1)), as_tuple=False).reshape(-1)
    order = keep[order_by_length(clipped[keep], generator, window)].tolist() if keep.numel() else []
    batches = batch_by_tokens(order, clipped, max_tokens, max_records, multiple) if order else []
    return [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]


def streaming_batches(items: Iterable[tuple[Any, int]], max_tokens: int, window: int,
                      shuffle: Callable[[list, int], None]) -> Iterator[list[Any]]:
    """Budget batches without a global sort: ``(payload, length)`` pairs are gathered ``window``
    at a time, sorted longest first (ties in arrival order), cut with :func:`batch_by_tokens`,
    and the batches shuffled with ``shuffle(batches, buffer_number)``. The last batch of a buffer
    (its shortest records, usually not full) is carried into the next buffer instead of being
    emitted half empty; the stream's very last batch is emitted as it is."""
    buf: list[tuple[Any, int]] = []
    chunk = 0

    def flush(final: bool) -> list[list[Any]]:
        nonlocal buf, chunk
        order = sorted(range(len(buf)), key=lambda i: -buf[i][1])
        batches = batch_by_tokens(order, [n for _, n in buf], max_tokens)
        carry = batches.pop() if batches and not final else []
        shuffle(batches, chunk)
        chunk += 1
        out = [[buf[i][0] for i in b] for b in batches]
        buf = [buf[i] for i in carry]
        return out

    for item in items:
        buf.append(item)
        if len(buf) >= window:
            yield from flush(final=False)
    if buf:
        yield from flush(final=True)


def rank_batches(batches: Sequence[Sequence[int]], rank: int, world_size: int) -> list[list[int]]:
    """Rank ``rank``'s batches: ``batches[rank::world_size]`` of the first multiple of
    ``world_size`` batches, so that ranks are disjoint and run the same number of steps (fairseq
    pads the short ranks with empty batches instead)."""
    keep = len(batches) // world_size * world_size
    return [list(b) for b in batches[rank:keep:world_size]]


class BlockPacker:
    """Streaming ``TokenBlockDataset``: feed record lengths in corpus order with :meth:`add`, get
    finished blocks of at most ``block_size`` tokens back.

    - ``none``: the records are one stream cut every ``block_size`` tokens (blocks span records).
    - ``complete`` / ``complete_doc``: whole records, greedily, while they fit. A d2v record is a
      whole document and the stream has no empty-line document separators, so the two modes
      agree. A record longer than a block is split into blocks of its own (fairseq would emit
      one block longer than ``block_size``, which no position table holds).
    - ``eos``: one record per block (split the same way when it is too long).
    """

    def __init__(self, block_size: int, break_mode: str) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if break_mode not in BREAK_MODES:
            raise ValueError(f"break_mode must be one of {BREAK_MODES}, got {break_mode!r}")
        self.block_size, self.break_mode = block_size, break_mode
        self._pieces: list[tuple[int, int, int]] = []
        self._fill = 0

    def _flush(self) -> list[Block]:
        out = [tuple(self._pieces)] if self._pieces else []
        self._pieces, self._fill = [], 0
        return out

    def add(self, index: int, length: int) -> list[Block]:
        """Blocks completed by record ``index`` of ``length`` tokens (0: skipped record)."""
        if length <= 0:
            return []
        bs, out = self.block_size, []
        if self.break_mode == "none":
            start = 0
            while start < length:
                take = min(bs - self._fill, length - start)
                self._pieces.append((index, start, start + take))
                self._fill += take
                start += take
                if self._fill == bs:
                    out += self._flush()
            return out
        if self.break_mode == "eos" or self._fill + length > bs:
            out += self._flush()
        if length > bs:
            out += [((index, s, min(s + bs, length)),) for s in range(0, length, bs)]
            return out
        self._pieces.append((index, 0, length))
        self._fill += length
        if self.break_mode == "eos":
            out += self._flush()
        return out

    def finish(self) -> list[Block]:
        """The last, partial block (if any)."""
        return self._flush()


def pack_blocks(lengths: Iterable[int], block_size: int, break_mode: str) -> list[Block]:
    """Every block of a corpus with these record lengths (:class:`BlockPacker` over all of them)."""
    packer = BlockPacker(block_size, break_mode)
    blocks: list[Block] = []
    for i, n in enumerate(lengths):
        blocks += packer.add(i, int(n))
    return blocks + packer.finish()


def block_batches(n_blocks: int, rows: int, rank: int, world_size: int,
                  generator: torch.Generator | None = None) -> list[list[int]]:
    """One epoch of this rank's batches of ``rows`` block indices: blocks shuffled, cut to a
    multiple of ``world_size``, rank ``r`` takes every ``world_size``-th from ``r``, and only
    full batches are kept (a batch has exactly ``rows`` rows)."""
    perm = torch.randperm(n_blocks, generator=generator)
    mine = perm[: n_blocks // world_size * world_size][rank::world_size].tolist()
    return [mine[s : s + rows] for s in range(0, len(mine) - rows + 1, rows)]

