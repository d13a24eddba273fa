"""The training loader: records -> decoded samples -> micro-batches, split over ranks and workers.

Determinism: the same (seed, epoch, rank, world_size, num_workers) gives the same batches. Record
order comes from seeded permutations / shard shuffles / shuffle buffers; the decoder's randomness
(crops, augmentation) comes from a ``torch.Generator`` seeded from (seed, epoch, record file name,
record key), so it does not depend on which worker decodes the record or when.

List sources (folder, manifest, text lines): each epoch is a seeded permutation of all records,
cut to a multiple of ``world_size``; rank ``r`` takes ``perm[r::world_size]`` (so the ranks' k-th
batches together are the 1-process k-th batch of ``batch_size * world_size``), then its records go
to DataLoader workers in batch-sized chunks, round-robin, which is the order in which the
DataLoader collects them, so ``num_workers`` does not change the batches unless records are
skipped. ``shuffle_buffer=0`` keeps the stored order. ``resampled`` does not apply.

Tar shards: a seeded shard shuffle (the same on every rank), rank ``r`` takes shards
``r::world_size``, workers split those (``wds.split_by_worker``), members become records
(``wds.tarfile_to_samples``; broken members are counted, not raised), then a seeded
``wds.shuffle`` buffer. With ``resampled=True`` each (rank, worker) draws shards with replacement
from its own seeded stream, forever: the epoch never ends and the trainer stops by step count.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import signal
import tarfile
import warnings
from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from d2v_core.data.bad_records import MAX_EXAMPLES, BadRecordStats
from d2v_core.data.sources import Source, resolve_source, shard_record
from d2v_core.errors import DataError
from d2v_core.interfaces import RecordDecoder, SkipRecord

_log = logging.getLogger("d2v.data")
#: Tar shards under budget batching: records (or packed blocks) buffered and sorted per worker
#: when data.bucket_window is 0. 1024 keeps the audio presets within 5% of a global sort's audio
#: per update (docs/benchmarks.md); the audio decoder buffers encoded bytes (~0.4 GB per worker).
SHARD_WINDOW = 1024


def mix_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any printable parts (same on every machine and Python run)."""
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def record_seed(seed: int, epoch: int, url: str | None, key: str | None) -> int:
    """Seed of one record's decode generator: (seed, epoch, file/shard base name, key). The base
    name (not the full path) keeps it stable when data moves; keys repeat across shards."""
    name = str(url or "").replace("\\", "/").rsplit("/", 1)[-1]
    return mix_seed("record", seed, epoch, name, key)


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, or its type name when even that fails (a decoder may raise anything)."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not turn a skip into a crash
        return f"<{type(exc).__name__} with an unprintable message>"


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT/SIGTERM. Ctrl-C and ``scancel`` signal
    the whole process group; the main process then finishes its step and writes a checkpoint
    (it needs the workers' batches for that) and stops them itself. A worker killed by the signal
    would instead make the main process fail in the middle of that step."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _shard_url_of(exc: BaseException, known: set[str]) -> str | None:
    """The shard an exception from webdataset's tar reader came from: webdataset appends the
    URL to ``args`` or names the open file in the message."""
    for arg in exc.args:
        if isinstance(arg, str) and arg in known:
            return arg
    m = re.search(r"name='([^']+)'", str(exc.args[0]) if exc.args else "")
    return m.group(1) if m else None


@dataclass(frozen=True)
class _EpochPlan:
    source: Source
    record_decoder: RecordDecoder
    batch_size: int
    rank: int
    world_size: int
    seed: int
    epoch: int
    shuffle_buffer: int
    resampled: bool
    drop_last: bool
    # token budget ("tokens") or block packing ("blocks"): see d2v_core.data.budget_stream
    batching: str = "count"
    planned: tuple | None = None  # list sources: this rank's batches for the epoch
    max_tokens: int | None = None
    bounds: tuple[int, int | None] = (0, None)
    window: int = 0  # shards: samples (or blocks) buffered, sorted and cut into batches
    block: tuple[int, str, bool] | None = None


#: Records a worker reads without producing a batch before it ships its bad-record counts on
#: their own, so that ``max_bad_fraction`` is checked every so many records, not once an epoch.
STATS_EVERY = 100


class _EpochStream(IterableDataset):
    """One epoch of one rank; runs in each DataLoader worker (or in-process)."""

    def __init__(self, plan: _EpochPlan) -> None:
        super().__init__()
        self.plan = plan

    # -- record streams ----------------------------------------------------------------------
    def _list_records(self, worker: int, num_workers: int, window: BadRecordStats) -> Iterator[dict]:
        p = self.plan
        n = len(p.source.entries)
        if p.shuffle_buffer > 0:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed("perm", p.seed, p.epoch)))
        else:
            perm = torch.arange(n)
        # equal record counts on every rank, so ranks run the same number of steps
        mine = perm[: (n // p.world_size) * p.world_size][p.rank :: p.world_size].tolist()
        for chunk_start in range(worker * p.batch_size, len(mine), num_workers * p.batch_size):
            for index in mine[chunk_start : chunk_start + p.batch_size]:
                entry = p.source.entries[index]
                try:
                    yield p.source.read(entry)
                except SkipRecord as exc:
                    window.seen += 1
                    window.skip(exc.reason, entry.path or p.source.manifest, entry.key, exc.detail)
                except Exception as exc:  # noqa: BLE001 - unreadable file: count, never crash
                    window.seen += 1
                    window.skip(f"error:{type(exc).__name__}", entry.path or p.source.manifest, entry.key, exception_text(exc))

    def _shard_records(self, worker: int, num_workers: int, window: BadRecordStats) -> Iterator[dict]:
        import webdataset as wds

        p = self.plan
        urls = list(p.source.urls)
        if p.resampled:
            shards = iter(
                wds.ResampledShards(
                    urls,
                    seed=mix_seed("shards", p.seed, p.epoch),
                    worker_seed=lambda: mix_seed("worker", p.rank, worker),
                    deterministic=True,
                )
            )
        else:
            seed = mix_seed("shards", p.seed, p.epoch) if p.shuffle_buffer > 0 else None
            # split by node with the rank given explicitly (torch.distributed may not be set up)
            shards = wds.split_by_worker(islice(iter(wds.SimpleShardList(urls, seed=seed)), p.rank, None, p.world_size))

        known = set(urls)
        truncated: set[str] = set()

        def broken_member(exc: BaseException) -> bool:
            url = _shard_url_of(exc, known)
            if isinstance(exc, tarfile.TarError) and url is not None:
                # a torn shard raises once for the member and once for the stream: count it once
                if url in truncated:
                    return True
                truncated.add(url)
            window.seen += 1
            message = str(exc.args[0]).split(" @ <", 1)[0] if exc.args else ""
            window.skip(f"tar:{type(exc).__name__}", url, None, message)
            return True  # skip it and go on

        samples = wds.tarfile_to_samples(handler=broken_member)(shards)
        if p.shuffle_buffer > 1:
            rng = random.Random(mix_seed("buffer", p.seed, p.epoch, p.rank, worker))
            samples = wds.shuffle(p.shuffle_buffer, initial=min(100, p.shuffle_buffer), rng=rng)(samples)
        for sample in samples:
            yield shard_record(sample)

    # -- decoding and batching ----------------------------------------------------------------
    def _decode(self, record: dict, window: BadRecordStats) -> dict | None:
        p = self.plan
        key, url = record.get("__key__"), record.get("__url__")
        wanted = tuple(p.record_decoder.extensions)
        if wanted and not any(ext in record for ext in wanted):
            have = sorted(k for k in record if not k.startswith("__"))
            window.skip("missing_payload", url, key, f"record has {have}, the record decoder reads {list(wanted)}")
            return None
        generator = torch.Generator().manual_seed(record_seed(p.seed, p.epoch, url, key))
        try:
            sample = p.record_decoder.decode(record, generator)
        except SkipRecord as exc:
            window.skip(exc.reason, url, key, exc.detail)
        except (KeyboardInterrupt, GeneratorExit):  # a stop signal (Ctrl-C) or the stream closing
            raise
        except BaseException as exc:  # noqa: BLE001 - a bad record must never stop training, nor may a
            # plugin's SystemExit or own BaseException end the run silently or with a traceback
            window.skip(f"error:{type(exc).__name__}", url, key, exception_text(exc))
        else:
            if isinstance(sample, dict) and "_note" in sample:  # used after a change (cut to the size limit)
                window.note(str(sample.pop("_note")), url, key)
            return sample
        return None

    def _collate(self, samples: list[dict], window: BadRecordStats) -> dict | None:
        try:
            batch = self.plan.record_decoder.collate(samples)
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - counted like the records it drops
            for _ in samples:
                window.skip(f"collate_error:{type(exc).__name__}", None, None, exception_text(exc))
            return None
        if not isinstance(batch, dict):
            raise TypeError(f"{type(self.plan.record_decoder).__name__}.collate returned {type(batch).__name__}, expected a dict")
        batch.update(window.pop_window())
        return batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        window = BadRecordStats()
        p = self.plan
        if p.batching != "count":
            from d2v_core.data.budget_stream import iter_budget_epoch

            yield from iter_budget_epoch(self, worker, num_workers, window)
            yield {**window.pop_window(), "_stats_only": True}
            return
        if p.source.is_sharded:
            records = self._shard_records(worker, num_workers, window)
        else:
            records = self._list_records(worker, num_workers, window)
        samples: list[dict] = []
        for record in records:
            window.seen += 1
            sample = self._decode(record, window)
            if sample is None:
                if window.seen >= STATS_EVERY:  # no batch for a while: send the counts, so that
                    yield {**window.pop_window(), "_stats_only": True}  # junk data aborts early
                continue
            samples.append(sample)
            if len(samples) == p.batch_size:
                batch = self._collate(samples, window)
                samples = []
                if batch is not None:
                    yield batch
        if samples and not p.drop_last:
            batch = self._collate(samples, window)
            if batch is not None:
                yield batch
        # counts after the last batch still reach the main process
        yield {**window.pop_window(), "_stats_only": True}


class TrainLoader:
    """Per-rank micro-batches of decoded records, deterministic and resumable.

    ``source`` is a :class:`Source` or a ``data.train`` string (resolved with the record decoder's
    extensions). ``batch_size`` is the per-rank micro-batch; ``pin_memory`` applies with workers.
    Bad records are skipped and counted
    in :attr:`stats` (a :class:`BadRecordStats`); with ``max_bad_fraction`` set, an epoch raises
    :class:`DataError` once more than that fraction of at least ``min_seen`` records was bad.
    """

    # set by d2v_core.data.budget_stream.init_budget
    batching: str
    max_tokens: int | None
    bucket_window: int
    block: tuple[int, str, bool] | None
    bounds: tuple[int, int | None]
    lengths: Any
    _blocks: list[Any]

    def __init__(
        self,
        source: Source | str,
        record_decoder: RecordDecoder,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        resampled: bool = False,
        drop_last: bool = True,
        max_bad_fraction: float | None = None,
        min_seen: int = 100,
        pin_memory: bool = False,
        max_tokens: int | None = None,
        bucket_window: int = 0,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch size per rank must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        if num_workers < 0:
            raise DataError(f"data.num_workers must be >= 0, got {num_workers}")
        if isinstance(source, str):
            source = resolve_source(source, tuple(record_decoder.extensions))
        self.source = source
        self.record_decoder = record_decoder
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.resampled = resampled
        self.drop_last = drop_last
        self.max_bad_fraction = max_bad_fraction
        self.min_seen = min_seen
        self.pin_memory = pin_memory
        self.stats = BadRecordStats()
        self._said_limit = False
        self._init_budget(max_tokens, bucket_window)
        if source.is_sharded and not resampled:
            n = len(source.urls)
            if n < world_size:
                raise DataError(
                    f"{source.spec!r} has {n} shard(s) for {world_size} ranks; set data.resampled=true "
                    f"or write at least {world_size} shards (d2v make-shards --max-count ...)"
                )
            if n < world_size * max(1, num_workers):
                warnings.warn(
                    f"{n} shards for {world_size} ranks x {num_workers} workers: some workers get no shard; "
                    "write more, smaller shards or set data.resampled=true",
                    stacklevel=2,
                )

    def _init_budget(self, max_tokens: int | None, bucket_window: int) -> None:
        """Block packing when the decoder declares a block layout, a token budget with
        ``max_tokens``, else ``batch_size`` records (d2v_core.data.budget_stream)."""
        from d2v_core.data.budget_stream import init_budget

        init_budget(self, max_tokens, bucket_window)

    def _planned_batches(self, epoch: int) -> tuple | None:
        from d2v_core.data.budget_stream import planned_batches

        return planned_batches(self, epoch)

    def _plan(self, epoch: int) -> _EpochPlan:
        budget: dict[str, Any] = {}
        if self.batching != "count":
            budget = {"batching": self.batching, "planned": self._planned_batches(epoch), "max_tokens": self.max_tokens,
                      "bounds": self.bounds, "window": self.bucket_window or SHARD_WINDOW, "block": self.block}
        return _EpochPlan(
            self.source, self.record_decoder, self.batch_size, self.rank, self.world_size, self.seed, epoch,
            self.shuffle_buffer, self.resampled, self.drop_last, **budget,
        )

    def iter_epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[dict]:
        """The batches of ``epoch`` for this rank, after dropping the first ``skip_batches``
        (resume: they are decoded again, then discarded, and their bad-record counts are not
        added, since a checkpoint's ``stats.state_dict()`` already holds them). Each batch is ``record_decoder.collate``'s
        dict; the accounting keys are already moved into :attr:`stats`."""
        dataset = _EpochStream(self._plan(epoch))
        if self.num_workers == 0:
            stream: Any = iter(dataset)
        else:
            # an own generator: by default DataLoader draws its workers' base seed from the global
            # RNG, which shifts dropout's random stream by num_workers and breaks exact resume
            stream = iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                                     worker_init_fn=ignore_stop_signals,
                                     generator=torch.Generator().manual_seed(mix_seed("workers", self.seed, epoch, self.rank))))
        counts0, seen0 = self.stats.snapshot()
        produced = 0
        try:
            for item in stream:
                stats_only = item.pop("_stats_only", False)
                # counts that arrive with the skipped batches are already in the stats restored
                # from the checkpoint: leave them out so a resumed run counts like an unbroken one
                logged = len(self.stats.examples)
                (self.stats if produced >= skip_batches else BadRecordStats()).update(item)
                self._log_skips(logged)
                if self.max_bad_fraction is not None:
                    self.stats.check(self.max_bad_fraction, min_seen=self.min_seen)
                if stats_only:
                    continue
                produced += 1
                if produced > skip_batches:
                    yield item
        finally:
            del stream  # stops DataLoader workers when the caller leaves early
        if produced == 0:
            self._raise_empty(counts0, seen0)
        if self.stats.bad > sum(counts0.values()):
            epoch_stats = BadRecordStats()
            epoch_stats.merge(dict(self.stats.counts - counts0), self.stats.seen - seen0)
            _log.warning("d2v: epoch %d, rank %d: %s", epoch, self.rank, epoch_stats.summary())
        if self.max_bad_fraction is not None:
            self.stats.check(self.max_bad_fraction, min_seen=1)  # a whole epoch is enough evidence

    def _log_skips(self, logged: int) -> None:
        """Log each skipped record that :attr:`stats` keeps as an example (the first
        ``MAX_EXAMPLES``), with its file or shard and key; later ones are only counted."""
        for url, key, message in self.stats.examples[logged:]:
            _log.warning("d2v: skipped record %s in %s (%s)", key, url, message)
        if len(self.stats.examples) >= MAX_EXAMPLES and self.stats.bad > MAX_EXAMPLES and not self._said_limit:
            self._said_limit = True
            _log.warning("d2v: more than %d bad records; further ones are counted per reason (summary.json), not logged", MAX_EXAMPLES)

    def _raise_empty(self, counts0: Any, seen0: int) -> None:
        epoch = BadRecordStats()
        epoch.merge(dict(self.stats.counts - counts0), self.stats.seen - seen0)
        usable = epoch.seen - epoch.bad
        if usable <= 0:
            first = f"; first: {' '.join(self.stats.examples[0])}" if self.stats.examples else ""
            raise DataError(f"no usable record in {self.source.spec}: {epoch.summary()}{first}")
        raise DataError(
            f"{self.source.spec}: only {usable} usable record(s) reached rank {self.rank} this epoch, fewer than "
            f"one batch of {self.batch_size} per worker ({max(1, self.num_workers)} worker(s)); "
            "lower data.batch_size or data.num_workers, or add data"
        )
