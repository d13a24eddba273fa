"""Registers the ``inverse-block`` masker with d2v (no torch imported here)."""

from __future__ import annotations

from d2v_core import ComponentSpec, hookimpl

D2V_PLUGIN_API_VERSION = "1.0"

_PKG = "d2v_plugin_maskers"

INVERSE_BLOCK_MASKER = ComponentSpec(
    kind="masker",
    name="inverse-block",
    factory=f"{_PKG}.inverse_block_masker:build_inverse_block_masker",
    options=f"{_PKG}.options:InverseBlockMaskOptions",
    description="data2vec 2.0 inverse block masking: visible 3x3 blocks, exactly 157 of 196 patches masked at 14x14",
    modalities=("image",),
)


@hookimpl
def d2v_register(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add_component(INVERSE_BLOCK_MASKER)
