"""``d2v config show``: print the resolved config of a run as YAML."""

from __future__ import annotations

from typing import List, Optional

import typer

config_app = typer.Typer(help="Inspect run configurations.", no_args_is_help=True)


@config_app.command("show")
def show(
    modality: Optional[str] = typer.Option(None, "--modality", "-m", help="Modality name (see d2v list-plugins)."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset, e.g. base or audio/base."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file applied over the preset."),
    set_: List[str] = typer.Option([], "--set", help="Override, e.g. --set optim.lr=1e-4 (repeatable)."),
) -> None:
    """Print the resolved configuration (preset, then --config, then --set) as YAML."""
    from d2v_core.config_resolve import config_to_yaml, resolve_config
    from d2v_core.plugin_loader import get_registry

    cfg = resolve_config(get_registry(), modality, preset, config, set_)
    typer.echo(config_to_yaml(cfg), nl=False)
