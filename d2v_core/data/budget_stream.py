"""One worker's share of an epoch under token-budget batching or block packing.

List sources come with a plan made in the main process from the record lengths (the same on
every rank; :func:`d2v_core.data.batching.budget_batches` / ``block_batches``): worker ``w`` of
``n`` builds the rank's batches ``w::n``, in the order the DataLoader collects them, so the
number of workers does not change the batches. A batch whose records all fail yields only its
counts, which keeps the other workers' batches in place.

Tar shards have no lengths before decoding. A streaming buffer gives the same effect without a
global sort: ``window`` decoded samples are sorted, cut into budget batches and the batches
shuffled (seeded by seed, epoch, rank, worker and buffer number); for block packing the records
are packed as they stream, ``window`` blocks are shuffled and cut into batches of exactly
``batch_size`` rows (rows left over move on to the next buffer; the last few are dropped).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Iterator

import torch

from d2v_core.data.bad_records import BadRecordStats
from d2v_core.data.batching import BlockPacker, batch_by_tokens

if TYPE_CHECKING:
    from d2v_core.data.loader import _EpochStream


def _stats_only(window: BadRecordStats) -> dict:
    return {**window.pop_window(), "_stats_only": True}


def _read_and_decode(stream: "_EpochStream", index: int, window: BadRecordStats) -> dict | None:
    from d2v_core.data.loader import exception_text
    from d2v_core.interfaces import SkipRecord

    p = stream.plan
    entry = p.source.entries[index]
    window.seen += 1
    try:
        record = p.source.read(entry)
    except SkipRecord as exc:
        window.skip(exc.reason, entry.path or p.source.manifest, entry.key, exc.detail)
        return None
    except Exception as exc:  # noqa: BLE001 - unreadable file: count, never crash
        window.skip(f"error:{type(exc).__name__}", entry.path or p.source.manifest, entry.key, exception_text(exc))
        return None
    return stream._decode(record, window)


def _collate_blocks(stream: "_EpochStream", blocks: list[list[tuple[dict, int, int]]], window: BadRecordStats) -> dict | None:
    from d2v_core.data.loader import exception_text

    blocks = [b for b in blocks if b]
    if not blocks:
        return None
    try:
        batch = stream.plan.decoder.collate_blocks(blocks)
    except Exception as exc:  # noqa: BLE001 - counted like the records it drops
        window.skip(f"collate_error:{type(exc).__name__}", None, None, exception_text(exc))
        return None
    batch.update(window.pop_window())
    return batch


def iter_budget_epoch(stream: "_EpochStream", worker: int, num_workers: int, window: BadRecordStats) -> Iterator[dict]:
    """The batches of this worker (see the module docstring)."""
    p = stream.plan
    if p.planned is not None:
        yield from _planned(stream, worker, num_workers, window)
    elif p.batching == "tokens":
        yield from _streamed_budget(stream, stream._shard_records(worker, num_workers, window), worker, window)
    else:
        yield from _streamed_blocks(stream, stream._shard_records(worker, num_workers, window), worker, window)


def _planned(stream: "_EpochStream", worker: int, num_workers: int, window: BadRecordStats) -> Iterator[dict]:
    p = stream.plan
    assert p.planned is not None
    for b in range(worker, len(p.planned), num_workers):
        units: Any = p.planned[b]
        batch = None
        if p.batching == "tokens":
            samples = [s for s in (_read_and_decode(stream, i, window) for i in units) if s is not None]
            batch = stream._collate(samples, window) if samples else None
        else:
            decoded: dict[int, dict | None] = {}
            for block in units:
                for index, _, _ in block:
                    if index not in decoded:
                        decoded[index] = _read_and_decode(stream, index, window)
            rows = [[(decoded[i], a, z) for i, a, z in block if decoded[i] is not None] for block in units]
            batch = _collate_blocks(stream, rows, window)  # type: ignore[arg-type]
        yield batch if batch is not None else _stats_only(window)


def _usable(stream: "_EpochStream", records: Iterator[dict], window: BadRecordStats) -> Iterator[tuple[dict, int]]:
    """Decoded samples and their lengths; those shorter than the decoder's minimum are skipped."""
    p = stream.plan
    low, high = p.bounds
    for record in records:
        window.seen += 1
        sample = stream._decode(record, window)
        if sample is None:
            continue
        n = int(p.decoder.sample_length(sample))
        if n < max(low, 1):
            window.skip("too_short", record.get("__url__"), record.get("__key__"), f"length {n} < {low}")
            continue
        if p.batching == "tokens" and min(n, high or n) > p.max_tokens:  # type: ignore[operator]
            window.skip("longer_than_max_tokens", record.get("__url__"), record.get("__key__"),
                        f"length {n} > data.max_tokens {p.max_tokens}")
            continue
        yield sample, n


def _rng(stream: "_EpochStream", worker: int, chunk: int) -> random.Random:
    from d2v_core.data.loader import mix_seed

    p = stream.plan
    return random.Random(mix_seed("budget-buffer", p.seed, p.epoch, p.rank, worker, chunk))


def _streamed_budget(stream: "_EpochStream", records: Iterator[dict], worker: int, window: BadRecordStats) -> Iterator[dict]:
    p = stream.plan
    _, high = p.bounds

    def flush(buf: list[tuple[dict, int]], chunk: int) -> Iterator[dict]:
        lengths = [min(n, high) if high is not None else n for _, n in buf]
        order = sorted(range(len(buf)), key=lambda i: -lengths[i])  # stable: ties in stream order
        batches = batch_by_tokens(order, lengths, p.max_tokens)
        _rng(stream, worker, chunk).shuffle(batches)
        for b in batches:
            batch = stream._collate([buf[i][0] for i in b], window)
            if batch is not None:
                yield batch

    buf: list[tuple[dict, int]] = []
    chunk = 0
    for item in _usable(stream, records, window):
        buf.append(item)
        if len(buf) >= p.window:
            yield from flush(buf, chunk)
            buf, chunk = [], chunk + 1
    if buf:
        yield from flush(buf, chunk)


def _streamed_blocks(stream: "_EpochStream", records: Iterator[dict], worker: int, window: BadRecordStats) -> Iterator[dict]:
    p = stream.plan
    assert p.block is not None
    size, mode, drop_partial = p.block
    packer = BlockPacker(size, mode)
    buffer_rows = max(p.window, 2 * p.batch_size)
    rows: list = []
    chunk = 0

    def full(block: tuple) -> bool:
        return not drop_partial or sum(z - a for _, a, z in block) == size

    def emit(final: bool) -> Iterator[dict]:
        nonlocal rows, chunk
        _rng(stream, worker, chunk).shuffle(rows)
        chunk += 1
        cut = len(rows) // p.batch_size * p.batch_size
        for s in range(0, cut, p.batch_size):
            batch = _collate_blocks(stream, [list(b) for b in rows[s : s + p.batch_size]], window)
            if batch is not None:
                yield batch
        rows = [] if final else rows[cut:]

    # the packer's "record index" is the decoded sample itself, so a block carries its samples
    for sample, n in _usable(stream, records, window):
        rows += [b for b in packer.add(sample, n) if full(b)]  # type: ignore[arg-type]
        if len(rows) >= buffer_rows:
            yield from emit(final=False)
    rows += [b for b in packer.finish() if full(b)]
    yield from emit(final=True)
