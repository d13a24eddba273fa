"""Registers the audio modality, the ``span`` and ``block-1d`` maskers the ``hf`` exporter and the fairseq importer with d2v (no torch imported here)."""

from __future__ import annotations

from d2v_core import ComponentSpec, ModalitySpec, hookimpl

D2V_PLUGIN_API_VERSION = "1.0"

_PKG = "d2v_plugin_audio"

AUDIO = ModalitySpec(
    name="audio",
    description="speech: raw 16 kHz waveform, wav2vec 2.0 conv features, data2vec v1 audio recipe",
    encoder=f"{_PKG}.encoder:build_encoder",
    encoder_options=f"{_PKG}.options:AudioEncoderOptions",
    record_decoder=f"{_PKG}.data:build_record_decoder",
    data_options=f"{_PKG}.options:AudioDataOptions",
    default_masker="span",
    presets=f"{_PKG}.presets:PRESETS",
    default_preset="tiny",
    demo_data=f"{_PKG}.demo_data:demo_data_dir",
    extensions=("flac", "wav", "ogg"),
)

SPAN_MASKER = ComponentSpec(
    kind="masker",
    name="span",
    factory=f"{_PKG}.span_masker:build_span_masker",
    options=f"{_PKG}.options:SpanMaskerOptions",
    description="fairseq compute_mask_indices spans (65% starts/10, length 10, ~49% masked, same count per row)",
    modalities=("audio",),
)

BLOCK1D_MASKER = ComponentSpec(
    kind="masker",
    name="block-1d",
    factory=f"{_PKG}.block1d_masker:build_block1d_masker",
    options=f"{_PKG}.options:Block1dMaskerOptions",
    description="data2vec 2.0 fairseq compute_block_mask_1d: 5-frame spans, exactly int(0.5*T) masked in every row",
    modalities=("audio",),
)

HF_EXPORTER = ComponentSpec(
    kind="exporter",
    name="audio-hf",
    factory=f"{_PKG}.hf_export:AudioHFExporter",
    description="transformers Data2VecAudioModel directory + Wav2Vec2FeatureExtractor config (d2v export --format hf, d2v import --from-hf)",
    modalities=("audio",),
)

FAIRSEQ_IMPORTER = ComponentSpec(
    kind="importer",
    name="audio-fairseq",
    factory=f"{_PKG}.fairseq_import:AudioFairseqImporter",
    description="fairseq data2vec 1.0 audio checkpoints (data2vec_audio; d2v import --from-fairseq)",
    modalities=("audio",),
)

FAIRSEQ_V2_IMPORTER = ComponentSpec(
    kind="importer",
    name="audio-fairseq-v2",
    factory=f"{_PKG}.fairseq_import:AudioV2FairseqImporter",
    description="fairseq data2vec 2.0 audio checkpoints (data2vec_multi, supported_modality AUDIO)",
    modalities=("audio",),
)


@hookimpl
def d2v_register(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add_modality(AUDIO)
    registry.add_component(SPAN_MASKER)
    registry.add_component(BLOCK1D_MASKER)
    registry.add_component(HF_EXPORTER)
    registry.add_component(FAIRSEQ_IMPORTER)
    registry.add_component(FAIRSEQ_V2_IMPORTER)
