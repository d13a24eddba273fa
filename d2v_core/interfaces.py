"""The interfaces a modality plugin implements: FeatureEncoder, Masker, Normalizer, RecordDecoder.

The path of one step: ``RecordDecoder.decode`` -> ``RecordDecoder.collate`` -> ``Batch`` ->
``FeatureEncoder.embed`` -> ``Masker`` -> ``FeatureEncoder.apply_mask`` ->
``FeatureEncoder.contextualize`` -> core Transformer; the teacher runs ``contextualize`` (and
``embed`` when it sees the raw input) on the unmasked input, then the core builds targets with
the ``Normalizer`` chosen by the config.

Factories. Each component is built by the factory its spec names, from its validated options
(an instance of the spec's :class:`~d2v_core.Options` model, ``None`` where it declares none) and,
where it needs more of the run, a :class:`BuildContext`; never from the whole run config:

- encoder (``ModalitySpec.encoder``): ``factory(options, ctx) -> FeatureEncoder``
- record decoder (``ModalitySpec.record_decoder``): ``factory(options, encoder_options, ctx) -> RecordDecoder``
  (``options``: the data options; ``encoder_options``: the encoder's, e.g. for a tokenizer or an image size)
- ``masker``: ``factory(options) -> Masker``; ``normalizer``: ``factory() -> Normalizer`` (no options yet)
- ``decoder`` (data2vec 2.0): ``factory(options, ctx) -> Decoder``
- ``exporter``: ``factory() -> Exporter``
- ``schedule``: ``factory(options, ctx: ScheduleContext) -> Callable[[int], float]`` (update -> learning rate)
- ``logger``: ``factory(options, ctx: LoggerContext) -> MetricsLogger`` (a metrics sink, rank 0; ``loggers.py``)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

#: A collated batch: tensors named by the modality, plus ``"keys"`` (record keys, a list).
Batch = dict

@dataclass(frozen=True)
class ScheduleContext:
    """What a ``schedule`` factory may know: the peak learning rate (``optim.lr``), the number
    of updates and the run's ``optim.schedule`` section (the core's schedules read its fields)."""

    peak_lr: float
    max_steps: int
    schedule: Any


#: The positional arguments the core passes to each kind of factory (the list above).
FACTORY_ARGS: dict[str, tuple[str, ...]] = {
    "encoder": ("options", "ctx"),
    "record_decoder": ("options", "encoder_options", "ctx"),
    "masker": ("options",),
    "normalizer": (),
    "decoder": ("options", "ctx"),
    "exporter": (),
    "importer": (),
    "schedule": ("options", "ctx"),
    "logger": ("options", "ctx"),
}


@dataclass(frozen=True)
class BuildContext:
    """What a component factory may know of the run besides its own options: the modality, the
    core Transformer's width, heads, dropout and LayerNorm eps, the training data source
    (``None`` when building for inference) and ``model.activation_checkpointing`` (an encoder
    with a deep stack of its own, such as audio's conv feature extractor, recomputes it in the
    backward pass too)."""

    modality: str
    dim: int
    heads: int
    dropout: float
    norm_eps: float
    train_data: str | None = None
    activation_checkpointing: bool = False


class SkipRecord(Exception):
    """Raised by ``RecordDecoder.decode`` for a record that cannot be used.

    ``reason`` is a short label (``"unreadable"``, ``"too_short"``, ...) under which the record is
    counted; the record is skipped, never fatal.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Features:
    """Local features: ``x`` (B, T, D), ``padding_mask`` (B, T) bool with True at padding or None,
    and ``grid``: the spatial layout of T (for example (14, 14) patches) for 2-D maskers."""

    x: Tensor
    padding_mask: Tensor | None = None
    grid: tuple[int, ...] | None = None


@dataclass
class Context:
    """Transformer input: tokens (B, P+T, D) with P prefix tokens (CLS), padding mask, and an
    optional additive attention bias broadcastable to (B, heads, P+T, P+T)."""

    x: Tensor
    padding_mask: Tensor | None = None
    attn_bias: Tensor | None = None


@dataclass
class MaskRequest:
    """What a masker is asked to mask: ``batch_size`` rows of ``length`` steps, padding (True at
    padded steps; never masked) and the optional spatial ``grid`` of the steps."""

    batch_size: int
    length: int
    padding_mask: Tensor | None = None
    grid: tuple[int, ...] | None = None

    def valid_lengths(self) -> Tensor:
        if self.padding_mask is None:
            return torch.full((self.batch_size,), self.length, dtype=torch.long)
        return (~self.padding_mask.bool()).sum(-1).long().cpu()

    def valid_steps(self) -> Tensor:
        """(B, T) bool on the CPU, True at the steps that are not padding."""
        if self.padding_mask is None:
            return torch.ones(self.batch_size, self.length, dtype=torch.bool)
        return ~self.padding_mask.bool().cpu()


class Masker(ABC):
    """Chooses the steps to mask: a pure function of the request and a ``torch.Generator``.

    Returns a bool tensor (B, T) on the CPU, True at masked steps, never True at padding. The
    same request and generator state give the same mask.
    """

    @property
    @abstractmethod
    def expected_ratio(self) -> float:
        """Expected fraction of the non-padded steps that are masked (for checks and docs)."""

    @abstractmethod
    def __call__(self, request: MaskRequest, generator: torch.Generator) -> Tensor: ...

    #: Whether every row gets the same number of masked steps (the conformance kit checks it).
    equal_counts: bool = False


class Normalizer(ABC):
    """Normalises a target layer (B, T, D), fp32, ignoring padded steps."""

    @abstractmethod
    def __call__(self, x: Tensor, padding_mask: Tensor | None) -> Tensor: ...


class FeatureEncoder(nn.Module):
    """A modality's input side: raw batch to Transformer tokens.

    Subclasses set ``dim`` and ``num_prefix_tokens`` (tokens such as CLS that ``contextualize``
    prepends and that carry no target) and implement :meth:`embed`. A learned
    ``mask_embedding`` parameter (D,) is used by the default :meth:`apply_mask`.
    """

    dim: int
    num_prefix_tokens: int = 0
    mask_embedding: nn.Parameter

    @abstractmethod
    def embed(self, batch: Batch) -> Features:
        """Local encoding of the raw batch, before masking: (B, T, D) and padding."""

    def apply_mask(self, x: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The student's input: masked steps replaced with the learned mask embedding."""
        emb = self.mask_embedding.to(x.dtype)
        return torch.where(mask.unsqueeze(-1), emb.expand_as(x), x)

    def contextualize(self, x: Tensor, padding_mask: Tensor | None) -> Context:
        """Everything between (masked) local features and the Transformer layers: positional
        encoding, prefix tokens, input LayerNorm and dropout, attention bias. Default: none.

        With a data2vec 2.0 decoder the core calls it on the local features with masked steps
        set to zero, then keeps only the prefix tokens and the unmasked steps (and the matching
        rows and columns of ``attn_bias``): so apart from positional encodings, which may see
        the whole zeroed sequence, it must treat each step on its own."""
        return Context(x, padding_mask)

    def extra_state(self) -> Mapping[str, bytes]:
        """Non-tensor state that must travel with a checkpoint (a tokenizer, ...): file name -> bytes."""
        return {}

    def load_extra_state(self, extra: Mapping[str, bytes]) -> None:
        """Restore what :meth:`extra_state` saved (called when a checkpoint is loaded)."""


class Decoder(nn.Module):
    """data2vec 2.0's light decoder: predicts targets at every step from the sparse student's
    output put back in order, with noise at the masked steps.

    ``forward(x, padding_mask, grid)``: ``x`` (B, T, D) -> (B, T, D); ``grid`` is the
    :class:`Features` grid (a 2-D decoder reshapes T to it). Built by a ``decoder`` component's
    factory as ``factory(options, ctx)`` (``ctx.dim``: the model width). ``input_dropout`` is applied by the core to the
    encoded steps before the masked steps are filled with noise (fairseq ``decoder_input``).
    """

    input_dropout: float = 0.0

    @abstractmethod
    def forward(self, x: Tensor, padding_mask: Tensor | None, grid: tuple[int, ...] | None) -> Tensor: ...


class RecordDecoder(ABC):
    """Turns stored records into samples and samples into a batch.

    A record maps extensions to bytes, as in a tar shard (``{"flac": b"...", "__key__": "a"}``).
    ``decode`` raises :class:`SkipRecord` for records that cannot be used, checks the record's
    size limit before decoding it in full, and may put ``"_note": reason`` in a sample it used
    after a change (``"truncated"``): the loader counts it in ``stats.notes``, not as bad.
    """

    #: Extensions whose bytes are one record's payload, in order of preference.
    extensions: tuple[str, ...] = ()

    @abstractmethod
    def decode(self, record: Mapping[str, Any], generator: torch.Generator | None = None) -> dict: ...

    @abstractmethod
    def collate(self, samples: list[dict]) -> Batch: ...

    def decode_for_inference(self, record: Mapping[str, Any]) -> dict:
        """Deterministic decoding for embedding and probing (no random crop or augmentation).
        The default calls :meth:`decode` without a generator; override where that is random."""
        return self.decode(record, None)

    def collate_for_inference(self, samples: list[dict]) -> Batch:
        """Batch for embedding and probing: every step of every sample must survive (pad, never
        crop). The default is :meth:`collate`."""
        return self.collate(samples)

    # -- lengths: token-budget batching (data.max_tokens) and corpus-level block packing ----------
    def record_length(self, record: Mapping[str, Any]) -> int:
        """A stored record's length in budget units (audio: samples at the training rate, text:
        tokens), before any crop; raise :class:`SkipRecord` for an unusable record. The loader
        calls it once per record of a list source and caches the result next to the data.
        Default: the length of the decoded sample."""
        return self.sample_length(self.decode(record, torch.Generator().manual_seed(0)))

    def sample_length(self, sample: dict) -> int:
        """The length of a decoded sample in budget units (shards: lengths are only known once
        decoded). Needed for ``data.max_tokens`` and for block packing."""
        raise NotImplementedError(f"{type(self).__name__} does not say how long a sample is (sample_length)")

    def length_from_meta(self, meta: Mapping[str, Any]) -> int | None:
        """A record's length from its manifest columns (fairseq ``.tsv``: ``n_samples``), or None
        to measure it with :meth:`record_length`."""
        return None

    def length_bounds(self) -> tuple[int, int | None]:
        """``(min, max)``: budget batching leaves out records shorter than ``min`` and counts each
        record as ``min(length, max)``, what a batch is cropped to at most (audio: fairseq's
        ``min_sample_size`` / ``max_sample_size``). Default: ``(0, None)``."""
        return 0, None

    def length_fingerprint(self) -> str:
        """What :meth:`record_length` depends on (a tokenizer, a sample rate): cached lengths made
        under another fingerprint are measured again."""
        return type(self).__name__

    def block_layout(self) -> tuple[int, str, bool] | None:
        """``(tokens per block, break_mode, drop_partial)`` to pack the whole corpus into blocks
        (fairseq ``TokenBlockDataset``; a batch is then ``data.batch_size`` rows), or None (the
        default) to batch records. ``drop_partial`` leaves out blocks shorter than a block."""
        return None

    def collate_blocks(self, blocks: list[list[tuple[dict, int, int]]]) -> Batch:
        """One batch of packed rows: each block is its ``(sample, start, stop)`` pieces in stream
        order (sample = a :meth:`decode` result; the piece is its tokens ``[start, stop)``)."""
        raise NotImplementedError(f"{type(self).__name__} declares a block_layout but no collate_blocks")


class Exporter(ABC):
    """Converts a trained model to another framework's format and back (a plugin component of
    kind ``exporter``, one per modality and format)."""

    #: The ``--format`` this exporter writes (``"hf"``: a transformers model directory).
    format: str = "hf"

    @abstractmethod
    def export(self, model: nn.Module, cfg: Any, extra: Mapping[str, bytes], out_dir: Any) -> None:
        """Write ``model`` (a :class:`d2v_core.model.data2vec.Data2Vec` student) to ``out_dir``,
        or raise :class:`d2v_core.errors.ExportError` where the format cannot represent it."""

    def import_config(self, src_dir: Any) -> dict:
        """A partial run config (``model`` and ``encoder`` sections) describing ``src_dir``."""
        raise NotImplementedError(f"{type(self).__name__} cannot import")

    def import_weights(self, src_dir: Any, model: nn.Module) -> None:
        """Load the weights in ``src_dir`` into ``model`` (built from :meth:`import_config`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot import")
