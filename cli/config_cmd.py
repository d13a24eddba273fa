"""``d2v config show``: print the resolved config of a run as YAML."""

from __future__ import annotations

from typing import List, Optional

import typer

from d2v_cli import run_flags as rf

config_app = typer.Typer(help="Inspect run configurations.", no_args_is_help=True)


@config_app.command("show")
def show(
    modality: Optional[str] = rf.MODALITY,
    preset: Optional[str] = rf.PRESET,
    config: Optional[str] = rf.CONFIG,
    set_: List[str] = rf.SET,
    data: List[str] = rf.DATA,
    out: List[str] = rf.OUT,
    masker: List[str] = rf.MASKER,
    max_steps: List[int] = rf.MAX_STEPS,
    init_from: Optional[str] = rf.INIT_FROM,
    max_bad_fraction: List[float] = rf.MAX_BAD_FRACTION,
    compile_: bool = rf.COMPILE,
    threads: List[int] = rf.THREADS,
    probe: List[str] = rf.PROBE,
) -> None:
    """Print the config `d2v pretrain` would store for the same flags, as YAML."""
    from d2v_core.config_resolve import config_to_yaml

    flags = rf.config_flags(data=data, out=out, masker=masker, max_steps=max_steps, max_bad_fraction=max_bad_fraction,
                            compile_=compile_, threads=threads, probe=probe)
    cfg = rf.run_config(modality=modality, preset=preset, config=config, set_=set_, flags=flags, init_from=init_from,
                        note=lambda line: typer.echo(line, err=True))
    typer.echo(config_to_yaml(cfg), nl=False)
