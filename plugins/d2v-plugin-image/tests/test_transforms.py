"""Augmentation parameters follow BEiT/timm/torchvision distributions and come from the generator."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from d2v_plugin_image.transforms import (
    EvalTransform,
    TrainAugmentation,
    sample_color_jitter,
    sample_resized_crop,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalise(arr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float, ToTensor + ImageNet mean/std by hand."""
    x = arr.astype(np.float64).transpose(2, 0, 1) / 255.0
    return (x - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]


def test_crop_parameters_stay_in_range():
    gen = torch.Generator().manual_seed(0)
    fractions = []
    for _ in range(2000):
        top, left, h, w = sample_resized_crop(gen, 200, 120, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top <= 120 - h and 0 <= left <= 200 - w and h >= 1 and w >= 1
        # w and h are rounded from sides whose ratio is in [3/4, 4/3]: at most half a pixel off each.
        assert (w - 0.5) / (h + 0.5) <= 4 / 3 and (w + 0.5) / (h - 0.5) >= 3 / 4
        fractions.append(h * w / (200 * 120))
    fractions = np.array(fractions)
    assert fractions.min() >= 0.07 and fractions.max() <= 1.0
    assert 0.3 < fractions.mean() < 0.6  # uniform area fraction in [0.08, 1], minus rejections of big crops


def test_crop_falls_back_to_centre_crop_at_the_nearest_ratio():
    # A 1000 x 10 strip never fits a crop of area >= 90% with ratio <= 4/3, so every attempt fails.
    gen = torch.Generator().manual_seed(0)
    assert sample_resized_crop(gen, 1000, 10, (0.9, 1.0), (3 / 4, 4 / 3)) == (0, (1000 - 13) // 2, 10, 13)
    assert sample_resized_crop(gen, 10, 1000, (0.9, 1.0), (3 / 4, 4 / 3)) == ((1000 - 13) // 2, 0, 13, 10)


def test_color_jitter_factors_and_order():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        order, b, c, s = sample_color_jitter(gen, 0.4)
        assert sorted(order) == [0, 1, 2, 3]
        assert all(0.6 <= f <= 1.4 for f in (b, c, s))


def test_flip_only_augmentation_is_a_mirrored_normalised_image():
    arr = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    aug = TrainAugmentation(16, color_jitter=0.0, hflip=1.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    out = aug(Image.fromarray(arr), torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (3, 16, 16)
    np.testing.assert_allclose(out.numpy(), _normalise(arr[:, ::-1]), atol=1e-5)


def test_small_images_are_upscaled_to_the_output_size():
    img = Image.fromarray(np.full((5, 3, 3), 90, dtype=np.uint8))
    out = TrainAugmentation(24)(img, torch.Generator().manual_seed(0))
    assert out.shape == (3, 24, 24)
    out = TrainAugmentation(24)(Image.new("RGB", (1, 1), (9, 9, 9)), torch.Generator().manual_seed(0))
    assert out.shape == (3, 24, 24)


def test_same_seed_same_output_different_seed_different_output():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    aug = TrainAugmentation(32)
    a = aug(img, torch.Generator().manual_seed(3))
    b = aug(img, torch.Generator().manual_seed(3))
    c = aug(img, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_global_rng_is_not_used():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    aug = TrainAugmentation(32)
    torch.manual_seed(0)
    a = aug(img, torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    b = aug(img, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_eval_transform_centre_crops_the_short_side():
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, 10:30] = 255  # the central 20 x 20 square is white, the sides black
    out = EvalTransform(20)(Image.fromarray(arr))
    np.testing.assert_allclose(out.numpy(), _normalise(np.full((20, 20, 3), 255, np.uint8)), atol=1e-5)
    assert math.isclose(float(out[0, 0, 0]), (1 - 0.485) / 0.229, rel_tol=1e-5)
