"""data2vec targets: the mean of the teacher's top-K normalised layer outputs (a pure function)."""

from __future__ import annotations

from torch import Tensor

from d2v_core.interfaces import Normalizer


def build_targets(
    layers: list[Tensor],
    layer_norm: Normalizer,
    post_norm: Normalizer,
    padding_mask: Tensor | None = None,
) -> Tensor:
    """``post_norm(mean_k(layer_norm(L_k)))`` in fp32, for layers of shape (B, T, D)."""
    if not layers:
        raise ValueError("no teacher layers to build targets from")
    y = layer_norm(layers[0].float(), padding_mask)
    for layer in layers[1:]:
        y = y + layer_norm(layer.float(), padding_mask)
    y = y / len(layers)
    return post_norm(y, padding_mask)
