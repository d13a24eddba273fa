"""Registration: what this plugin provides. No torch import here, so discovery stays fast."""

from __future__ import annotations

from pathlib import Path

from d2v_core import ComponentSpec, ModalitySpec, hookimpl

D2V_PLUGIN_API_VERSION = "1.0"


def demo_data() -> Path:
    return Path(__file__).parent / "demo"


@hookimpl
def d2v_register(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add_modality(
        ModalitySpec(
            name="vectors",
            description="sequences of feature vectors stored as .npy arrays (T, F)",
            encoder="d2v_plugin_example.encoder:build_encoder",
            encoder_options="d2v_plugin_example.options:VectorEncoderOptions",
            record_decoder="d2v_plugin_example.data:build_record_decoder",
            data_options="d2v_plugin_example.options:VectorDataOptions",
            default_masker="random",
            presets="d2v_plugin_example.presets:PRESETS",
            default_preset="tiny",
            demo_data=demo_data,
            extensions=("npy",),
        )
    )
    registry.add_component(
        ComponentSpec(
            kind="masker",
            name="random",
            factory="d2v_plugin_example.masking:RandomMasker",
            options="d2v_plugin_example.options:RandomMaskerOptions",
            description="an exact fraction of each row's steps, chosen uniformly",
        )
    )
