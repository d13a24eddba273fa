import math

import pytest
import torch

from d2v_core import testing
from d2v_core.interfaces import MaskRequest

from d2v_plugin_text.bert_masker import BertMasker, build_bert_masker
from d2v_plugin_text.options import BertMaskOptions, SpanMaskOptions
from d2v_plugin_text.span_masker import SpanMasker, build_span_masker


def exact_span_ratio(n: int, p: float, span: int) -> float:
    """E[masked fraction] of one row of n tokens under fairseq's rule, computed in closed form:
    k = int(p*n/span + U) distinct starts; token j is covered by min(j+1, span) possible starts."""
    a = p * n / span
    lo = math.floor(a)
    total = 0.0
    for k, w in ((lo, 1 - (a - lo)), (lo + 1, a - lo)):
        k = min(k, n)
        covered = sum(1 - math.comb(n - min(j + 1, span), k) / math.comb(n, k) for j in range(n))
        total += w * covered / n
    return total


def test_conformance_kit():
    assert abs(testing.check_masker(BertMasker(), length=200) - 0.15) < 0.01
    testing.check_masker(SpanMasker(), length=200)


def test_factories_read_options():
    assert build_bert_masker(BertMaskOptions(mask_prob=0.2)).mask_prob == 0.2
    m = build_span_masker(SpanMaskOptions(mask_prob=0.5, span_length=3))
    assert (m.mask_prob, m.span_length) == (0.5, 3)
    assert build_bert_masker(None).mask_prob == 0.15


def test_bert_counts_follow_fairseq_rounding():
    # n = 37 valid tokens: int(0.15*37 + U) is 5 or 6, with mean 5.55
    n, length, draws = 37, 50, 4000
    pad = torch.arange(length)[None, :] >= n
    gen = torch.Generator().manual_seed(0)
    counts = torch.cat([BertMasker()(MaskRequest(8, length, pad.expand(8, -1), None), gen).sum(-1) for _ in range(draws // 8)])
    assert set(counts.tolist()) <= {5, 6}
    assert abs(counts.float().mean().item() - 0.15 * n) < 0.03


def test_bert_ratio_and_uniform_positions():
    gen = torch.Generator().manual_seed(1)
    masks = torch.cat([BertMasker()(MaskRequest(16, 100, None, None), gen) for _ in range(200)])
    assert abs(masks.float().mean().item() - 0.15) < 0.005
    per_position = masks.float().mean(0)  # every position (bos/eos included) equally likely
    assert (per_position - 0.15).abs().max().item() < 0.04


@pytest.mark.parametrize("n", [64, 512])
def test_span_ratio_matches_closed_form(n):
    gen = torch.Generator().manual_seed(2)
    masks = torch.cat([SpanMasker()(MaskRequest(8, n, None, None), gen) for _ in range(40 if n == 512 else 200)])
    expected = exact_span_ratio(n, 0.35, 4)
    assert abs(masks.float().mean().item() - expected) < 0.006
    if n == 512:
        assert abs(expected - 0.31) < 0.01
        assert abs(SpanMasker().expected_ratio - expected) < 0.005


def test_span_runs_are_at_least_span_long():
    gen = torch.Generator().manual_seed(3)
    mask = SpanMasker()(MaskRequest(32, 120, None, None), gen)
    for row in mask.tolist():
        run = 0
        for j, v in enumerate(row + [False]):
            if v:
                run += 1
                continue
            if run:
                assert run >= 4 or j == len(row), f"a run of {run} ends before the row's end at {j}"
            run = 0


@pytest.mark.parametrize("masker", [BertMasker(), SpanMasker()])
def test_never_masks_padding_of_any_layout(masker):
    gen = torch.Generator().manual_seed(4)
    pad = torch.rand(16, 80, generator=torch.Generator().manual_seed(5)) < 0.3  # holes, not only right padding
    pad[0] = True  # an all-pad row
    for _ in range(20):
        m = masker(MaskRequest(16, 80, pad, None), gen)
        assert not (m & pad).any()
        assert not m[0].any()
        assert m[1:].any()


@pytest.mark.parametrize("masker", [BertMasker(), SpanMasker()])
def test_ratio_is_of_non_pad_tokens(masker):
    n, length = 60, 120
    pad = (torch.arange(length)[None, :] >= n).expand(16, -1)
    gen = torch.Generator().manual_seed(6)
    masks = torch.cat([masker(MaskRequest(16, length, pad, None), gen) for _ in range(100)])
    ratio = masks.float().sum().item() / (masks.shape[0] * n)
    expected = 0.15 if isinstance(masker, BertMasker) else exact_span_ratio(n, 0.35, 4)
    assert abs(ratio - expected) < 0.01
