"""Pack a folder, manifest or existing shards into webdataset tar shards.

Records keep their original bytes and keys; manifest metadata becomes a ``.json`` member, text
lines a ``.txt`` member. Each shard is written as ``<name>.tar.partial`` and renamed to
``<prefix>-NNNNNN.tar`` only once complete, so an interrupted run never leaves a torn shard that
looks finished. Member mtimes are fixed (0) so the same input gives byte-identical shards.
"""

from __future__ import annotations

import json
import os
import random
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from d2v_core.errors import ConfigError, DataError

_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
          "T": 1000**4, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_BLOCK = 512  # tar header and data block size
PARTIAL_SUFFIX = ".partial"


def parse_size(text: str | int) -> int:
    """Bytes from ``"256MB"``, ``"1GB"``, ``"500KB"``, ``"2GiB"`` or a plain number (KB/MB/GB
    are powers of 1000, KiB/MiB/GiB powers of 1024)."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.match(str(text))
        unit = m.group(2).upper() if m else ""
        if not m or unit not in _UNITS:
            raise ConfigError(f"cannot read size {text!r}: use a number of bytes or e.g. 500KB, 256MB, 1GB, 2GiB")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigError(f"size must be positive, got {text!r}")
    return value


def format_size(n: int) -> str:
    for unit, scale in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _tar_bytes(payload_len: int) -> int:
    """Bytes one member takes in a tar: a header block plus the data padded to blocks."""
    return _BLOCK + -(-payload_len // _BLOCK) * _BLOCK


def _shard_bytes(members_bytes: int) -> int:
    """Size of a tar file holding members of this many bytes: two end blocks, then padding
    to tarfile's 10240-byte record."""
    return -(-(members_bytes + 2 * _BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def shard_key(key: str) -> str:
    """A record key safe as a webdataset member name: relative, without ``..`` or ``.`` parts
    (a tar extracted later must not write outside its folder: source tars may hold ``../x`` or
    ``/etc/x`` members), and, since webdataset splits the key from the extension at the first dot
    of the base name, with dots there turned into ``_``."""
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    head, _, base = "/".join(parts or ["record"]).rpartition("/")
    base = base.replace(".", "_")
    return f"{head}/{base}" if head else base


@dataclass
class ShardPackResult:
    """What :func:`pack_shards` wrote."""

    paths: list[Path] = field(default_factory=list)
    records: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def pattern(self) -> str:
        """A brace pattern naming all written shards (for ``data.train``)."""
        if not self.paths:
            return ""
        first, last = self.paths[0], self.paths[-1]
        if len(self.paths) == 1:
            return str(first)
        prefix = first.name.rsplit("-", 1)[0]
        return str(first.parent / f"{prefix}-{{{first.stem.rsplit('-', 1)[1]}..{last.stem.rsplit('-', 1)[1]}}}.tar")


def _members(record: dict) -> dict:
    """Tar members of one record: payload bytes under their extensions, metadata as json."""
    sample = {"__key__": shard_key(str(record["__key__"]))}
    for k, v in record.items():
        if k.startswith("__"):
            continue
        sample[k] = v if isinstance(v, (bytes, bytearray)) else str(v).encode("utf-8")
    meta = record.get("__meta__")
    if meta and "json" not in sample:
        sample["json"] = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return sample


def _records(source, shuffle_seed: int | None, result: ShardPackResult) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    def on_error(exc: BaseException, url, key) -> bool:  # type: ignore[no-untyped-def]
        reason = exc.reason if hasattr(exc, "reason") else f"error:{type(exc).__name__}"
        result.skipped[reason] = result.skipped.get(reason, 0) + 1
        return True

    if shuffle_seed is not None and not source.is_sharded:
        from dataclasses import replace

        entries = list(source.entries)
        random.Random(shuffle_seed).shuffle(entries)
        source = replace(source, entries=tuple(entries))
    yield from source.iter_records(on_error=on_error)


def pack_shards(
    src_spec: str,
    out_dir: str | Path,
    prefix: str,
    extensions: tuple[str, ...],
    max_size_bytes: int = 256 * 1000**2,
    max_count: int | None = None,
    overwrite: bool = False,
    shuffle_seed: int | None = None,
) -> ShardPackResult:
    """Pack the records of ``src_spec`` into ``out_dir/{prefix}-000000.tar``, ... A new shard
    starts before a record that would take a shard past ``max_size_bytes`` (tar headers
    included; a single bigger record gets a shard of its own) or past ``max_count`` records.
    ``shuffle_seed`` shuffles list sources before packing (shards are then read in mixed order).
    Unreadable files are skipped and counted in ``skipped``."""
    import webdataset as wds

    from d2v_core.data.sources import resolve_source

    if not prefix or "/" in prefix or prefix.startswith("."):
        raise ConfigError(f"shard prefix {prefix!r} must be a plain file name part")
    if max_count is not None and max_count < 1:
        raise ConfigError(f"max_count must be >= 1, got {max_count}")
    max_size_bytes = parse_size(max_size_bytes)
    source = resolve_source(src_spec, extensions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))
    if existing and not overwrite:
        raise DataError(f"{out} already holds {len(existing)} {prefix}-*.tar shard(s) (e.g. {existing[0].name}); pass --overwrite or another output folder")
    outputs = {str(Path(u).resolve()) for u in source.urls}
    if any(str(p.resolve()) in outputs for p in existing):
        raise DataError(f"output {out} would overwrite the input shards {src_spec!r}; choose another output folder")
    for stale in [*existing, *out.glob(f"{prefix}-*.tar{PARTIAL_SUFFIX}")]:
        stale.unlink()

    result = ShardPackResult()
    writer = None
    handle = None
    tmp: Path | None = None
    size = count = 0

    def finish() -> None:
        nonlocal writer, handle, tmp
        if writer is None or tmp is None:
            return
        writer.close()
        handle.close()
        final = tmp.with_name(tmp.name[: -len(PARTIAL_SUFFIX)])
        os.replace(tmp, final)
        result.paths.append(final)
        result.bytes += final.stat().st_size
        writer, handle, tmp = None, None, None

    try:
        for record in _records(source, shuffle_seed, result):
            sample = _members(record)
            need = sum(_tar_bytes(len(v)) for k, v in sample.items() if not k.startswith("__"))
            full = writer is not None and (_shard_bytes(size + need) > max_size_bytes or (max_count is not None and count >= max_count))
            if full:
                finish()
            if writer is None:
                tmp = out / f"{prefix}-{len(result.paths):06d}.tar{PARTIAL_SUFFIX}"
                handle = open(tmp, "wb")
                writer = wds.TarWriter(handle, encoder=False, mtime=0)
                size = count = 0
            writer.write(sample)
            size += need
            count += 1
            result.records += 1
        finish()
    except BaseException:
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the partial file is deleted anyway
                pass
        if handle is not None:
            handle.close()
        if tmp is not None and tmp.exists():
            tmp.unlink()
        raise
    if result.records == 0:
        raise DataError(f"no readable record in {src_spec!r} ({', '.join(f'{r} {n}' for r, n in result.skipped.items()) or 'empty'})")
    return result


def make_shards(src_spec: str, out_dir: str | Path, prefix: str, extensions: tuple[str, ...], **options: Any) -> list[Path]:
    """Pack ``src_spec`` into tar shards; returns the shard paths (options: see :func:`pack_shards`)."""
    return pack_shards(src_spec, out_dir, prefix, extensions, **options).paths
