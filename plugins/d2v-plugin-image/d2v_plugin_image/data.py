"""The image RecordDecoder: record bytes -> augmented, normalised (3, S, S) tensor -> batch."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from d2v_core import Batch, BuildContext, ConfigError, RecordDecoder, SkipRecord

from d2v_plugin_image.image_io import IMAGE_EXTENSIONS, decode_image
from d2v_plugin_image.options import ImageDataOptions, ImageEncoderOptions
from d2v_plugin_image.transforms import EvalTransform, TrainAugmentation


class ImageRecordDecoder(RecordDecoder):
    """Decodes the first of ``jpg``/``jpeg``/``png``/``webp`` in a record to RGB, then applies the
    training augmentation (or the deterministic eval transform). Images smaller than
    ``image_size`` are upscaled by the crop, never skipped; unreadable ones raise
    ``SkipRecord("unreadable")`` and a record without image bytes ``SkipRecord("no_image")``.
    Samples are ``{"image": (3, S, S) float32, "key": str}``.
    """

    extensions = IMAGE_EXTENSIONS

    def __init__(self, image_size: int, options: ImageDataOptions | None = None) -> None:
        self.options = options or ImageDataOptions()
        self.image_size = image_size
        if self.options.augment:
            self.transform: TrainAugmentation | EvalTransform = TrainAugmentation(
                image_size, self.options.color_jitter, self.options.hflip, self.options.crop_scale,
                self.options.crop_ratio, self.options.interpolation,
            )
        else:
            self.transform = EvalTransform(image_size, self.options.interpolation)
        self.eval_transform = EvalTransform(image_size, self.options.interpolation)

    def _payload(self, record: Mapping[str, Any]) -> tuple[str, Any]:
        lowered = {str(k).lower().rsplit(".", 1)[-1]: k for k in record if not str(k).startswith("__")}
        for ext in self.extensions:
            if ext in lowered:
                return ext, record[lowered[ext]]
        found = sorted(str(k) for k in record if not str(k).startswith("__"))
        raise SkipRecord("no_image", f"no {'/'.join(self.extensions)} entry (found: {', '.join(found) or 'nothing'})")

    def decode(self, record: Mapping[str, Any], generator: torch.Generator | None = None) -> dict:
        key = str(record.get("__key__", ""))
        ext, data = self._payload(record)
        img = decode_image(data, what=f"{key or 'record'}.{ext}", max_pixels=self.options.max_pixels)
        return {"image": self.transform(img, generator), "key": key}

    def decode_for_inference(self, record: Mapping[str, Any]) -> dict:
        """The deterministic eval transform (resize, centre crop, normalise), never augmentation."""
        key = str(record.get("__key__", ""))
        ext, data = self._payload(record)
        img = decode_image(data, what=f"{key or 'record'}.{ext}", max_pixels=self.options.max_pixels)
        return {"image": self.eval_transform(img, None), "key": key}

    def collate(self, samples: list[dict]) -> Batch:
        return {"image": torch.stack([s["image"] for s in samples]), "keys": [s["key"] for s in samples]}


def build_record_decoder(options: ImageDataOptions, encoder: ImageEncoderOptions, ctx: BuildContext) -> ImageRecordDecoder:
    """Factory of the image modality; the image size defaults to ``encoder.image_size``."""
    opts, encoder_size = options, encoder.image_size
    if opts.image_size is not None and opts.image_size != encoder_size:
        raise ConfigError(
            f"data.options.image_size ({opts.image_size}) differs from encoder.image_size ({encoder_size}); "
            "the relative position bias is sized for one grid, so set them equal or leave data.options.image_size unset"
        )
    return ImageRecordDecoder(encoder_size, opts)
