"""Packing documents into training rows (fairseq ``TokenBlockDataset`` + ``PrependTokenDataset``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from d2v_plugin_text.tokenizer import BOS_ID

BREAK_MODES = ("complete_doc", "none")


@dataclass
class PackedRow:
    """One row's ids and the indices of the documents (in input order) it holds ids of."""

    ids: list[int]
    sources: list[int] = field(default_factory=list)


def pack_rows(
    docs: Sequence[Sequence[int]], block_size: int, break_mode: str = "complete_doc", bos_id: int = BOS_ID
) -> list[PackedRow]:
    """:func:`pack_documents` that also says which documents each row came from."""
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    if break_mode not in BREAK_MODES:
        raise ValueError(f"break_mode must be one of {BREAK_MODES}, got {break_mode!r}")
    cap = block_size - 1
    rows: list[PackedRow] = []
    current = PackedRow([])

    def flush() -> None:
        nonlocal current
        if current.ids:
            rows.append(PackedRow([bos_id, *current.ids], current.sources))
        current = PackedRow([])

    for i, doc in enumerate(docs):
        doc = list(doc)
        if not doc:
            continue
        start = 0  # an offset, not repeated slicing: a long document costs O(len), not O(len^2 / cap)
        if break_mode == "none":
            while start < len(doc):  # fill the current row, cut it when full, carry the rest over
                take = cap - len(current.ids)
                current.ids += doc[start : start + take]
                current.sources.append(i)
                start += take
                if len(current.ids) == cap:
                    flush()
            continue
        if len(current.ids) + len(doc) > cap:
            flush()
            while len(doc) - start > cap:
                rows.append(PackedRow([bos_id, *doc[start : start + cap]], [i]))
                start += cap
        current.ids += doc[start:]
        current.sources.append(i)
    flush()
    return rows


def pack_documents(
    docs: Sequence[Sequence[int]], block_size: int, break_mode: str = "complete_doc", bos_id: int = BOS_ID
) -> list[list[int]]:
    """Rows of at most ``block_size`` ids, each ``[<s>] + up to block_size - 1 document ids``.

    ``docs`` are documents as ids ending in ``</s>`` (``ids + [eos]``), so a row reads
    ``<s> doc1 </s> doc2 </s>`` as RoBERTa's pretraining blocks do.

    - ``complete_doc``: greedy, in order: a document goes into the current row if it fits whole,
      otherwise it starts a new row; a document longer than a row fills rows of its own (its
      last piece may be joined by the documents after it). A row never starts in the middle of
      a document except to split one that is too long.
    - ``none``: the documents are concatenated into one stream cut every ``block_size - 1`` ids
      (the last row may be shorter).

    Empty documents are ignored.
    """
    return [row.ids for row in pack_rows(docs, block_size, break_mode, bos_id)]
