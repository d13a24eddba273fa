"""Span masking of audio frames: fairseq ``compute_mask_indices`` as data2vec v1 ran it (2022).

The reference is ``fairseq/data/data_utils.py:compute_mask_indices`` at commit ``c71870f3``
(static span lengths). Randomness comes from a NumPy generator seeded from the caller's
``torch.Generator``, so a mask is a pure function of the request and the generator state.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from d2v_core import Masker, MaskRequest

from d2v_plugin_audio.options import SpanMaskerOptions

#: Length (frames) at which ``expected_ratio`` is evaluated: 10 s of audio at 50 frames/s.
REFERENCE_LENGTH = 500


def _span_starts_no_overlap(rng: np.random.Generator, size: int, lengths: list[int], min_space: int) -> np.ndarray:
    """fairseq's recursive placement of non-overlapping spans (``no_overlap=True``)."""
    idc: list[int] = []

    def arrange(s: int, e: int, length: int, keep_length: int) -> list[tuple[int, int]]:
        start = int(rng.integers(s, e - length))
        idc.extend(start + i for i in range(length))
        parts = []
        if start - s - min_space >= keep_length:
            parts.append((s, start - min_space + 1))
        if e - start - length - min_space > keep_length:
            parts.append((start + length + min_space, e))
        return parts

    parts = [(0, size)]
    min_length = min(lengths)
    for length in sorted(lengths, reverse=True):
        lens = np.array([e - s if e - s >= length + min_space else 0 for s, e in parts], dtype=np.int64)
        if lens.sum() == 0:
            break
        c = int(rng.choice(len(parts), p=lens / lens.sum()))
        s, e = parts.pop(c)
        parts.extend(arrange(s, e, length, min_length))
    return np.asarray(idc, dtype=np.int64)


def compute_span_mask(
    valid_lengths: list[int] | None,
    batch_size: int,
    length: int,
    opts: SpanMaskerOptions,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Masked positions of each row, as indices into that row's valid (unpadded) steps.

    ``valid_lengths`` is None when the batch has no padding mask: then one span count is drawn
    for the whole batch, as fairseq does; otherwise each row draws its own from its length.
    """
    p, span = opts.mask_prob, opts.mask_length

    def draw_count(size: int) -> int:
        # probabilistic rounding of the expected number of span starts
        return max(opts.min_masks, int(p * size / float(span) + rng.random()))

    shared = draw_count(length)
    rows = []
    for i in range(batch_size):
        size = length if valid_lengths is None else int(valid_lengths[i])
        num = shared if valid_lengths is None else draw_count(size)
        lengths = [span] * num
        if num == 0:
            rows.append(np.zeros(0, dtype=np.int64))
            continue
        if opts.no_overlap:
            idc = _span_starts_no_overlap(rng, size, lengths, opts.mask_min_space)
        else:
            min_len = span
            if size - min_len <= num:  # too short for num spans: shrink the start range as fairseq
                min_len = size - num - 1
            starts = rng.choice(size - min_len, num, replace=False)
            idc = (starts[:, None] + np.arange(span)[None, :]).reshape(-1)
        rows.append(np.unique(idc[(idc >= 0) & (idc < size)]))

    if opts.require_same_masks and rows:
        fewest = min(len(r) for r in rows)
        rows = [r if len(r) <= fewest else np.sort(rng.choice(r, fewest, replace=False)) for r in rows]
    return rows


@lru_cache(maxsize=64)
def span_coverage(mask_prob: float, mask_length: int, min_masks: int, length: int) -> float:
    """Exact expected fraction of ``length`` steps covered by the spans (overlaps allowed),
    before ``require_same_masks`` trims rows.

    With ``n`` distinct starts drawn from ``N = length - mask_length`` positions, step ``t`` is
    covered unless none of the ``w_t`` starts whose span reaches it is drawn, which has
    probability ``C(N - w_t, n) / C(N, n)``; ``n`` is ``floor(mask_prob*length/mask_length)``
    or one more (probabilistic rounding). For long inputs every position starts a span with
    probability ``mask_prob / mask_length`` (distinct starts), so the coverage tends to
    ``1 - (1 - mask_prob / mask_length) ** mask_length`` (0.489 at 0.65 and 10; the Poisson
    approximation ``1 - exp(-mask_prob)`` = 0.478 undercounts); edges and the shorter start
    range make it 0.49-0.50 at 100-1000 frames.
    """
    expected = mask_prob * length / mask_length
    base = int(expected)
    total = 0.0
    for n, weight in ((base, 1.0 - (expected - base)), (base + 1, expected - base)):
        n = max(min_masks, n)
        if weight == 0.0 or n == 0:
            continue
        starts = length - mask_length if length - mask_length > n else n + 1
        # w: how many possible starts reach step t; steps sharing w share the probability
        reach = Counter(max(0, min(t, starts - 1) - max(0, t - mask_length + 1) + 1) for t in range(length))
        covered = 0.0
        for w, steps in reach.items():
            uncovered = 1.0
            for i in range(n):
                uncovered *= max(0.0, (starts - w - i) / (starts - i))
            covered += steps * (1.0 - uncovered)
        total += weight * covered / length
    return total


class SpanMasker(Masker):
    """data2vec audio masking: spans of ``mask_length`` frames from ``mask_prob * T / mask_length``
    random starts (about 49 % of frames at the defaults), never in padding.

    ``expected_ratio`` is the span coverage at a 500-frame row (:func:`span_coverage`; with
    ``no_overlap``, ``mask_prob``). With ``require_same_masks`` every row is trimmed to the
    batch's fewest masked frames, so the realised ratio falls with batch size (about 0.45 for
    8 rows of 500 frames, 0.43 for 32 rows), as in fairseq.
    """

    def __init__(self, options: SpanMaskerOptions | None = None) -> None:
        self.options = options or SpanMaskerOptions()
        self.equal_counts = self.options.require_same_masks

    @property
    def expected_ratio(self) -> float:
        o = self.options
        if o.no_overlap:
            return o.mask_prob
        return span_coverage(o.mask_prob, o.mask_length, o.min_masks, REFERENCE_LENGTH)

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        pad = None if request.padding_mask is None else request.padding_mask.bool().cpu()
        valid = None if pad is None else (~pad).sum(-1).tolist()
        rows = compute_span_mask(valid, request.batch_size, request.length, self.options, rng)
        mask = torch.zeros(request.batch_size, request.length, dtype=torch.bool)
        for i, idc in enumerate(rows):
            if len(idc) == 0:
                continue
            # indices count valid steps, so padding anywhere in the row is never masked
            positions = torch.arange(request.length) if pad is None else (~pad[i]).nonzero().squeeze(-1)
            mask[i, positions[torch.from_numpy(idc)]] = True
        return mask


def build_span_masker(options: SpanMaskerOptions | None = None) -> SpanMasker:
    """Factory for the ``span`` masker component."""
    return SpanMasker(options)
