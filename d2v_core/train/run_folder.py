"""Run-folder ownership: d2v writes only inside folders it created or that carry its marker.

- ``RUN/d2v-run.json`` (the run manifest) is the first file d2v writes into a run folder. A
  folder that is not empty and has no manifest belongs to someone else and is refused, unless
  ``--resume`` finds a complete d2v checkpoint there (a run written before the manifest existed;
  it is adopted by writing the manifest).
- ``RUN/.d2v-lock`` holds the pid and host of the one process writing the run. It is created
  atomically (a complete temporary file hard-linked to the lock name), so a second writer is
  refused; a lock of a process that no longer exists on this host is stale and taken over.
- ``RUN/.d2v-written`` lists every name d2v created under ``checkpoints/``, appended
  before the name is created; pruning and clean-up delete only names on that list.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from d2v_core.errors import PreflightError

MANIFEST = "d2v-run.json"
LOCK = ".d2v-lock"
JOURNAL = ".d2v-written"  # the names d2v created under checkpoints/


class RunFolderError(PreflightError):
    """The output folder is not d2v's, or another process is writing it."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def is_run_folder(run_dir: str | Path) -> bool:
    return (Path(run_dir) / MANIFEST).is_file()


def _has_d2v_checkpoint(run_dir: Path) -> bool:
    from d2v_core.train.checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir) is not None


def write_manifest(run_dir: Path) -> None:
    from d2v_core import __version__

    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"d2v_run": 1, "created": time.time(), "d2v": __version__}, indent=2), encoding="utf-8")
    os.replace(tmp, run_dir / MANIFEST)


def claim(run_dir: str | Path, *, resume: bool = False) -> Path:
    """Make sure d2v may write in ``run_dir``: create it (manifest first), accept a folder with
    the manifest, adopt a pre-manifest d2v run on ``resume``, refuse anything else."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--out {run_dir} is a file, not a folder; choose another --out")
    if is_run_folder(run_dir):
        return run_dir
    try:
        empty = not run_dir.exists() or not any(run_dir.iterdir())
    except OSError as exc:
        raise RunFolderError(f"cannot read output folder {run_dir} ({exc.strerror or exc}); choose another --out") from exc
    if empty or (resume and _has_d2v_checkpoint(run_dir)):
        if not empty:  # adopt an earlier d2v run: its complete checkpoints are d2v's to prune
            from d2v_core.train.checkpoint import list_checkpoints

            record(run_dir, *[c.path.name for c in list_checkpoints(run_dir)])
        try:
            write_manifest(run_dir)
        except OSError as exc:
            raise _not_writable(run_dir, exc) from exc
        return run_dir
    hint = "" if resume else " (or pass --resume if it holds a d2v run)"
    raise RunFolderError(
        f"--out {run_dir} is not empty and is not a d2v run folder (no {MANIFEST}); d2v writes only into new or "
        f"empty folders or its own runs: choose another --out{hint}"
    )


def _not_writable(run_dir: Path, exc: OSError) -> RunFolderError:
    return RunFolderError(f"output directory {run_dir} is not writable ({exc.strerror or exc}); choose another with --out")


# -- the names d2v wrote under checkpoints/ ------------------------------------------------


def record(run_dir: str | Path, *names: str) -> None:
    """Append ``names`` (entries of ``RUN/checkpoints``) to the journal, durably, before they are
    created: whatever a kill leaves behind under one of them is known to be d2v's."""
    if not names:
        return
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / JOURNAL, "a", encoding="utf-8") as f:
        f.write("".join(f"{n}\n" for n in names))
        f.flush()
        os.fsync(f.fileno())


def recorded(run_dir: str | Path) -> set[str]:
    """The names d2v wrote under ``RUN/checkpoints`` (a torn last line matches nothing)."""
    path = Path(run_dir) / JOURNAL
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return {line.strip() for line in text.splitlines() if line.strip()}


# -- the writer's lock ---------------------------------------------------------------------


def _read_lock(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def acquire_lock(run_dir: str | Path) -> Path:
    """Take ``RUN/.d2v-lock`` or raise :class:`RunFolderError` naming the holder."""
    run_dir = Path(run_dir)
    lock = run_dir / LOCK
    host, pid = socket.gethostname(), os.getpid()
    tmp = run_dir / f".d2v-lock.{host}.{pid}.tmp"
    try:
        tmp.write_text(json.dumps({"pid": pid, "host": host, "time": time.time()}), encoding="utf-8")
    except OSError as exc:
        raise _not_writable(run_dir, exc) from exc
    try:
        for _ in range(3):
            try:
                os.link(tmp, lock)  # atomic, and the lock is complete the moment it exists
                return lock
            except FileExistsError:
                pass
            holder = _read_lock(lock)
            if holder is None:  # unreadable: written by something else, or vanished meanwhile
                if not lock.exists():
                    continue
                raise RunFolderError(f"{lock} exists but is not a d2v lock; if no d2v process writes {run_dir}, delete it")
            same_host = holder.get("host") == host
            if same_host and holder.get("pid") != pid and not pid_alive(int(holder.get("pid", -1))):
                with contextlib.suppress(FileNotFoundError):  # stale: its process is gone
                    os.unlink(lock)
                continue
            where = "this process" if same_host and holder.get("pid") == pid else f"pid {holder.get('pid')} on {holder.get('host')}"
            raise RunFolderError(
                f"{run_dir} is being written by another d2v run ({where}); wait for it, or choose another --out"
                + ("" if same_host else f" (if that process is dead, delete {lock})")
            )
        raise RunFolderError(f"cannot take the lock {lock}; try again")
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def release_lock(run_dir: str | Path) -> None:
    lock = Path(run_dir) / LOCK
    holder = _read_lock(lock)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(OSError):
            lock.unlink()


@contextlib.contextmanager
def locked(run_dir: str | Path, *, resume: bool = False) -> Iterator[Path]:
    """Claim ``run_dir`` and hold its lock for the duration."""
    path = claim(run_dir, resume=resume)
    acquire_lock(path)
    try:
        yield path
    finally:
        release_lock(path)
