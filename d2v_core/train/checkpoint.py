"""Checkpoints: a directory per step, written atomically, loaded without executing code.

Layout of ``RUN/checkpoints/step_00000100/``: ``student.safetensors``, ``teacher.safetensors``,
``trainer_state.pt`` (optimiser, scheduler, RNG and data position; read with
``torch.load(weights_only=True)``), ``config.yaml``, ``meta.json`` (versions, step) and
``extra/`` (non-tensor state such as a tokenizer). A checkpoint is written under a temporary name
and renamed when complete, so a crash never leaves a torn checkpoint that looks complete.
"""

from __future__ import annotations

import json
import pickle
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from d2v_core.errors import CheckpointError

STEP_DIR = re.compile(r"^step_(\d{8})$")
COMPLETE_MARKER = "meta.json"  # written last


@dataclass
class Checkpoint:
    path: Path
    step: int


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


def list_checkpoints(run_dir: str | Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first (temporary and torn directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / COMPLETE_MARKER).is_file():
            out.append(Checkpoint(p, int(m.group(1))))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


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
    """Write a checkpoint atomically and prune all but the newest ``keep_last`` complete ones."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(_tensors(student), str(tmp / "student.safetensors"))
        save_file(_tensors(teacher), str(tmp / "teacher.safetensors"))
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
        if extra:
            (tmp / "extra").mkdir()
            for name, data in extra.items():
                (tmp / "extra" / Path(name).name).write_bytes(data)
        meta = {**meta, "step": step, "time": time.time()}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        kept = f"; the previous checkpoint {previous.path} is intact" if previous else ""
        raise CheckpointError(f"cannot write checkpoint at step {step} in {root}: {exc.strerror or exc}{kept}") from exc
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old.path, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint directory (or a run directory: its latest checkpoint). Never unpickles
    arbitrary objects: tensors come from safetensors, the rest through ``weights_only=True``."""
    p = Path(path)
    if (p / "checkpoints").is_dir() and not (p / COMPLETE_MARKER).exists():
        latest = latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(f"no complete checkpoint in {p / 'checkpoints'}")
        p = latest.path
    if not (p / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"{p} is not a complete d2v checkpoint (no {COMPLETE_MARKER})")
    try:
        out = {
            "path": p,
            "student": load_file(str(p / "student.safetensors")),
            "teacher": load_file(str(p / "teacher.safetensors")),
            "config_yaml": (p / "config.yaml").read_text(encoding="utf-8"),
            "meta": json.loads((p / COMPLETE_MARKER).read_text(encoding="utf-8")),
            "extra": {f.name: f.read_bytes() for f in (p / "extra").iterdir()} if (p / "extra").is_dir() else {},
        }
        state_file = p / "trainer_state.pt"
        out["trainer_state"] = torch.load(state_file, weights_only=True, map_location="cpu") if state_file.exists() else None
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc}") from exc
    return out
