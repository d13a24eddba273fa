"""Token-budget batching and block packing in the loader: the epoch plan (main process) and one
worker's share of the epoch.

List sources come with a plan made in the main process from the record lengths (the same on
every rank; :func:`d2v_core.data.batching.budget_batches` / ``block_batches``): worker ``w`` of
``n`` builds the rank's batches ``w::n``, in the order the DataLoader collects them, so the
number of workers does not change the batches. A batch whose records all fail yields only its
counts, which keeps the other workers' batches in place.

Tar shards have no global list of lengths. A streaming buffer gives the same effect without a
global sort (:func:`d2v_core.data.batching.streaming_batches`): ``window`` records are sorted,
cut into budget batches and the batches shuffled (seeded by seed, epoch, rank, worker and buffer
number). A decoder with its own ``record_length`` (audio: a header read) is asked for the length
of the stored record, so the buffer holds encoded bytes; others are decoded first and their
samples buffered. For block packing the records are packed as they stream, ``window`` blocks
are shuffled and cut into batches of exactly ``batch_size`` rows (rows left over move on to the
next buffer; the last few are dropped).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Iterator

import torch

from d2v_core.data.bad_records import BadRecordStats
from d2v_core.data.batching import BlockPacker, streaming_batches

if TYPE_CHECKING:
    from d2v_core.data.loader import TrainLoader, _EpochStream


# -- the plan (main process) ------------------------------------------------------------------
def init_budget(loader: "TrainLoader", max_tokens: int | None, bucket_window: int) -> None:
    """Set ``loader.batching`` (``count`` / ``tokens`` / ``blocks``) and, for a list source, its
    record lengths (manifest, cache or one scan) and packed blocks."""
    from d2v_core.data import batching
    from d2v_core.data.lengths import record_lengths
    from d2v_core.errors import ConfigError, DataError
    from d2v_core.interfaces import RecordDecoder

    loader.max_tokens, loader.bucket_window = max_tokens, bucket_window
    loader.block = loader.record_decoder.block_layout()
    loader.batching = "blocks" if loader.block is not None else "tokens" if max_tokens else "count"
    loader.lengths, loader._blocks = None, []
    if loader.batching == "count":
        return
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f"data.max_tokens must be >= 1, got {max_tokens}")
    if type(loader.record_decoder).sample_length is RecordDecoder.sample_length:
        what = "packs blocks" if loader.block is not None else "was given data.max_tokens"
        raise ConfigError(
            f"{type(loader.record_decoder).__name__} {what} but does not say how long a sample is (sample_length); "
            "remove data.max_tokens to batch data.batch_size records"
        )
    loader.bounds = loader.record_decoder.length_bounds()
    if loader.source.is_sharded:
        return
    source = loader.source

    def on_bad(index: int, reason: str, detail: str) -> None:  # left out of every epoch: counted once
        entry = source.entries[index]
        loader.stats.seen += 1
        loader.stats.skip(reason, entry.path or source.manifest, entry.key, detail)

    loader.lengths = record_lengths(source, loader.record_decoder, num_workers=loader.num_workers, on_bad=on_bad)
    if loader.block is not None:
        size, mode, drop_partial = loader.block
        blocks = batching.pack_blocks(loader.lengths, size, mode)
        loader._blocks = [b for b in blocks if not drop_partial or sum(z - a for _, a, z in b) == size]
        if len(loader._blocks) // loader.world_size < loader.batch_size:
            raise DataError(
                f"{source.spec} packs into {len(loader._blocks)} row(s) of {size} tokens, fewer than one batch of "
                f"{loader.batch_size} row(s) on each of {loader.world_size} rank(s); lower data.batch_size or add data"
            )
        return
    low, high = loader.bounds
    longest = max((min(n, high) if high else n for n in loader.lengths if n >= low), default=0)
    if longest > max_tokens:  # type: ignore[operator]
        raise DataError(
            f"data.max_tokens={max_tokens} is smaller than the longest record ({longest}); raise it "
            "or lower the record decoder's maximum length"
        )


def planned_batches(loader: "TrainLoader", epoch: int) -> tuple | None:
    """This rank's batches of ``epoch`` for a list source (None for shards and counted batches):
    every rank draws the same epoch plan from (seed, epoch) and takes its share."""
    from d2v_core.data import batching
    from d2v_core.data.loader import mix_seed

    if loader.batching == "count" or loader.lengths is None:
        return None
    generator = torch.Generator().manual_seed(mix_seed("budget", loader.seed, epoch))
    if loader.batching == "blocks":
        chosen = batching.block_batches(len(loader._blocks), loader.batch_size, loader.rank, loader.world_size, generator)
        return tuple(tuple(loader._blocks[j] for j in b) for b in chosen)
    low, high = loader.bounds
    epoch_batches = batching.budget_batches(loader.lengths, loader.max_tokens, generator=generator,  # type: ignore[arg-type]
                                            min_len=low, max_len=high, window=loader.bucket_window)
    return tuple(tuple(b) for b in batching.rank_batches(epoch_batches, loader.rank, loader.world_size))


# -- one worker's batches ----------------------------------------------------------------------
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
        batch = stream.plan.record_decoder.collate_blocks(blocks)
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
    low, _ = p.bounds
    for record in records:
        window.seen += 1
        sample = stream._decode(record, window)
        if sample is None:
            continue
        n = int(p.record_decoder.sample_length(sample))
        if p.batching == "tokens":
            if not _fits(stream, record, n, window):
                continue
        elif n < max(low, 1):
            window.skip("too_short", record.get("__url__"), record.get("__key__"), f"length {n} < {low}")
            continue
        yield sample, n


def _rng(stream: "_EpochStream", worker: int, chunk: int) -> random.Random:
    from d2v_core.data.loader import mix_seed

    p = stream.plan
    return random.Random(mix_seed("budget-buffer", p.seed, p.epoch, p.rank, worker, chunk))


def _measured(stream: "_EpochStream", records: Iterator[dict], window: BadRecordStats) -> Iterator[tuple[dict, int]]:
    """Raw records and their lengths from ``record_length`` (the audio decoder reads only the
    header), so a buffer holds encoded bytes and each record is decoded once, when batched."""
    from d2v_core.data.loader import exception_text
    from d2v_core.interfaces import SkipRecord

    p = stream.plan
    for record in records:
        try:
            n = int(p.record_decoder.record_length(record))
        except SkipRecord as exc:
            window.seen += 1
            window.skip(exc.reason, record.get("__url__"), record.get("__key__"), exc.detail)
            continue
        except Exception as exc:  # noqa: BLE001 - a bad record must never stop training
            window.seen += 1
            window.skip(f"error:{type(exc).__name__}", record.get("__url__"), record.get("__key__"), exception_text(exc))
            continue
        if _fits(stream, record, n, window):
            yield record, n
        else:
            window.seen += 1  # counted as seen when decoded otherwise


def _fits(stream: "_EpochStream", record: dict, n: int, window: BadRecordStats) -> bool:
    """Whether a record of length ``n`` can go into a budget batch (else it is counted as skipped)."""
    p = stream.plan
    low, high = p.bounds
    if n < max(low, 1):
        window.skip("too_short", record.get("__url__"), record.get("__key__"), f"length {n} < {low}")
        return False
    if min(n, high or n) > p.max_tokens:  # type: ignore[operator]
        window.skip("longer_than_max_tokens", record.get("__url__"), record.get("__key__"),
                    f"length {n} > data.max_tokens {p.max_tokens}")
        return False
    return True


def _streamed_budget(stream: "_EpochStream", records: Iterator[dict], worker: int, window: BadRecordStats) -> Iterator[dict]:
    from d2v_core.interfaces import RecordDecoder

    p = stream.plan
    _, high = p.bounds
    raw = type(p.record_decoder).record_length is not RecordDecoder.record_length
    items = _measured(stream, records, window) if raw else _usable(stream, records, window)
    clipped = ((item, min(n, high) if high is not None else n) for item, n in items)
    for batch_items in streaming_batches(clipped, p.max_tokens, p.window,  # type: ignore[arg-type]
                                         lambda batches, chunk: _rng(stream, worker, chunk).shuffle(batches)):
        if raw:
            samples = []
            for record in batch_items:
                window.seen += 1
                sample = stream._decode(record, window)
                if sample is not None:
                    samples.append(sample)
        else:
            samples = batch_items
        batch = stream._collate(samples, window) if samples else None
        yield batch if batch is not None else _stats_only(window)


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
