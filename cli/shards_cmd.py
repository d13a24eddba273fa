"""``d2v make-shards``: pack a folder or manifest into tar shards."""

from __future__ import annotations

from typing import Optional

import typer


def make_shards(
    src: str = typer.Argument(..., help="Folder, .csv/.tsv/.jsonl/.txt manifest, or existing shards to pack."),
    out: str = typer.Argument(..., help="Output folder for <modality>-NNNNNN.tar shards."),
    modality: str = typer.Option(..., "--modality", "-m", help="Modality whose file extensions select the records (names the shards)."),
    max_size: str = typer.Option("256MB", "--max-size", help="Largest shard size: bytes or e.g. 500KB, 256MB, 1GB."),
    max_count: Optional[int] = typer.Option(None, "--max-count", min=1, help="Most records per shard."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing shards of this modality in OUT."),
    shuffle_seed: Optional[int] = typer.Option(None, "--shuffle-seed", help="Shuffle records (folders, manifests) with this seed before packing."),
) -> None:
    """Pack a folder or manifest into tar shards (original bytes, keys kept)."""
    # imported here so `d2v --help` never loads webdataset or torch
    from d2v_core.data.make_shards import format_size, pack_shards, parse_size
    from d2v_core.plugin_loader import get_registry

    spec = get_registry().modality(modality)
    result = pack_shards(
        src, out, prefix=spec.name, extensions=tuple(spec.extensions), max_size_bytes=parse_size(max_size),
        max_count=max_count, overwrite=overwrite, shuffle_seed=shuffle_seed,
    )
    skipped = sum(result.skipped.values())
    note = f", skipped {skipped} unreadable ({', '.join(f'{r} {n}' for r, n in result.skipped.items())})" if skipped else ""
    typer.echo(
        f"packed {result.records} records into {len(result.paths)} shards ({format_size(result.bytes)}){note}: "
        f"{result.pattern()}"
    )
