"""Data layer: sources (folders, manifests, shards), the training loader, collate helpers,
bad-record accounting and ``make-shards``. Names load lazily so importing this package is cheap."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Source": "d2v_core.data.sources",
    "Entry": "d2v_core.data.sources",
    "resolve_source": "d2v_core.data.sources",
    "TrainLoader": "d2v_core.data.loader",
    "record_seed": "d2v_core.data.loader",
    "BadRecordStats": "d2v_core.data.bad_records",
    "pad_sequences": "d2v_core.data.collate",
    "lengths_to_padding_mask": "d2v_core.data.collate",
    "crop_to_shortest": "d2v_core.data.collate",
    "crop_window": "d2v_core.data.collate",
    "crop_offset": "d2v_core.data.collate",
    "bucket_by_length": "d2v_core.data.collate",
    "budget_batches": "d2v_core.data.batching",
    "batch_by_tokens": "d2v_core.data.batching",
    "pack_blocks": "d2v_core.data.batching",
    "BlockPacker": "d2v_core.data.batching",
    "record_lengths": "d2v_core.data.lengths",
    "pack_shards": "d2v_core.data.make_shards",
    "parse_size": "d2v_core.data.make_shards",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'd2v_core.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
