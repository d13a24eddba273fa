"""Registration of the text modality (hooks only; no torch at import time)."""

from __future__ import annotations

from pathlib import Path

from d2v_core import ComponentSpec, ModalitySpec, hookimpl

D2V_PLUGIN_API_VERSION = "1.0"

_PKG = "d2v_plugin_text"
MODALITY = "text"
BERT_MASKER = "bert"
SPAN_MASKER = "text-span"  # "span" is taken by the audio plugin (masker names are global)
RANDOM_MASKER = "text-random"  # "random" is taken by the example plugin (d2v-plugin-example)


def demo_data() -> str:
    """The demo corpus: a JSONL file (2,000 short English texts, one ``{"text": ...}`` document
    per line), each line one record; the demo tokenizer was trained on it."""
    return str(Path(__file__).parent / "demo" / "corpus.jsonl")


@hookimpl
def d2v_register(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add_modality(
        ModalitySpec(
            name=MODALITY,
            encoder=f"{_PKG}.encoder:build_encoder",
            encoder_options=f"{_PKG}.options:TextEncoderOptions",
            record_decoder=f"{_PKG}.data:build_record_decoder",
            data_options=f"{_PKG}.options:TextDataOptions",
            default_masker=BERT_MASKER,
            presets=f"{_PKG}.presets:PRESETS",
            description="data2vec text (RoBERTa embeddings, sentencepiece tokenizer)",
            default_preset="tiny",
            demo_data=f"{_PKG}.plugin:demo_data",
            extensions=("txt",),
        )
    )
    registry.add_component(
        ComponentSpec(
            kind="masker",
            name=BERT_MASKER,
            factory=f"{_PKG}.bert_masker:build_bert_masker",
            options=f"{_PKG}.options:BertMaskOptions",
            description="15% of the tokens, uniformly (the data2vec paper; 80/10/10 in the encoder)",
            modalities=(MODALITY,),
        )
    )
    registry.add_component(
        ComponentSpec(
            kind="masker",
            name=SPAN_MASKER,
            factory=f"{_PKG}.span_masker:build_span_masker",
            options=f"{_PKG}.options:SpanMaskOptions",
            description="4-token spans from 35%/4 of the tokens, about 31% masked (fairseq's released config)",
            modalities=(MODALITY,),
        )
    )
    registry.add_component(
        ComponentSpec(
            kind="masker",
            name=RANDOM_MASKER,
            factory=f"{_PKG}.random_masker:build_random_masker",
            options=f"{_PKG}.options:RandomMaskOptions",
            description="data2vec 2.0 (MAE random_masking): exactly L - int(0.52 L) tokens of every row, uniformly",
            modalities=(MODALITY,),
        )
    )
    registry.add_component(
        ComponentSpec(
            kind="exporter",
            name="text-hf",
            factory=f"{_PKG}.hf_export:TextHFExporter",
            description="transformers Data2VecTextModel + fast tokenizer (d2v export --format hf / d2v import --from-hf)",
            modalities=(MODALITY,),
        )
    )
    registry.add_component(
        ComponentSpec(
            kind="importer",
            name="text-fairseq",
            factory=f"{_PKG}.fairseq_import:TextFairseqImporter",
            description="fairseq data2vec 1.0 text checkpoints (data2vec_text; d2v import --from-fairseq)",
            modalities=(MODALITY,),
        )
    )
    registry.add_component(
        ComponentSpec(
            kind="importer",
            name="text-fairseq-v2",
            factory=f"{_PKG}.fairseq_import:TextV2FairseqImporter",
            description="fairseq data2vec 2.0 text checkpoints (data2vec_multi, supported_modality TEXT)",
            modalities=(MODALITY,),
        )
    )


@hookimpl
def d2v_cli_commands(app) -> None:  # type: ignore[no-untyped-def]
    from d2v_plugin_text import train_tokenizer_cmd

    app.command("train-tokenizer")(train_tokenizer_cmd.train_tokenizer)
