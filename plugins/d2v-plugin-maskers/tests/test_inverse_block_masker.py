"""The ``inverse-block`` masker (data2vec 2.0 images, fairseq ``compute_block_mask_2d`` with
``inverse_mask=True``): exact equal counts, block structure of the visible patches, errors and
determinism, against hand-computed counts and a plain-loop reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d2v_core.interfaces import MaskRequest
from d2v_core.testing import check_masker

from d2v_plugin_maskers.inverse_block_masker import InverseBlockMasker, block_region_2d
from d2v_plugin_maskers.options import InverseBlockMaskOptions

LARGE = {"mask_prob": 0.75, "mask_prob_adjust": 0.1}


def request(batch: int, grid: tuple[int, int], padding_mask=None) -> MaskRequest:
    return MaskRequest(batch, grid[0] * grid[1], padding_mask, grid)


def visible_neighbour_fraction(visible: torch.Tensor, grid: tuple[int, int]) -> float:
    """Fraction of visible patches with at least one visible 4-neighbour."""
    v = visible.view(-1, *grid).float()
    p = F.pad(v, (1, 1, 1, 1))
    neighbours = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]
    return float(((neighbours > 0) & (v > 0)).sum() / v.sum())


def test_conformance_kit():
    assert abs(check_masker(InverseBlockMasker(), length=196, grid=(14, 14)) - 157 / 196) < 1e-12
    check_masker(InverseBlockMasker(), batch_size=4, length=64, grid=(8, 8))
    assert InverseBlockMasker.equal_counts is True and InverseBlockMasker().expected_ratio == 0.8


def test_defaults_are_the_data2vec2_image_base_values():
    o = InverseBlockMaskOptions()
    assert (o.mask_prob, o.mask_length, o.mask_prob_adjust) == (0.8, 3, 0.07)


@pytest.mark.parametrize(
    "grid, options, expected",
    [
        ((14, 14), {}, 157),  # 196 - int(196 * 0.2) = 196 - 39 (ViT-B/16 at 224)
        ((8, 8), {}, 52),  # 64 - int(12.8)
        ((16, 16), {}, 205),  # 256 - int(51.2)
        ((7, 10), {}, 57),  # 70 - int(70 * (1 - 0.8)): 1 - 0.8 is 0.19999999999999996 in binary, so 13, as fairseq
        ((14, 14), LARGE, 147),  # 196 - int(49.0)
        ((16, 16), LARGE, 192),  # ViT-H/14 at 224: 256 - 64
        ((14, 14), {"mask_length": 5}, 157),
    ],
)
def test_every_row_masks_exactly_the_same_count(grid, options, expected):
    masker = InverseBlockMasker(InverseBlockMaskOptions(**options))
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        assert masker(request(32, grid), gen).sum(-1).tolist() == [expected] * 32


def test_blocks_before_the_adjustment():
    """5 centres (int(196 * 0.27 / 9)) of 3 x 3 blocks, clamped: every visible patch then lies
    in a fully visible 2 x 2 square (a corner block keeps 2 x 2), and there are at most 45."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        region = block_region_2d(64, 14, 14, 5, 3, gen).view(64, 14, 14)
        assert (region.sum((1, 2)) <= 45).all() and (region.sum((1, 2)) >= 4).all()
        squares = region[:, :-1, :-1] & region[:, 1:, :-1] & region[:, :-1, 1:] & region[:, 1:, 1:]
        in_square = F.max_pool2d(F.pad(squares.float(), (1, 1, 1, 1)), 2, stride=1) > 0
        assert (in_square | ~region).all()


def test_visible_patches_form_blocks_unlike_random_ones():
    gen = torch.Generator().manual_seed(2)
    visible = ~InverseBlockMasker()(request(256, (14, 14)), gen)
    uniform = torch.zeros(256, 196, dtype=torch.bool)
    for b in range(256):
        uniform[b, torch.randperm(196, generator=gen)[:39]] = True
    # 39 random patches of 196: a visible patch has a visible 4-neighbour about 55% of the time
    assert visible_neighbour_fraction(uniform, (14, 14)) < 0.65
    assert visible_neighbour_fraction(visible, (14, 14)) > 0.9


def reference(seed: int, batch: int, h: int, w: int, p: float = 0.8, m: int = 3, adjust: float = 0.07) -> torch.Tensor:
    """Plain loops over the same draws the masker makes (centre uniforms, then one key per patch)."""
    gen = torch.Generator().manual_seed(seed)
    keep = 1 - p
    k = int(h * w * ((keep + adjust) / m**2))
    u = torch.rand(batch, k, generator=gen, dtype=torch.float64)
    keys = torch.rand(batch, h * w, generator=gen, dtype=torch.float64)
    n = int(h * w * keep)
    masked = torch.ones(batch, h * w, dtype=torch.bool)
    for b in range(batch):
        region = set()
        for c in (u[b] * h * w).floor().long().tolist():
            for dr in range(-(m // 2), m - m // 2):
                for dc in range(-(m // 2), m - m // 2):
                    region.add(min(max(c // w + dr, 0), h - 1) * w + min(max(c % w + dc, 0), w - 1))
        inside = sorted(region, key=lambda t: -keys[b, t].item())
        outside = sorted(set(range(h * w)) - region, key=lambda t: -keys[b, t].item())
        visible = inside[:n] if len(inside) >= n else inside + outside[: n - len(inside)]
        masked[b, visible] = False
    return masked


@pytest.mark.parametrize("seed, grid", [(0, (14, 14)), (1, (8, 8)), (2, (7, 10))])
def test_matches_a_plain_loop_reference(seed, grid):
    got = InverseBlockMasker()(request(8, grid), torch.Generator().manual_seed(seed))
    assert torch.equal(got, reference(seed, 8, *grid))


def test_the_generator_state_decides_the_mask():
    req = request(8, (14, 14))
    a = InverseBlockMasker()(req, torch.Generator().manual_seed(5))
    assert torch.equal(a, InverseBlockMasker()(req, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, InverseBlockMasker()(req, torch.Generator().manual_seed(6)))
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(InverseBlockMasker()(req, gen), a) and not torch.equal(InverseBlockMasker()(req, gen), a)


@pytest.mark.parametrize("grid, length", [(None, 196), ((14, 14), 197), ((196,), 196), ((2, 7, 14), 196)])
def test_a_missing_or_wrong_grid_is_a_one_line_error(grid, length):
    with pytest.raises(ValueError, match=r"^masker 'inverse-block' needs the 2-D patch grid") as info:
        InverseBlockMasker()(MaskRequest(2, length, None, grid), torch.Generator())
    assert "\n" not in str(info.value) and f"length {length}" in str(info.value)


def test_padding_is_refused_but_an_all_false_padding_mask_is_fine():
    pad = torch.zeros(2, 196, dtype=torch.bool)
    mask = InverseBlockMasker()(request(2, (14, 14), pad), torch.Generator().manual_seed(0))
    assert torch.equal(mask, InverseBlockMasker()(request(2, (14, 14)), torch.Generator().manual_seed(0)))
    pad[1, -14:] = True
    with pytest.raises(ValueError, match="cannot take padding \\(14 padded steps\\)"):
        InverseBlockMasker()(request(2, (14, 14), pad), torch.Generator())


def test_empty_batch():
    assert InverseBlockMasker()(request(0, (14, 14)), torch.Generator()).shape == (0, 196)
