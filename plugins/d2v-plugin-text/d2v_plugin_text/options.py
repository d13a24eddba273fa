"""Option models of the text modality (pydantic; no torch here: the CLI imports this module)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveInt, model_validator

from d2v_core.config import StrictModel


class TextEncoderOptions(StrictModel):
    """``encoder:`` options of the text modality.

    - ``tokenizer``: path of a sentencepiece ``.model`` with d2v's ids (``d2v train-tokenizer``);
      ``None`` uses the demo tokenizer shipped with the plugin (1,000 pieces, trained on the demo
      corpus: fine for the demo, too small for real text).
    - ``max_positions``: longest sequence; the position table has ``max_positions + 2`` rows
      (RoBERTa: 512 -> 514).
    - ``embed_dropout``: dropout after the embedding LayerNorm; ``None`` uses ``model.dropout``.
    - ``random_token_prob`` / ``leave_unmasked_prob``: of the positions the masker chose, the
      fraction given a random token / left unchanged (the rest get ``<mask>``), BERT's 10% / 10%.
    """

    tokenizer: Optional[str] = None
    max_positions: PositiveInt = 512
    embed_dropout: Optional[float] = Field(None, ge=0.0, lt=1.0)
    random_token_prob: float = Field(0.1, ge=0.0, le=1.0)
    leave_unmasked_prob: float = Field(0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _probs(self) -> "TextEncoderOptions":
        if self.random_token_prob + self.leave_unmasked_prob > 1.0:
            raise ValueError(
                f"random_token_prob + leave_unmasked_prob must be <= 1 (got {self.random_token_prob} + {self.leave_unmasked_prob})"
            )
        return self


class TextDataOptions(StrictModel):
    """``data.options`` of the text modality.

    - ``block_size``: tokens per training row, ``<s>`` included (at most ``encoder.max_positions``).
    - ``break_mode`` (fairseq ``sample_break_mode``; the training loader packs the whole corpus,
      fairseq ``TokenBlockDataset``, and a batch is ``data.batch_size`` rows drawn from anywhere
      in it): ``none`` cuts the corpus, concatenated, every ``block_size - 1`` tokens;
      ``complete`` / ``complete_doc`` put whole documents in a row while they fit (a document is
      a record, so the two agree; a document longer than a row fills rows of its own); ``eos``:
      one document per row.
    - ``drop_partial_row``: leave out rows shorter than ``block_size`` (data2vec 2.0 presets with
      ``break_mode: none``: only the corpus's last row; masks with the same count in every row
      would otherwise be sized by that short row).
    - ``max_doc_blocks``: the size limit of one document, in rows: a longer one (a whole book on
      one line) is cut to ``max_doc_blocks * (block_size - 1)`` tokens before it is tokenized in
      full, and counted as ``truncated``.
    """

    block_size: PositiveInt = Field(512, ge=2)
    break_mode: Literal["complete_doc", "complete", "none", "eos"] = "complete_doc"
    drop_partial_row: bool = False
    max_doc_blocks: PositiveInt = 8


class BertMaskOptions(StrictModel):
    """``masking.options`` of ``bert``: ``int(mask_prob * n + U[0,1))`` tokens of each row's ``n``
    non-pad tokens, chosen uniformly without replacement (fairseq ``MaskTokensDataset``)."""

    mask_prob: float = Field(0.15, gt=0.0, lt=1.0)


class SpanMaskOptions(StrictModel):
    """``masking.options`` of ``span``: ``int(mask_prob * n / span_length + U[0,1))`` distinct
    starts, each masking ``span_length`` tokens (overlaps allowed, cut at the row's end):
    fairseq's released data2vec text config (0.35, 4: about 31% of tokens)."""

    mask_prob: float = Field(0.35, gt=0.0, lt=1.0)
    span_length: PositiveInt = 4


class RandomMaskOptions(StrictModel):
    """``masking.options`` of ``text-random`` (data2vec 2.0 text, MAE ``random_masking``): each
    row keeps ``int(n * (1 - mask_prob))`` of ``n`` tokens and masks the rest, uniformly without
    replacement; ``n`` is the batch's shortest unpadded row, so every row masks as many."""

    mask_prob: float = Field(0.48, gt=0.0, lt=1.0)
