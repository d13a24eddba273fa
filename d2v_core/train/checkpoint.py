"""Checkpoints: a directory per step, written atomically, loaded without executing code.

Layout of ``RUN/checkpoints/step_00000100/``: ``student.safetensors``, ``teacher.safetensors``,
``trainer_state.pt`` (optimiser, scheduler, RNG and data position; read with
``torch.load(weights_only=True)``), ``config.yaml``, ``meta.json`` (versions, step) and
``extra/`` (non-tensor state such as a tokenizer). A checkpoint is written under a temporary name
and renamed when complete, so a crash never leaves a torn checkpoint that looks complete;
old ones are renamed before they are deleted. Leftover ``.tmp-*`` / ``.trash-*`` directories of
dead processes are removed before the next write. Every name is recorded in the run folder's
journal before it is created, and only recorded names are ever deleted (:mod:`run_folder`);
``meta.json`` holds the SHA-256 of each tensor file, verified on load (see ``docs/reliability.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from d2v_core.errors import CheckpointError, MissingCheckpointError, first_line
from d2v_core.train import run_folder

STEP_DIR = re.compile(r"^step_(\d{8})$")
COMPLETE_MARKER = "meta.json"  # written last
# A checkpoint being written (``.tmp-step_N-PID``) or being deleted (``.trash-...-PID``); never loaded.
TEMP_DIR = re.compile(r"^\.(tmp|trash)-.*-(\d+)$")
# What writers raise when the disk is full or read-only: OSError from Python's own writes,
# RuntimeError from torch.save's zip writer, SafetensorError from safetensors (checked on a full tmpfs).
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


@dataclass(frozen=True)
class StoredCheckpoint:
    """A complete checkpoint directory on disk and its step (not loaded)."""

    path: Path
    step: int


@dataclass(frozen=True)
class Checkpoint:
    """One loaded checkpoint, the only way the trainer (``--resume``), ``--init-from``,
    embed/probe and export read one: student and teacher weights, the trainer state (``None``
    for an imported checkpoint), the stored config, the meta record (versions, modality, step)
    and the encoder's extra files. ``ck["student"]``-style access reads the same fields."""

    path: Path
    step: int
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    trainer_state: dict[str, Any] | None
    config_yaml: str
    meta: dict[str, Any]
    extra: dict[str, bytes]

    @property
    def versions(self) -> dict[str, str]:
        """d2v's and each plugin distribution's version when it was written."""
        return dict(self.meta.get("versions") or {})

    @property
    def modality(self) -> str | None:
        return self.meta.get("modality")

    @property
    def extra_dir(self) -> Path:
        return self.path / "extra"

    def config(self, registry: Any) -> Any:
        """The stored config as a resolved :class:`~d2v_core.config.RunConfig` (its plugin
        sections validated by this installation's plugins), with files of ``extra`` (a
        tokenizer) pointed at the checkpoint's own copies."""
        from d2v_core.config import RunConfig
        from d2v_core.config_resolve import resolve_options
        from d2v_core.errors import D2VError
        from d2v_core.inference.pretrained import self_contained_config

        try:
            cfg = resolve_options(RunConfig.model_validate(stored_config(self.config_yaml)), registry)
        except D2VError:
            raise
        except Exception as exc:  # noqa: BLE001 - a config that no longer validates is a checkpoint problem
            raise CheckpointError(f"{self.path}: stored config does not validate with this d2v: {first_line(exc)}") from exc
        return self_contained_config(cfg, self.extra_dir, self.extra)

    def __getitem__(self, field: str) -> Any:
        if field not in self.__dataclass_fields__:
            raise KeyError(field)
        return getattr(self, field)


def stored_config(config_yaml: str) -> Any:
    """A checkpoint's ``config.yaml`` as data, with the names of older d2v versions updated
    (``targets.layer_norm`` is now ``targets.per_layer_norm``)."""
    import yaml

    data = yaml.safe_load(config_yaml)
    targets = data.get("targets") if isinstance(data, dict) else None
    if isinstance(targets, dict) and "layer_norm" in targets:
        targets["per_layer_norm"] = targets.pop("layer_norm")
    return data


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; a clone per tensor keeps tied weights loadable.
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}


def list_checkpoints(run_dir: str | Path) -> list[StoredCheckpoint]:
    """Complete checkpoints, oldest first (temporary and torn directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / COMPLETE_MARKER).is_file():
            out.append(StoredCheckpoint(p, int(m.group(1))))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(run_dir: str | Path) -> StoredCheckpoint | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the half-written (``.tmp-*``) and half-deleted (``.trash-*``) directories that a
    killed process left in ``RUN/checkpoints``: those of this process and of processes that no
    longer exist (a live writer's are kept), and only names d2v recorded creating (a user's
    folder of the same shape is never touched). Returns what was removed."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    removed = []
    ours = run_folder.recorded(run_dir)
    for p in root.iterdir():
        m = TEMP_DIR.match(p.name)
        if m and p.name in ours and p.is_dir() and (int(m.group(2)) == os.getpid() or not run_folder.pid_alive(int(m.group(2)))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _delete_dir(path: Path) -> None:
    """Rename, then delete: a kill during the deletion leaves a ``.trash-`` directory, never a
    step directory with some of its files gone."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    run_folder.record(path.parent.parent, trash.name)
    try:
        os.replace(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def _free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.0f} MiB free there"
    except OSError:
        return "free space unknown"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    student: Mapping[str, torch.Tensor],
    teacher: Mapping[str, torch.Tensor],
    trainer_state: dict[str, Any],
    config_yaml: str,
    meta: dict[str, Any],
    extra: Mapping[str, bytes] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write a checkpoint atomically and prune all but the newest ``keep_last`` complete ones.

    Any failure (disk full, read-only disk, a signal) removes the partial directory and leaves
    the earlier checkpoints as they were; write failures raise :class:`CheckpointError`."""
    run_folder.claim(run_dir)  # a new folder gets the run manifest first; a foreign one is refused
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    ours = run_folder.recorded(run_dir)
    if final.exists() and final.name not in ours:
        raise CheckpointError(f"{final} exists but was not written by d2v; move it out of {root} (d2v never deletes it)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        run_folder.record(run_dir, tmp.name, final.name, f".trash-{final.name}-{os.getpid()}")
        tmp.mkdir()
        save_file(_tensors(student), str(tmp / "student.safetensors"))
        save_file(_tensors(teacher), str(tmp / "teacher.safetensors"))
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
        if extra:
            (tmp / "extra").mkdir()
            for name, data in extra.items():
                (tmp / "extra" / Path(name).name).write_bytes(data)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        meta = {**meta, "step": step, "time": time.time(), "sha256": _checksums(tmp)}
        with open(tmp / COMPLETE_MARKER, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(meta, indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():  # an earlier write of this step: move it aside, never delete it in place
            old = final.with_name(f".trash-{final.name}-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, WRITE_ERRORS):
            raise  # e.g. KeyboardInterrupt on a second signal: nothing half-written stays behind
        previous = latest_checkpoint(run_dir)
        kept = f"; the previous checkpoint {previous.path} is intact" if previous else "; no earlier checkpoint exists"
        raise CheckpointError(
            f"cannot write checkpoint at step {step} in {root}: {first_line(exc)} ({_free_space(root)}){kept}"
        ) from exc
    ours = run_folder.recorded(run_dir)
    for stale in [c for c in list_checkpoints(run_dir) if c.path.name in ours][:-keep_last]:
        _delete_dir(stale.path)
    return final


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: The tensor files of a checkpoint, whose SHA-256 ``meta.json`` records (``config.yaml`` and
#: ``extra/`` are plain files that tools may edit on purpose, e.g. decoding options).
TENSOR_FILES = ("student.safetensors", "teacher.safetensors", "trainer_state.pt")


def _checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of each tensor file of a checkpoint."""
    return {name: _sha256(folder / name) for name in TENSOR_FILES if (folder / name).is_file()}


def verify_checksums(path: Path, meta: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointError` when a file of the checkpoint is not the one written
    (bit rot, a partial copy, an edited or swapped file). Checkpoints without checksums
    (written before d2v recorded them) are not checked."""
    sums = meta.get("sha256")
    if not isinstance(sums, dict):
        return
    for rel, want in sums.items():
        f = path / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CheckpointError(f"checkpoint {path}: meta.json names {rel!r}, outside the checkpoint; it was not written by d2v")
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {rel}; it is damaged (delete it to resume from an earlier one)")
        if _sha256(f) != want:
            raise CheckpointError(
                f"checkpoint {path}: {rel} does not match the checksum recorded when it was written (the file changed "
                "since: disk error, partial copy or edit); delete this checkpoint to resume from an earlier one"
            )


def checkpoint_dir(path: str | Path) -> Path:
    """The complete checkpoint directory ``path`` names: itself, or a run directory's newest."""
    p = Path(path)
    if (p / "checkpoints").is_dir() and not (p / COMPLETE_MARKER).exists():
        latest = latest_checkpoint(p)
        if latest is None:
            raise MissingCheckpointError(f"no complete checkpoint in {p / 'checkpoints'}")
        p = latest.path
    if not (p / COMPLETE_MARKER).is_file():
        raise MissingCheckpointError(f"{p} is not a complete d2v checkpoint (no {COMPLETE_MARKER})")
    return p


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint directory (or a run directory: its latest checkpoint). Never unpickles
    arbitrary objects: tensors come from safetensors, the rest through ``weights_only=True``."""
    p = checkpoint_dir(path)
    try:
        meta = json.loads((p / COMPLETE_MARKER).read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"{COMPLETE_MARKER} is not a JSON object")
        verify_checksums(p, meta)
        state_file = p / "trainer_state.pt"
        m = STEP_DIR.match(p.name)
        return Checkpoint(
            path=p,
            step=int(meta.get("step") or (m.group(1) if m else 0)),
            student=load_file(str(p / "student.safetensors")),
            teacher=load_file(str(p / "teacher.safetensors")),
            trainer_state=_load_trainer_state(state_file) if state_file.exists() else None,
            config_yaml=(p / "config.yaml").read_text(encoding="utf-8"),
            meta=meta,
            extra={f.name: f.read_bytes() for f in (p / "extra").iterdir()} if (p / "extra").is_dir() else {},
        )
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {first_line(exc)}") from exc


def _load_trainer_state(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only; anything that would
    run code when unpickled (a ``__reduce__`` calling a function) is refused, not executed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of foreign files
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        detail = found.group(1).split(". ")[0].strip() if found else first_line(exc)
        raise CheckpointError(
            f"refusing to load {path}: it holds more than tensors and plain data ({detail}), and unpickling it "
            "could run code; use checkpoints written by d2v, from a source you trust"
        ) from exc


def describe_mismatch(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> str | None:
    """Why checkpoint weights ``state`` do not fit a model whose state is ``target``: missing or
    unexpected keys, shapes and dtypes (a silent cast of int8 weights would load garbage)."""
    problems = []
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    for key in target:
        if key in state:
            have, want = state[key], target[key]
            if tuple(have.shape) != tuple(want.shape):
                problems.append(f"{key}: shape {tuple(have.shape)} in the checkpoint, {tuple(want.shape)} in this config")
            elif have.dtype != want.dtype:
                problems.append(f"{key}: dtype {have.dtype} in the checkpoint, {want.dtype} in this model")
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
    if not problems:
        return None
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more
