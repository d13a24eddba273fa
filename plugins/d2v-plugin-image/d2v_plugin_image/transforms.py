"""data2vec_vision's training augmentation, with every random choice drawn from a torch.Generator.

BEiT (``beit/datasets.py``, ``beit/transforms.py``) applies ColorJitter(0.4, 0.4, 0.4), a
horizontal flip (p 0.5) and timm's random resized crop (scale (0.08, 1), ratio (3/4, 4/3),
bicubic) to the input size, then ToTensor and ImageNet mean/std. torchvision's and timm's
transform objects draw from the global torch RNG and Python's ``random``, which a data worker
cannot make reproducible per sample; so the parameters are sampled here, with the same
distributions as ``ColorJitter.get_params`` and timm's ``RandomResizedCropAndInterpolation.get_params``,
and the image operations themselves are torchvision's functional ones.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torchvision.transforms import InterpolationMode

INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def _uniforms(generator: torch.Generator | None, n: int) -> list[float]:
    return torch.rand(n, generator=generator, dtype=torch.float64).tolist()


def sample_color_jitter(
    generator: torch.Generator | None, strength: float
) -> tuple[list[int], float, float, float]:
    """Order of (brightness, contrast, saturation, hue) and the three factors, each uniform in
    [max(0, 1 - strength), 1 + strength] (torchvision ``ColorJitter(s, s, s).get_params``; no hue)."""
    order = torch.randperm(4, generator=generator).tolist()
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    b, c, s = (lo + (hi - lo) * u for u in _uniforms(generator, 3))
    return order, b, c, s


def color_jitter(img: Image.Image, order: list[int], brightness: float, contrast: float, saturation: float) -> Image.Image:
    for fn in order:
        if fn == 0:
            img = TF.adjust_brightness(img, brightness)
        elif fn == 1:
            img = TF.adjust_contrast(img, contrast)
        elif fn == 2:
            img = TF.adjust_saturation(img, saturation)
    return img


def sample_resized_crop(
    generator: torch.Generator | None, width: int, height: int,
    scale: tuple[float, float], ratio: tuple[float, float], attempts: int = 10,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop of area fraction in ``scale`` and aspect ratio log-uniform in
    ``ratio`` (timm/BEiT ``get_params``: 10 attempts, then a central crop at the nearest ratio)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        u_area, u_ratio, u_top, u_left = _uniforms(generator, 4)
        target_area = (scale[0] + (scale[1] - scale[0]) * u_area) * area
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, max(h, 1), max(w, 1)


def to_normalized_tensor(img: Image.Image) -> Tensor:
    """ToTensor then ImageNet mean/std (timm's ``IMAGENET_DEFAULT_*``): (3, H, W) float32."""
    return TF.normalize(TF.to_tensor(img), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


class TrainAugmentation:
    """ColorJitter -> horizontal flip -> random resized crop -> normalised tensor (BEiT's order)."""

    def __init__(
        self, image_size: int, color_jitter: float = 0.4, hflip: float = 0.5,
        crop_scale: tuple[float, float] = (0.08, 1.0), crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bicubic",
    ) -> None:
        self.image_size = image_size
        self.color_jitter = color_jitter
        self.hflip = hflip
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.interpolation = INTERPOLATION[interpolation]

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Tensor:
        if self.color_jitter > 0:
            img = color_jitter(img, *sample_color_jitter(generator, self.color_jitter))
        if self.hflip > 0 and _uniforms(generator, 1)[0] < self.hflip:
            img = TF.hflip(img)
        top, left, h, w = sample_resized_crop(generator, img.width, img.height, self.crop_scale, self.crop_ratio)
        img = TF.resized_crop(img, top, left, h, w, [self.image_size, self.image_size], interpolation=self.interpolation)
        return to_normalized_tensor(img)


class EvalTransform:
    """No randomness: resize the short side to ``image_size``, centre-crop, normalise."""

    def __init__(self, image_size: int, interpolation: str = "bicubic") -> None:
        self.image_size = image_size
        self.interpolation = INTERPOLATION[interpolation]

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Tensor:
        img = TF.resize(img, self.image_size, interpolation=self.interpolation)
        img = TF.center_crop(img, [self.image_size, self.image_size])
        return to_normalized_tensor(img)
