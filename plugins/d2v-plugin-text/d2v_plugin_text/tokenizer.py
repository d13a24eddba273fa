"""A sentencepiece tokenizer with RoBERTa's special-token layout, and how to train one.

Ids: ``<s>`` 0 (bos), ``<pad>`` 1, ``</s>`` 2 (eos), ``<unk>`` 3 come from the sentencepiece model
itself (trained with ``bos_id=0 pad_id=1 eos_id=2 unk_id=3``). ``<mask>`` is **not** a
sentencepiece piece: it is the id just past the model's pieces (``mask_id = sp_size``), so it is
the last id, as in RoBERTa (50264 of 50265), and ``vocab_size = sp_size + 1``. Because it is not a
piece, no text can ever encode to ``<mask>`` (fairseq asserts the same of its data).

The model travels inside checkpoints as its serialized bytes (:attr:`Tokenizer.model_bytes`);
pickling and deep-copying go through those bytes too.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

from d2v_core import ConfigError, DataError, first_line

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MODEL_TYPES = ("bpe", "unigram")

#: The demo tokenizer shipped with the plugin (BPE trained on the demo corpus).
DEMO_TOKENIZER = Path(__file__).parent / "demo" / "tokenizer.model"


class Tokenizer:
    """Text <-> ids with bos 0, pad 1, eos 2, unk 3 and ``<mask>`` = the last id."""

    bos_id = BOS_ID
    pad_id = PAD_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __init__(self, model_bytes: bytes, source: str = "<bytes>") -> None:
        self._bytes = bytes(model_bytes)
        self.source = source
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._bytes)
        except Exception as exc:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError variants
            raise ConfigError(f"tokenizer {source}: not a sentencepiece model ({exc})") from None
        got = (self._sp.bos_id(), self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id())
        if got != (BOS_ID, PAD_ID, EOS_ID, UNK_ID):
            raise ConfigError(
                f"tokenizer {source}: special ids (bos, pad, eos, unk) are {got}, d2v needs (0, 1, 2, 3); "
                "train one with `d2v train-tokenizer`"
            )

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"tokenizer model {str(p)!r} does not exist (encoder.tokenizer); train one with `d2v train-tokenizer`")
        return cls(p.read_bytes(), source=str(p))

    @classmethod
    def from_bytes(cls, model_bytes: bytes) -> "Tokenizer":
        return cls(model_bytes)

    # -- ids -------------------------------------------------------------------------------
    @property
    def sp_size(self) -> int:
        """Number of sentencepiece pieces (ids 0 .. sp_size-1)."""
        return int(self._sp.get_piece_size())

    @property
    def mask_id(self) -> int:
        return self.sp_size

    @property
    def vocab_size(self) -> int:
        """All ids, ``<mask>`` included: the embedding table's size."""
        return self.sp_size + 1

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (BOS_ID, PAD_ID, EOS_ID, UNK_ID, self.mask_id)

    @property
    def model_bytes(self) -> bytes:
        return self._bytes

    def id_to_piece(self, i: int) -> str:
        return "<mask>" if i == self.mask_id else self._sp.id_to_piece(int(i))

    # -- text ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without bos/eos."""
        return list(self._sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; bos/eos/pad and ``<mask>`` are dropped, ``<unk>`` shows as ' ⁇ '."""
        keep = [int(i) for i in ids if int(i) not in (BOS_ID, PAD_ID, EOS_ID) and 0 <= int(i) < self.sp_size]
        return self._sp.decode(keep)

    # -- copying: the SWIG processor is rebuilt from the bytes ---------------------------------
    def __getstate__(self) -> dict:
        return {"model_bytes": self._bytes, "source": self.source}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_bytes"], state["source"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | Path | None) -> Tokenizer:
    """The tokenizer at ``path`` (a ``.model`` file), or the demo tokenizer when ``path`` is None."""
    return Tokenizer.from_file(DEMO_TOKENIZER if path is None else Path(path).expanduser())


def iter_corpus_lines(files: Iterable[str | Path]) -> Iterator[str]:
    """Non-empty lines of plain text files, or the ``text`` field of each line of ``.jsonl`` files."""
    for f in files:
        p = Path(f)
        with p.open(encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if p.suffix == ".jsonl":
                    if not line.strip():
                        continue
                    try:
                        line = json.loads(line).get("text", "")
                    except (json.JSONDecodeError, AttributeError):
                        raise DataError(f"{p}:{n}: not a JSON object with a 'text' field") from None
                line = str(line).strip()
                if line:
                    yield line


def train_tokenizer(
    corpus_files: Sequence[str | Path],
    vocab_size: int,
    model_type: str = "bpe",
    out_prefix: str | Path = "tokenizer",
) -> Path:
    """Train a sentencepiece model with d2v's special ids; returns ``<out_prefix>.model``.

    ``vocab_size`` counts sentencepiece pieces (the four specials included); the model's
    vocabulary is one larger because of ``<mask>``. Lines of plain files are sentences; ``.jsonl``
    files give their ``text`` fields. Deterministic for the same input.
    """
    files = [Path(f) for f in corpus_files]
    if not files:
        raise DataError("no corpus files given; pass --corpus FILE (plain text, one document per line, or .jsonl with 'text')")
    for f in files:
        if not f.is_file():
            raise DataError(f"corpus file {str(f)!r} does not exist")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    if vocab_size < 8:
        raise ConfigError(f"vocab size {vocab_size} is too small; use at least a few hundred")
    out = Path(f"{out_prefix}.model")
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = iter_corpus_lines(files)
    try:
        first = next(lines)
    except StopIteration:
        raise DataError(f"corpus {', '.join(map(str, files))} holds no text") from None

    def all_lines() -> Iterator[str]:
        yield first
        yield from lines

    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=all_lines(),
            model_writer=buffer,
            vocab_size=int(vocab_size),
            model_type=model_type,
            bos_id=BOS_ID,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            minloglevel=2,
        )
    except RuntimeError as exc:
        msg = first_line(exc)
        reason = msg.split("] ", 1)[-1] if "] " in msg else msg
        if "too high" in msg:
            raise DataError(f"vocab size {vocab_size} is too large for this corpus: {reason}") from None
        raise DataError(f"sentencepiece could not train on this corpus: {reason}") from None
    out.write_bytes(buffer.getvalue())
    return out
