"""``d2v make-shards``: pack a folder or manifest into tar shards."""

from __future__ import annotations


def make_shards() -> None:
    """Pack a folder or manifest into tar shards."""
    raise NotImplementedError
