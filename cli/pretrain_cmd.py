"""``d2v pretrain``: resolve the config and hand it to the core trainer."""

from __future__ import annotations


def pretrain() -> None:
    """Pretrain a data2vec model (wired to the trainer below)."""
    raise NotImplementedError
