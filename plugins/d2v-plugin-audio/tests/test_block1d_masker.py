"""The ``block-1d`` masker (data2vec 2.0 audio, fairseq ``compute_block_mask_1d``): exact equal
counts, padding, determinism and span structure, against values computed here by hand or by a
plain-loop reference."""

from __future__ import annotations

import pytest
import torch

from d2v_core.interfaces import MaskRequest
from d2v_core.testing import check_masker, plugin_context

import d2v_plugin_audio.plugin as audio_plugin
from d2v_plugin_audio.block1d_masker import Block1dMasker, span_mask_1d
from d2v_plugin_audio.options import Block1dMaskerOptions


def runs(row: list[bool]) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of True."""
    out, start = [], None
    for t, v in enumerate(row + [False]):
        if v and start is None:
            start = t
        elif not v and start is not None:
            out.append((start, t - start))
            start = None
    return out


def mean_run_length(mask: torch.Tensor) -> float:
    lengths = [n for row in mask.tolist() for _, n in runs(row)]
    return sum(lengths) / len(lengths)


def test_conformance_kit():
    for length in (200, 500):
        ratio = check_masker(Block1dMasker(), length=length)
        assert ratio == 0.5  # int(0.5 * T) / T is exactly 0.5 for even T
    assert Block1dMasker.equal_counts is True and Block1dMasker().expected_ratio == 0.5


def test_defaults_are_the_data2vec2_audio_base_values():
    o = Block1dMaskerOptions()
    assert (o.mask_prob, o.mask_length, o.mask_prob_adjust) == (0.5, 5, 0.05)


@pytest.mark.parametrize(
    "length, options, expected",
    [
        (200, {}, 100),  # int(0.5 * 200)
        (333, {}, 166),  # int(166.5)
        (500, {}, 250),
        (1000, {}, 500),
        (49, {}, 24),  # the tiny preset's 1 s clips: int(24.5)
        (500, {"mask_prob": 0.55, "mask_prob_adjust": 0.1}, 275),  # Large: int(275.0)
        (333, {"mask_prob": 0.55, "mask_prob_adjust": 0.1}, 183),  # int(183.15)
    ],
)
def test_every_row_masks_exactly_int_mask_prob_times_length(length, options, expected):
    masker = Block1dMasker(Block1dMaskerOptions(**options))
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        mask = masker(MaskRequest(16, length), gen)
        assert mask.sum(-1).tolist() == [expected] * 16


def test_padding_is_never_masked_and_counts_follow_the_shortest_row():
    lengths = torch.tensor([200, 150, 120, 180, 199])
    right = torch.arange(200)[None, :] >= lengths[:, None]
    left = torch.arange(200)[None, :] < (200 - lengths)[:, None]
    gen = torch.Generator().manual_seed(1)
    for pad in (right, left):
        for _ in range(30):
            mask = Block1dMasker()(MaskRequest(5, 200, pad), gen)
            assert not (mask & pad).any()
            assert mask.sum(-1).tolist() == [60] * 5  # int(0.5 * 120), 120 = the shortest row


def test_padding_in_the_middle_and_rows_too_short_to_mask():
    pad = torch.zeros(3, 20, dtype=torch.bool)
    pad[0, 5:9] = True  # 16 valid steps
    pad[1, ::2] = True  # 10 valid steps
    mask = Block1dMasker()(MaskRequest(3, 20, pad), torch.Generator().manual_seed(2))
    assert not (mask & pad).any() and mask.sum(-1).tolist() == [5, 5, 5]  # int(0.5 * 10)
    pad[2, 1:] = True  # one valid step: int(0.5 * 1) = 0
    mask = Block1dMasker()(MaskRequest(3, 20, pad), torch.Generator().manual_seed(2))
    assert not mask.any()
    assert Block1dMasker()(MaskRequest(0, 20), torch.Generator()).shape == (0, 20)


def test_the_generator_state_decides_the_mask():
    req = MaskRequest(8, 300)
    a = Block1dMasker()(req, torch.Generator().manual_seed(5))
    b = Block1dMasker()(req, torch.Generator().manual_seed(5))
    c = Block1dMasker()(req, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(5)
    first, second = Block1dMasker()(req, gen), Block1dMasker()(req, gen)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the draws advance the generator


def reference(seed: int, batch: int, length: int, p: float = 0.5, span: int = 5, adjust: float = 0.05) -> torch.Tensor:
    """Plain loops over the same draws the masker makes (centre uniforms, then one key per step)."""
    gen = torch.Generator().manual_seed(seed)
    k = int(length * ((p + adjust) / span))
    u = torch.rand(batch, k, generator=gen, dtype=torch.float64)
    keys = torch.rand(batch, length, generator=gen, dtype=torch.float64)
    n = int(length * p)
    out = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        covered = set()
        for c in (u[b] * length).floor().long().tolist():
            covered |= {min(max(c + o, 0), length - 1) for o in range(-(span // 2), span - span // 2)}
        masked = sorted(covered, key=lambda t: -keys[b, t].item())
        free = sorted(set(range(length)) - covered, key=lambda t: -keys[b, t].item())
        chosen = masked[:n] if len(masked) >= n else masked + free[: n - len(masked)]
        out[b, chosen] = True
    return out


@pytest.mark.parametrize("seed, length", [(0, 50), (1, 200), (2, 333)])
def test_matches_a_plain_loop_reference(seed, length):
    got = Block1dMasker()(MaskRequest(6, length), torch.Generator().manual_seed(seed))
    assert torch.equal(got, reference(seed, 6, length))


def test_spans_before_the_adjustment_are_runs_of_mask_length():
    gen = torch.Generator().manual_seed(3)
    lengths = torch.tensor([500, 400, 97])
    k = torch.tensor([55, 44, 10])  # int(T * 0.55 / 5)
    for _ in range(50):
        spans = span_mask_1d(lengths, 500, k, 5, gen)
        for b, row in enumerate(spans.tolist()):
            assert not any(row[int(lengths[b]):])  # nothing past the row's own length
            for start, n in runs(row[: int(lengths[b])]):
                touches_edge = start == 0 or start + n == int(lengths[b])
                assert n >= (3 if touches_edge else 5)  # a clamped span keeps its centre and 2 steps
            assert sum(row) <= 5 * int(k[b])


def test_span_coverage_matches_the_expected_value():
    """A step t is covered unless none of the 55 centres falls within 2 of it: with w_t such
    positions out of 500, P(covered) = 1 - (1 - w_t / 500) ** 55."""
    T, k = 500, 55
    expected = sum(1 - (1 - (min(t + 2, T - 1) - max(t - 2, 0) + 1) / T) ** k for t in range(T))  # ~212.6
    gen = torch.Generator().manual_seed(4)
    counts = [span_mask_1d(torch.full((64,), T), T, torch.full((64,), k), 5, gen).sum(-1).double().mean() for _ in range(20)]
    assert abs(float(torch.stack(counts).mean()) - expected) < 1.5


def test_masked_frames_come_in_runs_unlike_random_masking():
    gen = torch.Generator().manual_seed(6)
    block = Block1dMasker()(MaskRequest(64, 500), gen)
    uniform = torch.zeros(64, 500, dtype=torch.bool)
    for b in range(64):
        uniform[b, torch.randperm(500, generator=gen)[:250]] = True
    # random masking at 50%: mean run length about 1 / (1 - 0.5) = 2; spans of 5 give about 4.5
    assert mean_run_length(uniform) < 2.3
    assert mean_run_length(block) > 3.5


def test_registered_for_audio_only():
    with plugin_context(audio_plugin) as loaded:
        spec = loaded.registry.component("masker", "block-1d", modality="audio")
        assert spec.modalities == ("audio",)
        masker = spec.load_factory()(spec.load_options()(mask_prob=0.55, mask_prob_adjust=0.1))
        assert isinstance(masker, Block1dMasker) and masker.expected_ratio == 0.55
