"""Helpers the tests share for labelled manifests (import after ``sys.path.insert(0, tests/)``,
as ``wheel_env``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence


def write_labels_csv(manifest: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as a CSV manifest (``d2v probe --train``'s format: a ``path`` column, then
    the label and any other columns), the columns in the first row's order; returns ``manifest``."""
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest
