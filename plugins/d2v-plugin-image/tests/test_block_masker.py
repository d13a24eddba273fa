"""The ``block`` masker against BEiT's algorithm (spec section 1.2) and the conformance kit."""

from __future__ import annotations

import math
import random

import pytest
import torch

from d2v_core import testing
from d2v_core.interfaces import MaskRequest

from d2v_plugin_image.block_masker import (
    BlockMasker,
    GeneratorUniforms,
    block_shape,
    sample_block,
    scaled_counts,
)
from d2v_plugin_image.options import BlockMaskOptions

LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))


def _masks(masker: BlockMasker, grid: tuple[int, int], rows: int, seed: int = 0) -> torch.Tensor:
    n = grid[0] * grid[1]
    return masker(MaskRequest(rows, n, None, grid), torch.Generator().manual_seed(seed))


def _beit_reference_counts(draws: int, height: int = 14, width: int = 14, target: int = 120, min_block: int = 16) -> list[int]:
    """Masked counts of BEiT's generator, written out from the spec with Python's ``random``."""
    rng = random.Random(1234)
    counts = []
    for _ in range(draws):
        grid = [[0] * width for _ in range(height)]
        count = 0
        while count < target:
            remaining = target - count
            added = 0
            for _attempt in range(10):
                area = rng.uniform(min_block, remaining)
                aspect = math.exp(rng.uniform(*LOG_ASPECT))
                h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
                if w < width and h < height:
                    top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                    cells = [(i, j) for i in range(top, top + h) for j in range(left, left + w)]
                    new = sum(1 for i, j in cells if not grid[i][j])
                    if 0 < new <= remaining:
                        for i, j in cells:
                            grid[i][j] = 1
                        added = new
                    if added:
                        break
            if not added:
                break
            count += added
        counts.append(count)
    return counts


def test_block_shape_hand_values():
    assert block_shape(16, 1.0) == (4, 4)
    assert block_shape(30, 0.3) == (3, 10)  # sqrt(9), sqrt(100)
    assert block_shape(50, 2.0) == (10, 5)  # sqrt(100), sqrt(25)


def test_scaled_counts_hand_values():
    assert scaled_counts(196, 120 / 196, 16) == (120, 16)
    assert scaled_counts(64, 120 / 196, 16) == (39, 5)  # 39.18 -> 39, 16 * 64 / 196 = 5.2 -> 5
    assert scaled_counts(16, 120 / 196, 16) == (10, 1)  # 9.8 -> 10, 1.3 -> 1
    assert scaled_counts(4, 0.5, 16) == (2, 1)  # the minimum never drops below one patch


def test_single_block_proposals_respect_area_and_aspect():
    uniform = GeneratorUniforms(torch.Generator().manual_seed(0))
    for _ in range(2000):
        area, aspect, h, w = sample_block(uniform, 16, 120, LOG_ASPECT)
        assert 16 <= area <= 120
        assert 0.3 - 1e-12 <= aspect <= 1 / 0.3 + 1e-12
        # h and w are the rounded sides of a block of that area and height/width ratio.
        assert abs(h - math.sqrt(area * aspect)) <= 0.5 and abs(w - math.sqrt(area / aspect)) <= 0.5
        assert h * w >= (math.sqrt(area * aspect) - 0.5) * (math.sqrt(area / aspect) - 0.5)


def test_count_never_exceeds_120_of_196_and_usually_hits_it():
    counts = _masks(BlockMasker(), (14, 14), 2000).sum(1)
    assert counts.max().item() == 120
    # BEiT's own generator stops short about 30% of the time (the reference below agrees).
    assert (counts == 120).float().mean().item() >= 0.6
    assert counts.min().item() >= 100


def test_count_distribution_matches_beit_reference():
    ours = _masks(BlockMasker(), (14, 14), 2000).sum(1).float()
    ref = torch.tensor(_beit_reference_counts(2000), dtype=torch.float)
    assert abs(ours.mean().item() - ref.mean().item()) < 0.5
    assert abs((ours == 120).float().mean().item() - (ref == 120).float().mean().item()) < 0.06


def test_masks_are_blocky_not_scattered():
    masks = _masks(BlockMasker(), (14, 14), 500).view(-1, 14, 14)
    edges = (masks[:, 1:] != masks[:, :-1]).sum((1, 2)) + (masks[:, :, 1:] != masks[:, :, :-1]).sum((1, 2))
    p = masks.float().mean().item()
    scattered = 2 * 14 * 13 * 2 * p * (1 - p)  # expected mask/unmask edges of i.i.d. patches
    assert edges.float().mean().item() < 0.4 * scattered


def test_declared_ratio_is_measured():
    masker = BlockMasker()
    for grid in [(14, 14), (8, 8)]:
        ratio = _masks(masker, grid, 4000, seed=5).float().mean().item()
        assert abs(ratio - masker.expected_ratio) < 0.004, grid


@pytest.mark.parametrize("grid, target", [((8, 8), 39), ((7, 7), 30), ((6, 10), 37), ((16, 16), 157)])
def test_other_grids_scale_the_count(grid, target):
    counts = _masks(BlockMasker(), grid, 500).sum(1)
    assert counts.max().item() == target
    assert (counts == target).float().mean().item() >= 0.5


def test_deterministic_over_many_draws():
    masker = BlockMasker()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    req = MaskRequest(16, 196, None, (14, 14))
    for _ in range(30):
        assert torch.equal(masker(req, g1), masker(req, g2))
    assert not torch.equal(masker(req, torch.Generator().manual_seed(7)), masker(req, torch.Generator().manual_seed(8)))


def test_rows_differ_within_a_batch():
    masks = _masks(BlockMasker(), (14, 14), 8)
    assert len({tuple(m.tolist()) for m in masks}) == 8


def test_padding_is_never_masked():
    pad = torch.zeros(4, 64, dtype=torch.bool)
    pad[:, 56:] = True
    m = BlockMasker()(MaskRequest(4, 64, pad, (8, 8)), torch.Generator().manual_seed(0))
    assert not (m & pad).any() and m.any()


def test_options_change_the_masks():
    masks = _masks(BlockMasker(BlockMaskOptions(mask_ratio=0.25)), (14, 14), 200)
    assert masks.sum(1).max().item() == 49  # round(0.25 * 196)


def test_conformance_kit():
    testing.check_masker(BlockMasker(), batch_size=8, length=196, grid=(14, 14), draws=40)
    testing.check_masker(BlockMasker(), batch_size=8, length=64, grid=(8, 8), draws=40)


def test_needs_a_matching_2d_grid():
    with pytest.raises(ValueError, match="2-D patch grid"):
        BlockMasker()(MaskRequest(2, 196), torch.Generator())
    with pytest.raises(ValueError, match="does not match"):
        BlockMasker()(MaskRequest(2, 100, None, (14, 14)), torch.Generator())


def test_option_validation():
    with pytest.raises(Exception, match="mask_ratio"):
        BlockMaskOptions(mask_ratio=1.5)
    with pytest.raises(Exception, match="extra|unknown|not permitted"):
        BlockMaskOptions.model_validate({"ratio": 0.5})
