"""``d2v pretrain``: resolve the config and hand it to the core trainer."""

from __future__ import annotations

import os
from typing import List, Optional

import typer

from d2v_cli import run_flags as rf


def _is_main_rank() -> bool:
    """Rank 0 of a torchrun launch (or a single process): the only one that prints."""
    return int(os.environ.get("RANK", "0")) == 0


def _say(message: str, err: bool = False) -> None:
    if _is_main_rank():
        typer.echo(message, err=err)


def pretrain(
    modality: Optional[str] = rf.MODALITY,
    preset: Optional[str] = rf.PRESET,
    config: Optional[str] = rf.CONFIG,
    set_: List[str] = rf.SET,
    data: List[str] = rf.DATA,
    out: List[str] = rf.OUT,
    masker: List[str] = rf.MASKER,
    max_steps: List[int] = rf.MAX_STEPS,
    threads: List[int] = rf.THREADS,
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in the run directory."),
    init_from: Optional[str] = rf.INIT_FROM,
    compile_: bool = rf.COMPILE,
    allow_pipe_urls: bool = typer.Option(False, "--allow-pipe-urls", help="Allow webdataset 'pipe:' URLs (they run shell commands)."),
    allow_config_change: bool = typer.Option(
        False, "--allow-config-change", help="With --resume: continue with settings that differ from the run's (recorded in run.json)."
    ),
    max_bad_fraction: List[float] = rf.MAX_BAD_FRACTION,
    probe: List[str] = rf.PROBE,
) -> None:
    """Pretrain a data2vec model: preset, then --config, then --set and the flags above (each
    config value once on the command line).

    On a terminal a progress bar shows the run; elsewhere (a file, a pipe, CI) one line per
    runtime.log_every steps. Under torchrun only rank 0 prints."""
    import warnings

    from d2v_core.plugin_loader import get_plugins
    from d2v_core.train.run import pretrain as run_pretrain

    if not _is_main_rank():  # the other ranks' warnings repeat rank 0's
        warnings.simplefilter("ignore")
    loaded = get_plugins()
    flags = rf.config_flags(data=data, out=out, masker=masker, max_steps=max_steps, max_bad_fraction=max_bad_fraction,
                            compile_=compile_, threads=threads, probe=probe)
    cfg = rf.run_config(modality=modality, preset=preset, config=config, set_=set_, flags=flags, init_from=init_from,
                        note=_say)
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
