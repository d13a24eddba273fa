"""The image RecordDecoder: records of any format to normalised tensors, skips, batches."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from d2v_core import testing
from d2v_core.config import RunConfig
from d2v_core.errors import ConfigError
from d2v_core.interfaces import SkipRecord
from d2v_core.train.build import build_context

from d2v_plugin_image.data import ImageRecordDecoder, build_record_decoder
from d2v_plugin_image.options import ImageDataOptions, ImageEncoderOptions

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def records() -> list[dict]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 200, 30, 60] + [0] * 762)
    return [
        {"__key__": "a", "jpg": encode(rgb, "JPEG")},
        {"__key__": "b", "png": encode(Image.new("L", (12, 12), 30), "PNG")},
        {"__key__": "c", "webp": encode(Image.new("RGBA", (50, 20), (1, 2, 3, 4)), "WEBP")},
        {"__key__": "d", "jpeg": encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG")},
        {"__key__": "e", "png": encode(pal, "PNG", transparency=0)},
    ]


def test_every_format_decodes_to_a_normalised_batch():
    dec = ImageRecordDecoder(16)
    batch = testing.check_record_decoder(dec, records())
    assert batch["image"].shape == (5, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["keys"] == ["a", "b", "c", "d", "e"]
    assert torch.isfinite(batch["image"]).all()


def test_constant_grey_image_normalises_to_imagenet_stats():
    dec = ImageRecordDecoder(8, ImageDataOptions(augment=False))
    out = dec.decode({"__key__": "g", "png": encode(Image.new("L", (20, 10), 100), "PNG")})["image"]
    expected = (100 / 255 - MEAN) / STD
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(expected[:, None, None], (3, 8, 8)), atol=1e-5)


def test_augmented_constant_image_keeps_its_value_without_colour_jitter():
    # Crops, flips and resizes of a constant image are the same constant.
    dec = ImageRecordDecoder(8, ImageDataOptions(color_jitter=0.0))
    out = dec.decode({"png": encode(Image.new("RGB", (30, 17), (10, 200, 90)), "PNG")}, torch.Generator().manual_seed(0))
    expected = (np.array([10, 200, 90]) / 255 - MEAN) / STD
    np.testing.assert_allclose(out["image"].numpy(), np.broadcast_to(expected[:, None, None], (3, 8, 8)), atol=1e-5)


def test_same_generator_seed_same_sample():
    dec = ImageRecordDecoder(16)
    rec = records()[0]
    a = dec.decode(rec, torch.Generator().manual_seed(5))["image"]
    b = dec.decode(rec, torch.Generator().manual_seed(5))["image"]
    c = dec.decode(rec, torch.Generator().manual_seed(6))["image"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_extension_keys_are_matched_case_insensitively_and_by_suffix():
    dec = ImageRecordDecoder(8)
    data = encode(Image.new("RGB", (9, 9)), "PNG")
    assert dec.decode({"__key__": "k", "image.PNG": data})["image"].shape == (3, 8, 8)
    assert dec.extensions == ("jpg", "jpeg", "png", "webp")


@pytest.mark.parametrize("payload", [b"", b"garbage bytes", None])
def test_bad_records_raise_skip_record(payload):
    dec = ImageRecordDecoder(8)
    rec = {"__key__": "bad", "jpg": payload}
    with pytest.raises(SkipRecord) as err:
        dec.decode(rec)
    assert err.value.reason == "unreadable" and "bad.jpg" in str(err.value)


def test_truncated_record_is_skipped():
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(SkipRecord, match="unreadable"):
        ImageRecordDecoder(8).decode({"__key__": "t", "jpg": data[: len(data) // 3]})


def test_record_without_image_is_skipped():
    with pytest.raises(SkipRecord) as err:
        ImageRecordDecoder(8).decode({"__key__": "x", "txt": b"hello"})
    assert err.value.reason == "no_image" and "txt" in err.value.detail


def test_factory_takes_the_encoder_image_size():
    cfg = RunConfig(modality="image", encoder={"image_size": 24, "patch_size": 4}, model={"depth": 8})
    enc = ImageEncoderOptions.model_validate(cfg.encoder)
    dec = build_record_decoder(ImageDataOptions(), enc, build_context(cfg))
    assert dec.decode(records()[1])["image"].shape == (3, 24, 24)
    with pytest.raises(ConfigError, match="image_size"):
        build_record_decoder(ImageDataOptions(image_size=32), enc, build_context(cfg))


def test_data_option_validation():
    with pytest.raises(Exception, match="crop_scale"):
        ImageDataOptions(crop_scale=(0.5, 0.2))
    with pytest.raises(Exception, match="hflip"):
        ImageDataOptions(hflip=1.5)


def test_inference_decoding_is_the_eval_transform_whatever_the_augmentation():
    import io

    from PIL import Image

    from d2v_plugin_image.data import ImageRecordDecoder
    from d2v_plugin_image.options import ImageDataOptions
    from d2v_plugin_image.transforms import EvalTransform

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 90)).save(buf, format="PNG")
    rec = {"__key__": "x", "png": buf.getvalue()}
    dec = ImageRecordDecoder(32, ImageDataOptions(augment=True))
    a, b = dec.decode_for_inference(rec), dec.decode_for_inference(rec)
    assert torch.equal(a["image"], b["image"])
    expected = EvalTransform(32, ImageDataOptions().interpolation)(Image.open(io.BytesIO(rec["png"])).convert("RGB"), None)
    assert torch.allclose(a["image"], expected)
