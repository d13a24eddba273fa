"""Text records -> documents of token ids -> packed, padded rows.

A record is one document: a ``.txt`` record of a shard or folder, or the ``text`` field of a
JSONL line (the core turns it into ``{"txt": bytes}``). ``decode`` tokenizes one document;
``collate`` packs the batch's documents into rows with :func:`pack_documents` (so a batch of
``data.batch_size`` documents gives *at most* that many rows for short documents, and more for
documents longer than ``block_size``) and pads them with ``<pad>``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import torch

from d2v_core.config import RunConfig
from d2v_core.data.batching import pack_blocks
from d2v_core.errors import ConfigError
from d2v_core.interfaces import Batch, RecordDecoder, SkipRecord

from d2v_plugin_text.options import TextDataOptions, TextEncoderOptions
from d2v_plugin_text.packing import BREAK_MODES as PACK_ROWS_MODES
from d2v_plugin_text.packing import pack_rows
from d2v_plugin_text.tokenizer import Tokenizer, load_tokenizer


class TextRecordDecoder(RecordDecoder):
    """``decode``: UTF-8 text -> ``{"tokens": ids + [</s>], "key"}``; ``collate``: packed rows
    ``{"tokens": (B, T) long, "padding_mask": (B, T) bool, "keys": [...]}``.

    ``keys[i]`` names the documents in row ``i`` (``"a+b"``; a split document repeats its key in
    each of its rows). Empty, whitespace-only and non-UTF-8 records raise :class:`SkipRecord`.
    """

    extensions = ("txt",)

    #: Characters read per token allowed, before tokenizing: bounds the work on a huge document
    #: (sentencepiece pieces are rarely longer; a document cut here is still longer than the limit).
    CHARS_PER_TOKEN = 16

    def __init__(self, tokenizer: Tokenizer, block_size: int = 512, break_mode: str = "complete_doc",
                 drop_partial_row: bool = False, max_doc_blocks: int = 8) -> None:
        self.tokenizer = tokenizer
        self.max_doc_tokens = max_doc_blocks * (block_size - 1)
        self.block_size = block_size
        self.break_mode = break_mode
        self.drop_partial_row = drop_partial_row

    def decode(self, record: Mapping[str, Any], generator: torch.Generator | None = None) -> dict:
        payload = next((record[e] for e in self.extensions if e in record), None)
        if payload is None:
            raise SkipRecord("missing_text", f"record has no {'/'.join(self.extensions)} field")
        if isinstance(payload, str):
            text = payload
        else:
            try:
                text = bytes(payload).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SkipRecord("undecodable", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not text.strip():
            raise SkipRecord("empty", "no text")
        limit = self.max_doc_tokens  # the size limit, applied before the whole text is tokenized
        cut = len(text) > limit * self.CHARS_PER_TOKEN
        ids = self.tokenizer.encode(text[: limit * self.CHARS_PER_TOKEN] if cut else text)
        if not ids:
            raise SkipRecord("empty", "text encodes to no tokens")
        sample = {"tokens": ids[: limit - 1] + [self.tokenizer.eos_id] if len(ids) >= limit else ids + [self.tokenizer.eos_id],
                  "key": str(record.get("__key__", ""))}
        if cut or len(ids) >= limit:
            sample["_note"] = "truncated"  # counted by the loader (summary.json bad_records.notes)
        return sample

    # -- corpus-level packing (the core's loader packs the whole corpus into blocks) --------------
    def sample_length(self, sample: dict) -> int:
        return len(sample["tokens"])

    def length_fingerprint(self) -> str:
        return "text:" + hashlib.blake2b(self.tokenizer.model_bytes, digest_size=8).hexdigest()

    def block_layout(self) -> tuple[int, str, bool]:
        """Blocks of ``block_size - 1`` tokens: each row is ``<s>`` + one block (fairseq
        ``TokenBlockDataset(tokens_per_sample - 1)`` + ``PrependTokenDataset(bos)``)."""
        return self.block_size - 1, self.break_mode, self.drop_partial_row

    def collate_blocks(self, blocks: list[list[tuple[dict, int, int]]]) -> Batch:
        """Rows ``<s>`` + the blocks' tokens, padded with ``<pad>`` to the longest row."""
        rows = [[self.tokenizer.bos_id, *(t for s, a, z in block for t in s["tokens"][a:z])] for block in blocks]
        tokens = torch.full((len(rows), max(len(r) for r in rows)), self.tokenizer.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        keys = ["+".join(dict.fromkeys(s["key"] for s, _, _ in block)) for block in blocks]
        return {"tokens": tokens, "padding_mask": tokens.eq(self.tokenizer.pad_id), "keys": keys}

    def collate(self, samples: list[dict]) -> Batch:
        if self.break_mode not in PACK_ROWS_MODES:  # packs the batch's documents as the corpus is packed
            blocks = pack_blocks([len(s["tokens"]) for s in samples], self.block_size - 1, self.break_mode)
            return self.collate_blocks([[(samples[i], a, z) for i, a, z in b] for b in blocks])
        rows = pack_rows([s["tokens"] for s in samples], self.block_size, self.break_mode, self.tokenizer.bos_id)
        if self.drop_partial_row and len(rows) > 1 and len(rows[-1].ids) < self.block_size:
            rows = rows[:-1]
        length = max((len(r.ids) for r in rows), default=0)
        tokens = torch.full((len(rows), length), self.tokenizer.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        keys = ["+".join(samples[j]["key"] for j in r.sources) for r in rows]
        return {"tokens": tokens, "padding_mask": tokens.eq(self.tokenizer.pad_id), "keys": keys}

    def collate_for_inference(self, samples: list[dict]) -> Batch:
        """One row per document (``<s>`` + its tokens, truncated to ``block_size``), never packed,
        so that embeddings line up with records."""
        rows = [[self.tokenizer.bos_id, *s["tokens"]][: self.block_size] for s in samples]
        tokens = torch.full((len(rows), max(len(r) for r in rows)), self.tokenizer.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return {"tokens": tokens, "padding_mask": tokens.eq(self.tokenizer.pad_id), "keys": [s["key"] for s in samples]}


def build_record_decoder(cfg: RunConfig) -> TextRecordDecoder:
    """The record decoder for a resolved config: tokenizer from ``cfg.encoder``, packing from
    ``cfg.data.options``."""
    enc = TextEncoderOptions.model_validate(cfg.encoder)
    data = TextDataOptions.model_validate(cfg.data.options)
    if data.block_size > enc.max_positions:
        raise ConfigError(
            f"data.options.block_size ({data.block_size}) exceeds encoder.max_positions ({enc.max_positions})"
        )
    return TextRecordDecoder(load_tokenizer(enc.tokenizer), data.block_size, data.break_mode, data.drop_partial_row,
                             data.max_doc_blocks)
