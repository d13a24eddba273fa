"""The text feature encoder: RoBERTa's embeddings (token + learned position + LayerNorm).

Parameter names follow fairseq (``embed_tokens``, ``embed_positions``, ``layernorm_embedding``),
so the export to ``transformers.Data2VecTextModel`` is a rename (``embeddings.word_embeddings``,
``embeddings.position_embeddings``, ``embeddings.LayerNorm``; ``token_type_embeddings`` zero).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from d2v_core import Batch, BuildContext, CheckpointError, Context, DataError, FeatureEncoder, Features

from d2v_plugin_text.options import TextEncoderOptions
from d2v_plugin_text.tokenizer import PAD_ID, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

#: Key of the tokenizer model in :meth:`TextFeatureEncoder.extra_state` when it has no file name.
TOKENIZER_STATE_KEY = "tokenizer.model"


def tokenizer_state_key(tokenizer: Tokenizer) -> str:
    """The tokenizer's file name (``spm.model`` for ``encoder.tokenizer: runs/tok/spm.model``).

    The core saves ``extra_state`` as ``extra/<key>`` in a checkpoint and points encoder options
    whose file name equals a key at that copy (``self_contained_config``), so a checkpoint keeps
    working after the original file is gone. Tokenizers made from bytes use
    :data:`TOKENIZER_STATE_KEY`."""
    name = Path(tokenizer.source).name
    return name if tokenizer.source != "<bytes>" and name else TOKENIZER_STATE_KEY


def make_positions(padding_mask: Tensor, pad_id: int = PAD_ID) -> Tensor:
    """RoBERTa / fairseq position ids: ``cumsum(~pad) * ~pad + pad_id`` (real tokens from 2)."""
    keep = (~padding_mask).long()
    return torch.cumsum(keep, dim=1) * keep + pad_id


class TextFeatureEncoder(FeatureEncoder):
    """Token embedding (``embed``), BERT corruption (``apply_mask``), positions + LN + dropout
    (``contextualize``). No prefix tokens: ``<s>`` is an ordinary token of each row.

    ``apply_mask`` works on the embeddings the core hands it, so it needs no token ids: a row
    of the table *is* a token's embedding. Of the masked positions, ``leave_unmasked_prob`` keep
    their embedding, ``random_token_prob`` get the row of a random non-special token and the rest
    get the ``<mask>`` row (the mask embedding is the table's ``<mask>`` row, tied, as in
    fairseq; there is no separate ``mask_embedding`` parameter). Unlike fairseq, the random
    tokens exclude every special id (fairseq's sampler may pick ``<mask>``).
    """

    num_prefix_tokens = 0

    def __init__(
        self,
        tokenizer: Tokenizer,
        dim: int,
        max_positions: int = 512,
        dropout: float = 0.1,
        norm_eps: float = 1e-5,
        random_token_prob: float = 0.1,
        leave_unmasked_prob: float = 0.1,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.tokenizer_state_key = tokenizer_state_key(tokenizer)
        self.dim = dim
        self.vocab_size = tokenizer.vocab_size
        self.pad_id = tokenizer.pad_id
        self.mask_id = tokenizer.mask_id
        self.max_positions = max_positions
        self.random_token_prob = random_token_prob
        self.leave_unmasked_prob = leave_unmasked_prob
        self.embed_tokens = nn.Embedding(self.vocab_size, dim, padding_idx=self.pad_id)
        self.embed_positions = nn.Embedding(max_positions + self.pad_id + 1, dim, padding_idx=self.pad_id)
        self.layernorm_embedding = nn.LayerNorm(dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        special = set(tokenizer.special_ids)
        self.register_buffer(
            "replacement_ids", torch.tensor([i for i in range(self.vocab_size) if i not in special]), persistent=False
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """fairseq ``init_bert_params``: embeddings N(0, 0.02) with zero padding rows."""
        for emb in (self.embed_tokens, self.embed_positions):
            nn.init.normal_(emb.weight, mean=0.0, std=0.02)
            with torch.no_grad():
                emb.weight[emb.padding_idx].zero_()
        self.layernorm_embedding.reset_parameters()

    # -- FeatureEncoder --------------------------------------------------------------------
    def embed(self, batch: Batch) -> Features:
        """``batch["tokens"]`` (B, T) -> token embeddings; padding is where tokens == ``<pad>``."""
        tokens = batch["tokens"].to(self.embed_tokens.weight.device)
        if tokens.shape[1] > self.max_positions:
            raise DataError(
                f"rows of {tokens.shape[1]} tokens exceed encoder.max_positions={self.max_positions}; "
                "lower data.options.block_size"
            )
        return Features(self.embed_tokens(tokens), tokens.eq(self.pad_id))

    def apply_mask(self, x: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The student's input: BERT's 80/10/10 over the masked steps, drawn from ``generator``.

        One uniform draw per step decides: ``u < leave_unmasked_prob`` keeps the token,
        the next ``random_token_prob`` a random token, the rest ``<mask>`` (the same
        distribution as fairseq ``MaskTokensDataset``). Draws happen on the CPU, so the result
        does not depend on the device.
        """
        mask_cpu = mask.detach().bool().cpu()
        u = torch.rand(mask_cpu.shape, generator=generator)
        n_rep = self.replacement_ids.numel()
        pick = torch.randint(n_rep, mask_cpu.shape, generator=generator)
        keep = u < self.leave_unmasked_prob
        to_random = mask_cpu & ~keep & (u < self.leave_unmasked_prob + self.random_token_prob)
        to_mask = mask_cpu & ~keep & ~to_random
        weight = self.embed_tokens.weight
        ids = torch.full(mask_cpu.shape, self.mask_id, dtype=torch.long)
        ids = torch.where(to_random, self.replacement_ids.cpu()[pick], ids).to(weight.device)
        replaced = (to_mask | to_random).to(x.device)
        return torch.where(replaced.unsqueeze(-1), weight[ids].to(x.dtype), x)

    def contextualize(self, x: Tensor, padding_mask: Tensor | None) -> Context:
        """Add learned positions (RoBERTa layout), LayerNorm, dropout. No embedding scale.

        Padded steps are not zeroed (as in ``transformers``; fairseq zeroes them): their
        values never reach real tokens because attention masks them.
        """
        if padding_mask is None:
            padding_mask_ = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        else:
            padding_mask_ = padding_mask.to(x.device)
        if x.shape[1] > self.max_positions:
            raise DataError(f"rows of {x.shape[1]} tokens exceed encoder.max_positions={self.max_positions}")
        x = x + self.embed_positions(make_positions(padding_mask_, self.pad_id))
        x = self.dropout(self.layernorm_embedding(x))
        return Context(x, padding_mask)

    def extra_state(self) -> Mapping[str, Any]:
        """The tokenizer model under its file name (:func:`tokenizer_state_key`), so that a
        checkpoint is usable without the original file."""
        return {self.tokenizer_state_key: self.tokenizer.model_bytes}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Take the tokenizer back from a checkpoint's :meth:`extra_state` (the table sizes must
        match): the entry under this encoder's key, else the state's only entry (the key is the
        file name the checkpoint's tokenizer had)."""
        if not state:
            return
        if self.tokenizer_state_key in state:
            key = self.tokenizer_state_key
        elif len(state) == 1:
            key = next(iter(state))
        else:
            raise CheckpointError(f"checkpoint extra state {sorted(state)} has no {self.tokenizer_state_key!r} and several files")
        tok = Tokenizer.from_bytes(state[key])
        if tok.vocab_size != self.vocab_size:
            raise CheckpointError(
                f"checkpoint tokenizer has {tok.vocab_size} ids but the encoder was built for {self.vocab_size}"
            )
        self.tokenizer = tok


def _is_demo_corpus(train: str) -> bool:
    demo = Path(__file__).parent / "demo" / "corpus.jsonl"
    try:
        return Path(train).resolve() == demo.resolve()
    except (OSError, ValueError):
        return False


def build_encoder(options: TextEncoderOptions, ctx: BuildContext) -> TextFeatureEncoder:
    """The text encoder: its options, and the model's width, dropout and eps from the context."""
    opts = options
    tokenizer = load_tokenizer(opts.tokenizer)
    if opts.tokenizer is None and ctx.train_data is not None and not _is_demo_corpus(ctx.train_data):
        log.warning(
            "encoder.tokenizer is not set: using the demo tokenizer (%d ids, trained on the demo corpus); "
            "train one for your data with `d2v train-tokenizer`",
            tokenizer.vocab_size,
        )
    return TextFeatureEncoder(
        tokenizer,
        dim=ctx.dim,
        max_positions=opts.max_positions,
        dropout=ctx.dropout if opts.embed_dropout is None else opts.embed_dropout,
        norm_eps=ctx.norm_eps,
        random_token_prob=opts.random_token_prob,
        leave_unmasked_prob=opts.leave_unmasked_prob,
    )
