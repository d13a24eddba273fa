"""d2v plugin registration for the image modality: the modality, the BEiT ``block`` masker, the
data2vec 2.0 ``conv2d`` decoder and the ``hf`` exporter (no torch at import time)."""

from __future__ import annotations

from pathlib import Path

from d2v_core import ComponentSpec, ModalitySpec, hookimpl

D2V_PLUGIN_API_VERSION = "1.0"

_PKG = "d2v_plugin_image"


def demo_data() -> str:
    """Folder of the bundled demo images (32 x 32 PNG hand-written digits, UCI optical digits)."""
    # A plain path (not importlib.resources): the core reads it as a folder of files.
    return str(Path(__file__).resolve().parent / "demo")


IMAGE = ModalitySpec(
    name="image",
    encoder=f"{_PKG}.encoder:build_encoder",
    encoder_options=f"{_PKG}.options:ImageEncoderOptions",
    record_decoder=f"{_PKG}.data:build_record_decoder",
    data_options=f"{_PKG}.options:ImageDataOptions",
    default_masker="block",
    presets=f"{_PKG}.presets:PRESETS",
    description="images (JPEG/PNG/WebP): ViT with BEiT blocks, as data2vec_vision",
    default_preset="tiny",
    demo_data=f"{_PKG}.plugin:demo_data",
    extensions=("jpg", "jpeg", "png", "webp"),
)

BLOCK_MASKER = ComponentSpec(
    kind="masker",
    name="block",
    factory=f"{_PKG}.block_masker:build_block_masker",
    options=f"{_PKG}.options:BlockMaskOptions",
    description="BEiT block-wise masking on the patch grid (data2vec_vision: 120 of 196 patches)",
    modalities=("image",),
)

HF_EXPORTER = ComponentSpec(
    kind="exporter",
    name="image-hf",
    factory=f"{_PKG}.hf_export:ImageHFExporter",
    description="d2v export --format hf / d2v import --from-hf: transformers Data2VecVisionModel",
    modalities=("image",),
)


CONV2D_DECODER = ComponentSpec(
    kind="decoder",
    name="conv2d",
    factory=f"{_PKG}.conv_decoder_2d:build_conv_decoder_2d",
    options="d2v_core.decoder_options:ConvDecoderOptions",
    description="data2vec 2.0 2-D conv decoder on the patch grid (conv -> LN -> GELU blocks + projection)",
    modalities=("image",),
)

FAIRSEQ_IMPORTER = ComponentSpec(
    kind="importer",
    name="image-fairseq",
    factory=f"{_PKG}.fairseq_import:ImageFairseqImporter",
    description="fairseq data2vec_vision (BEiT layout) checkpoints (d2v import --from-fairseq)",
    modalities=("image",),
)

FAIRSEQ_V2_IMPORTER = ComponentSpec(
    kind="importer",
    name="image-fairseq-v2",
    factory=f"{_PKG}.fairseq_import:ImageV2FairseqImporter",
    description="fairseq data2vec 2.0 image checkpoints (data2vec_multi, supported_modality IMAGE)",
    modalities=("image",),
)

BEIT_IMPORTER = ComponentSpec(
    kind="importer",
    name="image-data2vec-vision",
    factory=f"{_PKG}.fairseq_import:VisionBEiTImporter",
    description="data2vec_vision's own BEiT checkpoints (the released data2vec 1.0 image models; d2v import --from-fairseq)",
    modalities=("image",),
)


@hookimpl
def d2v_register(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add_modality(IMAGE)
    registry.add_component(BLOCK_MASKER)
    registry.add_component(CONV2D_DECODER)
    registry.add_component(HF_EXPORTER)
    registry.add_component(FAIRSEQ_IMPORTER)
    registry.add_component(FAIRSEQ_V2_IMPORTER)
    registry.add_component(BEIT_IMPORTER)
