"""``d2v list-plugins``: what is installed, what it provides, and what failed."""

from __future__ import annotations

import json

import typer

from d2v_core.plugin_loader import get_plugins


def list_plugins(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """List plugins with their distribution, version, what they provide and their status."""
    loaded = get_plugins()
    rows = [p.as_dict() for p in loaded.plugins]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="d2v plugins")
    for col in ("plugin", "distribution", "version", "provides", "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        status = r["status"] if not r["error"] else f"{r['status']}: {r['error']}"
        table.add_row(r["name"], r["distribution"], r["version"], ", ".join(r["provides"]) or "-", status)
    Console(width=160).print(table)
