"""``d2v list-plugins``: what is installed, what it provides, and what failed."""

from __future__ import annotations

import json

import typer

from d2v_core.plugin_loader import get_plugins
from d2v_core.specs import COMPONENT_KINDS, ComponentSpec, ModalitySpec


def _modality_row(spec: ModalitySpec) -> dict:
    try:
        presets: list[str] | str = spec.preset_names()
    except Exception as exc:  # noqa: BLE001 - a broken presets module must not break the listing
        presets = f"error: {exc}"
    return {"presets": presets, "default_preset": spec.default_preset, "default_masker": spec.default_masker,
            "extensions": list(spec.extensions), "description": spec.description}


def _component_row(spec: ComponentSpec) -> dict:
    return {"kind": spec.kind, "name": spec.name, "modalities": list(spec.modalities) if spec.modalities else None,
            "description": spec.description}


def plugin_rows(loaded) -> list[dict]:  # noqa: ANN001
    """One dict per plugin: name, distribution, version, provides, status, error, plus each of its
    modalities' presets and each of its components' modalities (``None``: any modality)."""
    reg = loaded.registry
    modalities = [reg.modality(n) for n in reg.modalities()]
    components = [reg.component(kind, n) for kind in COMPONENT_KINDS for n in reg.names(kind)]
    rows = []
    for p in loaded.plugins:
        row = p.as_dict()
        row["modalities"] = {s.name: _modality_row(s) for s in modalities if s.plugin == p.name}
        row["components"] = [_component_row(s) for s in components if s.plugin == p.name]
        rows.append(row)
    return rows


def list_plugins(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """List plugins (distribution, version, status), each modality's presets and each component's modalities."""
    rows = plugin_rows(get_plugins())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(title="d2v plugins")
    for col in ("plugin", "distribution", "version", "provides", "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        status = r["status"] if not r["error"] else f"{r['status']}: {r['error']}"
        table.add_row(r["name"], r["distribution"], r["version"], ", ".join(r["provides"]) or "-", status)
    console.print(table)
    modalities = Table(title="modalities (* the default preset)")
    for col in ("modality", "plugin", "presets", "default masker"):
        modalities.add_column(col, overflow="fold")
    components = Table(title="components")
    for col in ("kind", "name", "modalities", "plugin", "description"):
        components.add_column(col, overflow="fold")
    for r in rows:
        for name, m in r["modalities"].items():
            presets = m["presets"] if isinstance(m["presets"], str) else ", ".join(
                p + ("*" if p == m["default_preset"] else "") for p in m["presets"])
            modalities.add_row(name, r["name"], presets, m["default_masker"] or "-")
        for c in r["components"]:
            components.add_row(c["kind"], c["name"], ", ".join(c["modalities"]) if c["modalities"] else "any",
                               r["name"], c["description"] or "-")
    if modalities.row_count:
        console.print(modalities)
    if components.row_count:
        console.print(components)
