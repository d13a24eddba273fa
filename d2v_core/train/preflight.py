"""Checks that run before any training step, each failing fast with one clear line."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import torch

from d2v_core.config import RunConfig
from d2v_core.errors import PreflightError
from d2v_core.train import run_folder
from d2v_core.train.checkpoint import latest_checkpoint, remove_stale_temporaries


def resolve_device(cfg: RunConfig) -> torch.device:
    want = cfg.runtime.device
    if want == "cuda" and not torch.cuda.is_available():
        raise PreflightError("runtime.device is 'cuda' but no CUDA device is available; use --set runtime.device=cpu")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.runtime.precision == "fp16" and want == "cpu":
        raise PreflightError("fp16 autocast needs a GPU; on CPU use --set runtime.precision=bf16 or fp32")
    return torch.device(want)


def check_distributed(cfg: RunConfig) -> None:
    if cfg.runtime.distributed == "fsdp" and cfg.runtime.precision == "fp16":
        raise PreflightError("runtime.distributed=fsdp does not support fp16 loss scaling; use --set runtime.precision=bf16 (or ddp)")


def check_batch(cfg: RunConfig, world_size: int) -> int:
    """The per-rank micro-batch size; the global batch must divide over ranks x accumulation."""
    parts = world_size * cfg.optim.accum_steps
    if cfg.data.max_tokens is not None:  # budget batches: as many records as fit (unless packed rows)
        return max(1, cfg.data.batch_size // parts)
    if cfg.data.batch_size % parts:
        raise PreflightError(
            f"data.batch_size {cfg.data.batch_size} does not divide over {world_size} rank(s) x "
            f"{cfg.optim.accum_steps} accumulation step(s); use a multiple of {parts}"
        )
    return cfg.data.batch_size // parts


def check_output_dir(run_dir: Path, resume: bool, bytes_needed: int) -> None:
    """d2v's own (or new) folder, writable, room for a checkpoint, and no earlier run
    overwritten unless resuming."""
    try:
        run_folder.claim(run_dir, resume=resume)  # before anything is written there
        probe = run_dir / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(f"output directory {run_dir} is not writable ({exc.strerror or exc}); choose another with --out") from exc
    remove_stale_temporaries(run_dir)  # torn writes of a killed run: never loaded, only taking space
    free = shutil.disk_usage(run_dir).free
    if free < bytes_needed:
        raise PreflightError(
            f"not enough disk space in {run_dir}: {free / 2**20:.0f} MiB free, a checkpoint needs about "
            f"{bytes_needed / 2**20:.0f} MiB; free space or choose another --out"
        )
    latest = latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise PreflightError(
            f"{run_dir} already holds checkpoints (latest: step {latest.step}); pass --resume to continue "
            f"that run or choose another --out"
        )


def checkpoint_bytes(num_params: int) -> int:
    """Student + teacher weights and two AdamW moments in fp32, with 20% headroom."""
    return int(num_params * 4 * 4 * 1.2)


