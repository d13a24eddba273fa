"""docs/configuration.md documents every field of every config section (its table row)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from d2v_core.config import RunConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _rows() -> dict[str, str]:
    """Section path -> the fields cell of its row in the table."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| `([a-z_.]+)` \| (.*?) \|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _fields(model: type[BaseModel], prefix: str) -> list[tuple[str, str]]:
    """(section path, field name) of every field below ``model``, nested sections included."""
    out = []
    for name, field in model.model_fields.items():
        out.append((prefix, name))
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _fields(sub, f"{prefix}.{name}")
    return out


def test_every_config_field_is_in_the_configuration_table():
    rows = _rows()
    sections = [name for name, f in RunConfig.model_fields.items() if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)]
    assert "eval" in sections and len(sections) >= 10
    missing = [f"{path}.{name}" for s in sections for path, name in _fields(RunConfig.model_fields[s].annotation, s)
               if f"`{name}`" not in rows.get(path, "")]
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"
