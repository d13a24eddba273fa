"""Batching helpers for variable-length samples (public API for plugins' ``collate``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


def lengths_to_padding_mask(lengths: Tensor | Sequence[int], max_len: int | None = None) -> Tensor:
    """(B, max_len) bool, True at padded steps (step ``t >= lengths[b]``)."""
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def pad_sequences(seqs: Sequence[Tensor], pad_value: float = 0) -> tuple[Tensor, Tensor]:
    """Stack tensors (L_i, ...) into (B, L_max, ...) filled with ``pad_value`` after each end,
    and the (B, L_max) padding mask (True at padding)."""
    if len(seqs) == 0:
        raise ValueError("pad_sequences needs at least one tensor")
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
    padded = pad_sequence(list(seqs), batch_first=True, padding_value=pad_value)
    return padded, lengths_to_padding_mask(lengths, padded.shape[1])


def crop_offset(generator: torch.Generator | None = None) -> float:
    """An offset for :func:`crop_window`: uniform in [0, 1), drawn in float64 so that every
    start of a window is equally likely (to 2**-53) for any sequence length."""
    return float(torch.rand((), dtype=torch.float64, generator=generator))


def crop_window(x: Tensor, size: int, offset: float) -> Tensor:
    """The ``size`` steps of ``x`` (L, ...) starting at ``floor(offset * (L - size + 1))``, or all
    of ``x`` when it is not longer. With ``offset`` uniform in [0, 1) (:func:`crop_offset`) the
    start is uniform over the ``L - size + 1`` possible ones: fairseq's
    ``RawAudioDataset.crop_to_max_size``, ``start = np.random.randint(0, diff + 1)``. The
    offset is a fraction so that it can be drawn before the size is known (the audio decoder
    draws it per record; its ``collate`` gets no generator)."""
    diff = x.shape[0] - size
    if diff <= 0:
        return x
    start = min(int(offset * (diff + 1)), diff)
    return x[start : start + size]


def crop_to_shortest(seqs: Sequence[Tensor], generator: torch.Generator | None = None, max_len: int | None = None) -> Tensor:
    """Crop every tensor (L_i, ...) to the shortest length (and to ``max_len`` if given) with
    :func:`crop_window` at an offset drawn from ``generator``, then stack: (B, L_min, ...). This
    is fairseq's audio pretraining batching (``RawAudioDataset.crop_to_max_size``, no padding)."""
    if len(seqs) == 0:
        raise ValueError("crop_to_shortest needs at least one tensor")
    target = min(s.shape[0] for s in seqs)
    if max_len is not None:
        target = min(target, max_len)
    return torch.stack([crop_window(s, target, crop_offset(generator)) for s in seqs])


def bucket_by_length(
    lengths: Sequence[int] | Tensor, batch_size: int, num_buckets: int, generator: torch.Generator | None = None
) -> list[list[int]]:
    """Batches of indices whose lengths are close: sort by length (ties in random order), cut
    into ``num_buckets`` equal-count buckets, shuffle within each bucket, cut into batches of
    ``batch_size`` (the last of a bucket may be smaller), then shuffle the batch order.
    Every index appears exactly once."""
    if batch_size < 1 or num_buckets < 1:
        raise ValueError(f"batch_size and num_buckets must be >= 1, got {batch_size}, {num_buckets}")
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
    n = lengths.numel()
    if n == 0:
        return []
    tiebreak = torch.randperm(n, generator=generator)
    order = tiebreak[torch.argsort(lengths[tiebreak], stable=True)]
    batches: list[list[int]] = []
    for bucket in torch.tensor_split(order, min(num_buckets, n)):
        bucket = bucket[torch.randperm(bucket.numel(), generator=generator)]
        batches += [b.tolist() for b in torch.split(bucket, batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
