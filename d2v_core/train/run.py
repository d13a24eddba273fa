"""``pretrain(cfg)``: preflight, build, (resume,) train, summarise. What ``d2v pretrain`` calls."""

from __future__ import annotations

import contextlib
import gc
import json
import random
from pathlib import Path

import torch

from d2v_core import __version__
from d2v_core.config import RunConfig
from d2v_core.config_resolve import config_to_yaml, resolve_options
from d2v_core.errors import CheckpointError, ConfigError, DataError
from d2v_core.inference.pretrained import self_contained_config
from d2v_core.registry import Registry
from d2v_core.train import checkpoint as ckpt
from d2v_core.train import run_folder
from d2v_core.train.build import build_components, build_schedule, logger_factories
from d2v_core.train.distributed import init_distributed, shutdown
from d2v_core.train.online_probe import OnlineProbe, probe_sources
from d2v_core.train.preflight import check_batch, check_distributed, check_output_dir, checkpoint_bytes, resolve_device
from d2v_core.train.resume import check_resume_config, record_run
from d2v_core.train.trainer import Trainer, TrainResult


def pretrain(
    cfg: RunConfig,
    registry: Registry,
    *,
    resume: bool = False,
    versions: dict[str, str] | None = None,
    allow_pipe_urls: bool = False,
    init_from: str | Path | None = None,
    allow_config_change: bool = False,
) -> TrainResult:
    """Pretrain per ``cfg``; with ``resume``, continue from the newest complete checkpoint in
    ``cfg.runtime.out_dir`` so that the run matches an uninterrupted one."""
    from d2v_core.data.loader import TrainLoader
    from d2v_core.data.sources import resolve_source

    cfg = resolve_options(cfg, registry)  # a no-op for a config that resolve_config made
    if not cfg.data.train:
        raise ConfigError("no training data: pass --data PATH (a folder, a CSV/JSONL manifest or tar shards)")
    check_distributed(cfg)
    if cfg.runtime.threads is not None:  # on a shared machine fewer threads than cores can be much faster
        torch.set_num_threads(cfg.runtime.threads)
    device = resolve_device(cfg)
    dist = init_distributed(device.type)
    trainer = None
    clean = False
    made_run_dir = not Path(cfg.runtime.out_dir).exists()
    locked_dir: Path | None = None
    try:
        micro_batch = check_batch(cfg, dist.world_size)
        spec = registry.modality(cfg.modality)
        source = resolve_source(cfg.data.train, spec.extensions, allow_pipe_urls=allow_pipe_urls)
        probe_inputs = probe_sources(cfg, spec.extensions, dist.world_size)  # every rank: all refuse alike
        torch.manual_seed(cfg.runtime.seed)
        random.seed(cfg.runtime.seed)
        if cfg.runtime.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        run_dir = Path(cfg.runtime.out_dir)
        latest = ckpt.latest_checkpoint(run_dir) if resume else None
        if dist.is_main and latest is not None:
            run_folder.claim(run_dir, resume=True)
            run_folder.acquire_lock(run_dir)  # before loading the checkpoint: a second writer stops here
            locked_dir = run_dir
        loaded = ckpt.load_checkpoint(latest.path) if latest is not None else None
        changes = check_resume_config(loaded["config_yaml"], cfg, allow_config_change) if loaded is not None else {}
        start = ckpt.load_checkpoint(init_from) if init_from is not None and latest is None else None
        if start is not None:  # the weights come with their files (a tokenizer): use the checkpoint's copies
            cfg = self_contained_config(cfg, start.extra_dir, start.extra)
        parts = build_components(cfg, registry)
        model = parts.model
        if start is not None:
            model.encoder.load_extra_state(start.extra)
            _load_init_weights(model, start, init_from)  # before any folder is made: a refused run leaves none
        if dist.is_main:
            if locked_dir is None:  # d2v's folder and one writer, before anything is checked or written
                run_folder.claim(run_dir, resume=resume)
                run_folder.acquire_lock(run_dir)
                locked_dir = run_dir
            check_output_dir(run_dir, resume, checkpoint_bytes(sum(p.numel() for p in model.parameters())))
        loader = TrainLoader(
            source, parts.record_decoder, batch_size=micro_batch, rank=dist.rank,
            world_size=dist.world_size, num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer,
            seed=cfg.runtime.seed, resampled=cfg.data.resampled, max_bad_fraction=cfg.data.max_bad_fraction,
            max_tokens=cfg.data.max_tokens, bucket_window=cfg.data.bucket_window,
            pin_memory=device.type == "cuda",  # page-locked batches: the trainer's copies to the GPU do not block
        )
        probe = OnlineProbe(cfg.eval, parts.record_decoder, probe_inputs) if probe_inputs and dist.is_main else None
        trainer = Trainer(cfg, model, loader, device, dist, versions, schedule=build_schedule(cfg, registry),
                          loggers=logger_factories(cfg, registry), probe=probe)
        if start is not None:
            trainer.teacher.load_state_dict(start.teacher)  # the student's weights were checked and loaded above
        if latest is not None and loaded is not None:
            mismatch = ckpt.describe_mismatch(loaded["student"], model.state_dict())
            if mismatch:
                raise CheckpointError(f"--resume: the checkpoint {latest.path} does not fit this config ({mismatch})")
            trainer.restore(loaded)
            trainer.last_checkpoint = latest.path
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
            record_run(run_dir, {"d2v": __version__, **(versions or {})}, latest.path if latest else None, changes)
        result = trainer.fit()
        if dist.is_main:
            summary = {"step": result.step, "last_loss": result.last_loss, "checkpoint": str(result.checkpoint),
                       "stopped_early": result.stopped_early, "bad_records": loader.stats.state_dict()}
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
            _write_report(run_dir)
        clean = True
        return result
    finally:
        # Drop DDP (its Reducer holds the process group) while the group is still registered, so
        # that the group is not destroyed from a Reducer destructor that holds the GIL while gloo's
        # worker threads wait for it (a deadlock seen under load).
        trainer = None
        gc.collect()
        if locked_dir is not None:
            run_folder.release_lock(locked_dir)
        shutdown(barrier_first=clean)
        if not clean and made_run_dir:  # a refused run leaves no folder behind that holds only d2v's marker
            _remove_unused_run_dir(Path(cfg.runtime.out_dir))


def _remove_unused_run_dir(run_dir: Path) -> None:
    with contextlib.suppress(OSError):  # anything else in it (or gone): keep it
        if {p.name for p in run_dir.iterdir()} <= {run_folder.MANIFEST}:
            (run_dir / run_folder.MANIFEST).unlink(missing_ok=True)
            run_dir.rmdir()


def _load_init_weights(model: torch.nn.Module, start: ckpt.Checkpoint, init_from: str | Path | None) -> None:
    problem = ckpt.describe_mismatch(start.student, model.state_dict())
    if problem is not None:  # the hint first; the key names would be pages long
        raise CheckpointError(
            f"--init-from {init_from} does not fit this config: pass its config with --config "
            f"{start.path / 'config.yaml'} (or no --preset); {problem}"
        )
    model.load_state_dict(start.student)


def _write_report(run_dir: Path) -> None:
    """The run's picture (``d2v report``); skipped quietly when matplotlib is not installed."""
    try:
        from d2v_core.inference.report import write_report

        write_report(run_dir)
    except (ImportError, DataError):  # no matplotlib, or stopped before the first logged step
        pass
