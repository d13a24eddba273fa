"""Record lengths of a list source (folder, manifest): from the manifest, or measured once and
cached next to the data.

The cache is ``<folder>/.d2v-lengths.json`` or ``<manifest>.d2v-lengths.json``: the decoder's
:meth:`~d2v_core.interfaces.RecordDecoder.length_fingerprint` and, per record, its file size and
modification time (or a hash of inline text) with the measured length. A record whose file
changed is measured again; a folder that cannot be written keeps the lengths in memory (and says
so once). A length of 0 marks a record that could not be measured: budget batching leaves it out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from d2v_core.data.sources import Entry, Source
from d2v_core.interfaces import RecordDecoder, SkipRecord

_log = logging.getLogger("d2v.data")
CACHE_NAME = ".d2v-lengths.json"


def cache_path(source: Source) -> Path | None:
    """Where the lengths of ``source`` are cached (None for shards)."""
    if source.is_sharded:
        return None
    if source.manifest is not None:
        return Path(f"{source.manifest}{CACHE_NAME}")
    return Path(os.path.expanduser(source.spec)) / CACHE_NAME


def _signature(entry: Entry) -> str:
    """What must not change for a cached length to stay valid."""
    if entry.text is not None:
        return "t" + hashlib.blake2b(entry.text.encode("utf-8"), digest_size=8).hexdigest()
    if entry.path is None:
        return "-"
    try:
        st = os.stat(entry.path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


class _Measure(Dataset):
    def __init__(self, source: Source, record_decoder: RecordDecoder, todo: list[int]) -> None:
        self.source, self.record_decoder, self.todo = source, record_decoder, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int) -> tuple[int, int, str | None, str]:
        index = self.todo[i]
        entry = self.source.entries[index]
        try:
            return index, int(self.record_decoder.record_length(self.source.read(entry))), None, ""
        except SkipRecord as exc:
            return index, 0, exc.reason, exc.detail
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - counted like a bad record at training time (a plugin's
            return index, 0, f"error:{type(exc).__name__}", str(exc)[:300]  # SystemExit too)


def record_lengths(source: Source, record_decoder: RecordDecoder, *, num_workers: int = 0, use_cache: bool = True,
                   on_bad: Callable[[int, str, str], None] | None = None) -> list[int]:
    """The length of every entry of ``source`` (0 where it could not be measured: ``on_bad(index,
    reason, detail)`` is called for each such record measured now; the cache keeps a 0)."""
    lengths: list[int | None] = [None] * len(source.entries)
    for i, entry in enumerate(source.entries):
        if entry.meta:
            n = record_decoder.length_from_meta(entry.meta)
            if n is not None:
                lengths[i] = int(n)
    todo = [i for i, n in enumerate(lengths) if n is None]
    if not todo:
        return [int(n or 0) for n in lengths]
    path = cache_path(source) if use_cache else None
    fingerprint = record_decoder.length_fingerprint()
    cached: dict[str, Any] = {}
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("fingerprint") == fingerprint:
                cached = data.get("records", {})
        except (OSError, ValueError):
            cached = {}
    signatures = {i: _signature(source.entries[i]) for i in todo}
    keys = {i: source.entries[i].path or source.entries[i].key for i in todo}
    reasons: dict[int, tuple[str, str]] = {}
    for i in todo:
        hit = cached.get(keys[i])
        if isinstance(hit, list) and len(hit) in (2, 4) and hit[0] == signatures[i]:
            lengths[i] = int(hit[1])
            if len(hit) == 4:  # a record that could not be measured: say so on every run
                reasons[i] = (str(hit[2]), str(hit[3]))
                if on_bad is not None:
                    on_bad(i, *reasons[i])
    missing = [i for i in todo if lengths[i] is None]
    if missing:
        _log.info("d2v: measuring %d record length(s) of %s (once; cached in %s)", len(missing), source.spec, path)
        measure = _Measure(source, record_decoder, missing)
        # an own generator: a DataLoader would otherwise draw its seed from the global RNG, and
        # whether the lengths were cached would change the run's random stream (exact resume)
        results = (iter(DataLoader(measure, batch_size=None, num_workers=num_workers, generator=torch.Generator().manual_seed(0)))
                   if num_workers > 0 else (measure[i] for i in range(len(measure))))
        bad = 0
        for index, n, reason, detail in results:
            lengths[index] = n
            if reason is not None:
                bad += 1
                reasons[index] = (reason, detail)
                if on_bad is not None:
                    on_bad(index, reason, detail)
        if bad:
            _log.warning("d2v: %d record(s) of %s could not be measured and are left out of budget batches", bad, source.spec)
        if path is not None:
            records = dict(cached)
            records.update({keys[i]: [signatures[i], int(lengths[i] or 0), *reasons.get(i, ())] for i in todo})
            _write_cache(path, {"fingerprint": fingerprint, "records": records})
    return [int(n or 0) for n in lengths]


def _write_cache(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)  # atomic: another rank writing the same lengths cannot tear it
    except OSError as exc:
        _log.warning("d2v: cannot cache record lengths in %s (%s); they are measured again next run", path, exc.strerror or exc)
        try:
            tmp.unlink()
        except OSError:
            pass
