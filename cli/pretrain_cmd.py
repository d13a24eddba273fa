"""``d2v pretrain``: resolve the config and hand it to the core trainer."""

from __future__ import annotations

import os
from typing import List, Optional

import typer


def _is_main_rank() -> bool:
    """Rank 0 of a torchrun launch (or a single process): the only one that prints."""
    return int(os.environ.get("RANK", "0")) == 0


def _say(message: str, err: bool = False) -> None:
    if _is_main_rank():
        typer.echo(message, err=err)


def pretrain(
    modality: Optional[str] = typer.Option(None, "--modality", "-m", help="Modality (see d2v list-plugins)."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset, e.g. tiny or audio/base."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file applied over the preset."),
    set_: List[str] = typer.Option([], "--set", help="Override, e.g. --set optim.lr=1e-4 (repeatable)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Folder, CSV/JSONL manifest, or tar shards ('shards/x-{000000..000003}.tar'). Default: the plugin's demo data."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory (runtime.out_dir)."),
    masker: Optional[str] = typer.Option(None, "--masker", help="Masker name (masking.name)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Number of updates (runtime.max_steps)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch intra-op threads per process (runtime.threads); "
                                          "fewer than the cores is often faster on a shared machine."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in the run directory."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start from the weights of this checkpoint (e.g. made by d2v import), with a fresh optimiser."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the student and the teacher (runtime.compile=true)."),
    allow_pipe_urls: bool = typer.Option(False, "--allow-pipe-urls", help="Allow webdataset 'pipe:' URLs (they run shell commands)."),
    allow_config_change: bool = typer.Option(
        False, "--allow-config-change", help="With --resume: continue with settings that differ from the run's (recorded in run.json)."
    ),
    max_bad_fraction: Optional[float] = typer.Option(
        None, "--max-bad-fraction", help="Abort when more than this fraction of records is unusable (data.max_bad_fraction, default 0.5)."
    ),
) -> None:
    """Pretrain a data2vec model: preset, then --config, then --set, then the flags above.

    On a terminal a progress bar shows the run; elsewhere (a file, a pipe, CI) one line per
    runtime.log_every steps. Under torchrun only rank 0 prints."""
    import warnings

    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import get_plugins
    from d2v_core.specs import load_ref
    from d2v_core.train.run import pretrain as run_pretrain

    if not _is_main_rank():  # the other ranks' warnings repeat rank 0's
        warnings.simplefilter("ignore")
    from d2v_core.errors import ConfigError

    for flag, value in (("--data", data), ("--out", out), ("--masker", masker)):
        if value is not None and not value.strip():
            raise ConfigError(f"{flag} is empty; pass a value (or leave the flag out)")
    loaded = get_plugins()
    overrides: list = list(set_)
    for key, value in (("data.train", data), ("runtime.out_dir", out), ("masking.name", masker), ("runtime.max_steps", max_steps),
                       ("data.max_bad_fraction", max_bad_fraction), ("runtime.threads", threads)):
        if value is not None:  # literal values: a path such as 'runs/exp #3' is not YAML
            section, field = key.split(".")
            overrides.append({section: {field: value}})
    if compile_:
        overrides.append({"runtime": {"compile": True}})
    if init_from is not None and config is None and preset is None:
        config = str(_checkpoint_config(init_from))  # the architecture of the weights we start from
    cfg = resolve_config(loaded.registry, modality, preset, config, overrides)
    if not cfg.data.train:
        spec = loaded.registry.modality(cfg.modality)
        if spec.demo_data is None:
            raise ConfigError(f"no --data given and modality {spec.name!r} ships no demo data; pass --data PATH")
        demo = str(load_ref(spec.demo_data, f"modality {spec.name!r} demo data")())
        _say(f"no --data given: using the demo data shipped with {spec.distribution} ({demo})")
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": demo})})
    if resume:
        from d2v_core.train.checkpoint import latest_checkpoint

        found = latest_checkpoint(cfg.runtime.out_dir)
        _say(f"resuming from {found.path} (step {found.step})" if found else
             f"--resume: no checkpoint in {cfg.runtime.out_dir} yet; starting a new run there")
    _say(f"pretraining {cfg.modality}/{cfg.preset} -> {cfg.runtime.out_dir}")
    versions = {p.distribution: p.version for p in loaded.plugins if p.status == "ok"}
    result = run_pretrain(cfg, loaded.registry, resume=resume, versions=versions, allow_pipe_urls=allow_pipe_urls,
                          init_from=init_from, allow_config_change=allow_config_change)
    loss = f"{result.last_loss:.4f}" if result.last_loss is not None else "n/a"
    how = "stopped on signal" if result.stopped_early else "done"
    _say(f"{how}: step {result.step}/{cfg.runtime.max_steps}, last loss {loss}, checkpoint {result.checkpoint}")
    if result.stopped_early:  # not finished: exit like a process ended by that signal (130, 143)
        import signal

        signum = result.stop_signal or signal.SIGTERM
        _say(f"stopped by {signal.Signals(signum).name} before step {cfg.runtime.max_steps}; continue with --resume", err=True)
        raise typer.Exit(128 + int(signum))


def _checkpoint_config(path: str):  # noqa: ANN202
    """The config.yaml of a checkpoint directory, or of the newest checkpoint of a run directory."""
    from pathlib import Path

    from d2v_core.errors import MissingCheckpointError
    from d2v_core.train.checkpoint import latest_checkpoint

    p = Path(path)
    latest = latest_checkpoint(p)
    found = (latest.path if latest else p) / "config.yaml"
    if not found.is_file():
        raise MissingCheckpointError(f"--init-from {path}: no complete checkpoint with a config.yaml there")
    return found
