"""Where training records come from: a folder, a CSV/TSV/JSONL manifest, a text file, or tar shards.

:func:`resolve_source` turns the ``data.train`` string into a :class:`Source`. A record is a
dict as in webdataset: ``{"__key__": str, "__url__": file or shard, "<ext>": bytes, ...}`` plus
``"__meta__"`` (a dict) for manifest columns or a shard's ``.json`` member.

- folder: every file below it (recursively, hidden entries skipped) whose name ends in one of
  ``extensions``; key = path relative to the folder without the extension. A folder with no
  such file but with ``.tar`` files is read as shards. Symlinks are followed, but every directory
  and every file is visited once (a link to ``.`` or a loop adds nothing); files are opened
  non-blocking and must be regular (a FIFO is a counted skip, never a wait).
- ``.csv`` / ``.tsv``: column ``path`` (relative to the manifest's folder, or absolute); an
  optional ``key`` column; other columns become ``__meta__``. A ``.tsv`` whose first line is a
  directory is read as a fairseq manifest (root line, then ``relpath<TAB>n_samples``).
- ``.jsonl``: one object per line with ``path`` or ``text`` (payload ``{"txt": text bytes}``);
  optional ``key``/``id``; other fields become ``__meta__``.
- ``.txt``: one text record per non-empty line (key = 1-based line number, 9 digits).
- one file with one of ``extensions`` (``clip.flac``): that record alone (key = file name without
  the extension).
  Lines of ``.jsonl`` / ``.txt`` that are not UTF-8 are counted as ``invalid_utf8``.
- shards: a ``.tar`` path, a glob (``shards/*.tar``) or a brace pattern
  (``shards/audio-{000000..000003}.tar``).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import braceexpand

from d2v_core.errors import DataError, MissingInputError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Entry:
    """One record of a folder or manifest source (read lazily by :meth:`Source.read`)."""

    key: str
    path: str | None = None  # absolute file whose bytes are the payload
    ext: str | None = None  # record field the file's bytes go under
    text: str | None = None  # inline text payload (JSONL ``text``, ``.txt`` lines)
    meta: Mapping[str, Any] | None = None
    error: str | None = None  # a manifest line that could not be parsed
    reason: str = "bad_manifest_line"  # what ``error`` is counted as


@dataclass(frozen=True)
class Source:
    """Resolved training data: a list of :class:`Entry` (folder, manifest) or shard URLs."""

    spec: str
    kind: str  # "folder" | "file" | "csv" | "jsonl" | "lines" | "shards"
    entries: tuple[Entry, ...] = ()
    urls: tuple[str, ...] = ()
    manifest: str | None = None

    @property
    def is_sharded(self) -> bool:
        return self.kind == "shards"

    def __len__(self) -> int:
        """Number of records (list sources) or of shards."""
        return len(self.urls) if self.is_sharded else len(self.entries)

    def read(self, entry: Entry) -> dict:
        """The record of one entry; raises ``SkipRecord`` for a bad manifest line and
        ``OSError`` for a file that cannot be read (the loader counts both)."""
        if entry.error is not None:
            from d2v_core.interfaces import SkipRecord

            raise SkipRecord(entry.reason, entry.error)
        if entry.text is not None:
            record: dict = {"__key__": entry.key, "__url__": self.manifest or self.spec, "txt": entry.text.encode("utf-8")}
        else:
            assert entry.path is not None and entry.ext is not None
            record = {"__key__": entry.key, "__url__": entry.path, entry.ext: read_regular_file(entry.path)}
        if entry.meta is not None:
            record["__meta__"] = dict(entry.meta)
        return record

    def iter_records(self, on_error=None) -> Iterator[dict]:  # type: ignore[no-untyped-def]
        """Every record in stored order (for make-shards and inspection). ``on_error(exc, url,
        key) -> bool`` decides whether to go on after an unreadable record (default: raise)."""
        if self.is_sharded:
            import webdataset as wds

            def handler(exc: BaseException) -> bool:
                if on_error is None:
                    return False
                return bool(on_error(exc, _url_of(exc), None))

            for sample in wds.tarfile_to_samples(handler=handler if on_error else wds.reraise_exception)(
                iter([{"url": u} for u in self.urls])
            ):
                yield shard_record(sample)
            return
        for entry in self.entries:
            try:
                yield self.read(entry)
            except Exception as exc:  # noqa: BLE001 - the caller decides (count or raise)
                if on_error is None or not on_error(exc, entry.path or self.manifest or self.spec, entry.key):
                    raise


def read_regular_file(path: str) -> bytes:
    """The bytes of ``path``; a FIFO, socket or device (which could block forever or never end)
    raises ``SkipRecord("not_a_regular_file")`` without being read."""
    from d2v_core.interfaces import SkipRecord

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not wait for a writer
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SkipRecord("not_a_regular_file", f"{path} is a {_file_kind(mode)}, not a regular file")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read()
    finally:
        if fd >= 0:
            os.close(fd)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def _url_of(exc: BaseException) -> str | None:
    """webdataset appends the shard URL to an exception's args; find it."""
    for arg in reversed(getattr(exc, "args", ())):
        if isinstance(arg, str) and arg.endswith(TAR_SUFFIXES):
            return arg
    return None


def shard_record(sample: dict) -> dict:
    """A tar sample with its ``.json`` member (if any) parsed into ``__meta__``."""
    if "json" in sample and "__meta__" not in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            meta = None
        if isinstance(meta, dict):
            sample["__meta__"] = meta
    return sample


# -- resolution ------------------------------------------------------------------------------


def _norm_exts(extensions: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(e.lower().lstrip(".") for e in extensions)


def _match_ext(name: str, extensions: tuple[str, ...]) -> str | None:
    """The longest of ``extensions`` that ``name`` ends with (case-insensitive)."""
    lower = name.lower()
    hits = [e for e in extensions if lower.endswith("." + e)]
    return max(hits, key=len) if hits else None


def _suffix(name: str) -> str:
    return Path(name).suffix.lower().lstrip(".")


def _strip_ext(rel: str, ext: str) -> str:
    return rel[: -(len(ext) + 1)] if ext and rel.lower().endswith("." + ext) else rel


def _key_from_path(raw: str, base: Path, ext: str) -> str:
    """Record key for a manifest path: relative to the manifest folder, without extension,
    never starting with ``/`` or ``..`` (keys become tar member names)."""
    p = Path(raw)
    rel = os.path.relpath(p, base) if p.is_absolute() else os.path.normpath(raw)
    parts = [x for x in Path(rel).parts if x not in ("..", ".", "/")]
    return _strip_ext("/".join(parts), ext)


def _looks_like_tar(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def _exts_text(extensions: tuple[str, ...]) -> str:
    return ", ".join("." + e for e in extensions) or "(none)"


def resolve_source(spec: str, extensions: tuple[str, ...] | list[str], allow_pipe_urls: bool = False) -> Source:
    """Resolve ``data.train`` to a :class:`Source`; raises :class:`DataError` with one actionable
    line when nothing usable matches. ``pipe:`` and other ``scheme:`` URLs run shell commands in
    webdataset and are refused unless ``allow_pipe_urls``."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError("no training data given: set data.train (or --data) to a folder, a .csv/.jsonl manifest or tar shards")
    spec = spec.strip()
    exts = _norm_exts(extensions)
    if _SCHEME.match(spec) and not re.match(r"^[a-zA-Z]:[\\/]", spec):
        if not allow_pipe_urls:
            raise DataError(
                f"refusing URL {spec!r}: pipe: and remote URLs make webdataset run shell commands; "
                "copy the shards locally, or pass --allow-pipe-urls if you trust this string"
            )
        return Source(spec, "shards", urls=tuple(braceexpand.braceexpand(spec)))
    expanded = os.path.expanduser(spec)
    if "{" in expanded:
        return _brace_shards(spec, expanded)
    if _GLOB_CHARS.search(expanded):
        return _glob_shards(spec, expanded)
    path = Path(expanded)
    if path.is_dir():
        return _folder(spec, path, exts)
    if not path.exists():
        raise MissingInputError(f"training data {spec!r} does not exist (expected a folder, a .csv/.tsv/.jsonl/.txt manifest or tar shards)")
    name = path.name.lower()
    if _looks_like_tar(name):
        return Source(spec, "shards", urls=(str(path.resolve()),))
    if name.endswith((".csv", ".tsv")):
        try:
            return _csv_manifest(spec, path, exts)
        except UnicodeDecodeError as exc:
            raise DataError(f"manifest {spec!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    if name.endswith(".jsonl"):
        return _jsonl_manifest(spec, path, exts)
    if name.endswith(".txt"):
        return _text_lines(spec, path)
    ext = _match_ext(name, exts)
    if ext is not None:
        return Source(spec, "file", entries=(Entry(key=_strip_ext(path.name, ext), path=str(path.resolve()), ext=ext),))
    raise DataError(
        f"cannot read {spec!r} as training data: pass a {_exts_text(exts)} file or a folder of them, "
        "a .csv/.tsv/.jsonl manifest, a .txt file (one text per line) or .tar shards"
    )


def _shards_from(spec: str, names: list[str]) -> Source:
    not_tar = [n for n in names if not _looks_like_tar(n)]
    if not_tar:
        raise DataError(
            f"pattern {spec!r} matched non-tar files (e.g. {not_tar[0]}); patterns select .tar shards, "
            "for loose files pass their folder or a manifest"
        )
    return Source(spec, "shards", urls=tuple(str(Path(n).resolve()) for n in names))


def _brace_shards(spec: str, expanded: str) -> Source:
    names: list[str] = []
    for part in braceexpand.braceexpand(expanded):
        if _GLOB_CHARS.search(part):
            hits = sorted(glob.glob(part, recursive=True))
            if not hits:
                raise MissingInputError(f"pattern {spec!r}: {part!r} matches no file (looking for .tar shards)")
            names += hits
            continue
        if not Path(part).is_file():
            total = sum(1 for _ in braceexpand.braceexpand(expanded))
            raise MissingInputError(
                f"shard {part} does not exist (named by pattern {spec!r}, {total} files); fix the range or create the shards "
                "with `d2v make-shards`"
            )
        names.append(part)
    return _shards_from(spec, names)


def _glob_shards(spec: str, expanded: str) -> Source:
    names = sorted(n for n in glob.glob(expanded, recursive=True) if Path(n).is_file())
    if not names:
        raise MissingInputError(f"pattern {spec!r} matches no file (looking for .tar shards); check the path and quoting")
    return _shards_from(spec, names)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _folder(spec: str, root: Path, exts: tuple[str, ...]) -> Source:
    entries: list[Entry] = []
    tars: list[str] = []
    # Symlinks are followed, but each directory and each file is visited once (by device and
    # inode): a link to ``.`` or a loop of links adds nothing and never recurses forever.
    seen_dirs = {_identity(str(root))}
    seen_files: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            ident = _identity(os.path.join(dirpath, d))
            if ident is not None and ident not in seen_dirs:
                seen_dirs.add(ident)
                keep.append(d)
        dirnames[:] = keep
        for fn in filenames:
            if fn.startswith("."):
                continue
            full = os.path.join(dirpath, fn)
            ext = _match_ext(fn, exts)
            if ext is None and not _looks_like_tar(fn):
                continue
            try:
                st = os.stat(full)
            except OSError:  # a dangling link: reading it counts the error
                st = None
            if st is not None:
                if (st.st_dev, st.st_ino) in seen_files:
                    continue
                seen_files.add((st.st_dev, st.st_ino))
            if ext is not None:
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                entries.append(Entry(key=_strip_ext(rel, ext), path=os.path.abspath(full), ext=ext))
                continue
            if st is not None and not stat.S_ISREG(st.st_mode):
                continue  # a FIFO named x.tar is never opened
            tars.append(full)
    if entries:
        entries.sort(key=lambda e: (e.key, e.ext or ""))
        return Source(spec, "folder", entries=tuple(entries))
    if tars:
        return Source(spec, "shards", urls=tuple(str(Path(t).resolve()) for t in sorted(tars)))
    raise DataError(
        f"no {_exts_text(exts)} files (nor .tar shards) under folder {spec!r} (searched recursively); "
        "check the path or the modality"
    )


def _entry_for_path(raw: str, base: Path, exts: tuple[str, ...], key: str | None, meta: dict | None) -> Entry:
    full = Path(raw) if Path(raw).is_absolute() else base / raw
    ext = _match_ext(raw, exts) or _suffix(raw)
    return Entry(key=key or _key_from_path(raw, base, ext), path=os.path.abspath(full), ext=ext, meta=meta)


def _require_some_match(spec: str, entries: list[Entry], exts: tuple[str, ...]) -> None:
    if not entries:
        raise DataError(f"manifest {spec!r} lists no records")
    if exts and not any(e.text is not None or e.error is not None or e.ext in exts for e in entries):
        raise DataError(f"manifest {spec!r} lists no {_exts_text(exts)} files (first: {entries[0].path}); check the modality")


def _fairseq_root(path: Path, first_line: str) -> Path | None:
    """The root folder of a fairseq ``.tsv`` manifest (first line a directory), else None."""
    line = first_line.rstrip("\r\n")
    if not line or "\t" in line:
        return None
    for cand in (Path(line), path.parent / line):
        if cand.is_dir():
            return cand
    return None


def _csv_manifest(spec: str, path: Path, exts: tuple[str, ...]) -> Source:
    base = path.parent
    with open(path, newline="", encoding="utf-8") as f:
        first = f.readline()
        root = _fairseq_root(path, first) if path.name.lower().endswith(".tsv") else None
        entries: list[Entry] = []
        if root is not None:
            for line in f:
                cols = line.rstrip("\r\n").split("\t")
                if not cols[0]:
                    continue
                meta: dict[str, Any] = {"n_samples": int(cols[1])} if len(cols) > 1 and cols[1].isdigit() else {}
                entries.append(_entry_for_path(cols[0], root, exts, None, meta))
            _require_some_match(spec, entries, exts)
            return Source(spec, "csv", entries=tuple(entries), manifest=str(path.resolve()))
        f.seek(0)
        reader = csv.DictReader(f, delimiter="\t" if path.name.lower().endswith(".tsv") else ",")
        fields = reader.fieldnames or []
        if "path" not in fields:
            raise DataError(f"manifest {spec!r} has no 'path' column (columns: {', '.join(fields) or 'none'})")
        for lineno, row in enumerate(reader, start=2):
            raw = (row.get("path") or "").strip()
            meta = {k: v for k, v in row.items() if k not in ("path", "key") and k is not None}
            if not raw:
                entries.append(Entry(key=f"line{lineno:09d}", error=f"{path.name} line {lineno}: empty path"))
                continue
            entries.append(_entry_for_path(raw, base, exts, (row.get("key") or "").strip() or None, meta))
    _require_some_match(spec, entries, exts)
    return Source(spec, "csv", entries=tuple(entries), manifest=str(path.resolve()))


def _jsonl_manifest(spec: str, path: Path, exts: tuple[str, ...]) -> Source:
    base = path.parent
    entries: list[Entry] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                entries.append(Entry(key=f"{lineno:09d}", error=f"{path.name} line {lineno}: not UTF-8 ({exc.reason} at byte "
                                     f"{exc.start})", reason="invalid_utf8"))
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                entries.append(Entry(key=f"{lineno:09d}", error=f"{path.name} line {lineno}: invalid JSON ({exc})"))
                continue
            if not isinstance(obj, dict) or not (isinstance(obj.get("path"), str) or isinstance(obj.get("text"), str)):
                entries.append(Entry(key=f"{lineno:09d}", error=f"{path.name} line {lineno}: needs a 'path' or 'text' string"))
                continue
            key = obj.get("key", obj.get("id"))
            key = str(key) if key is not None else None
            meta = {k: v for k, v in obj.items() if k not in ("path", "text", "key", "id")}
            if isinstance(obj.get("text"), str):
                entries.append(Entry(key=key or f"{lineno:09d}", text=obj["text"], meta=meta))
            else:
                entries.append(_entry_for_path(obj["path"], base, exts, key, meta))
    _require_some_match(spec, entries, exts)
    return Source(spec, "jsonl", entries=tuple(entries), manifest=str(path.resolve()))


def _text_lines(spec: str, path: Path) -> Source:
    entries = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:  # counted, never silently replaced
                entries.append(Entry(key=f"{i:09d}", error=f"{path.name} line {i}: not UTF-8 ({exc.reason} at byte {exc.start})",
                                     reason="invalid_utf8"))
                continue
            if line.strip():
                entries.append(Entry(key=f"{i:09d}", text=line.rstrip("\r\n")))
    if not entries:
        raise DataError(f"text file {spec!r} has no non-empty line")
    return Source(spec, "lines", entries=tuple(entries), manifest=str(path.resolve()))
