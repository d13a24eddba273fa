"""Target normalisers (pure functions behind the ``Normalizer`` interface)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from d2v_core.interfaces import Normalizer

EPS = 1e-5  # fairseq and BEiT both use the F.instance_norm / F.layer_norm default


def instance_norm(x: Tensor, padding_mask: Tensor | None = None, eps: float = EPS) -> Tensor:
    """Normalise each channel over time, per sample: (B, T, D) -> (B, T, D).

    Without padding this equals ``F.instance_norm(x.transpose(1, 2)).transpose(1, 2)`` (fairseq).
    With padding, statistics use the valid steps only and padded steps come out as 0 (fairseq
    includes pads, but crops its pretraining batches so that it has none).
    """
    if padding_mask is None:  # (asking whether any step is padded would wait for the device)
        return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)
    valid = (~padding_mask).unsqueeze(-1).to(x.dtype)
    count = valid.sum(1, keepdim=True).clamp_min(1.0)
    mean = (x * valid).sum(1, keepdim=True) / count
    var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps) * valid


def layer_norm(x: Tensor, eps: float = EPS) -> Tensor:
    """LayerNorm over the last dim without affine parameters."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class IdentityNorm(Normalizer):
    def __call__(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        return x


class InstanceNorm(Normalizer):
    def __call__(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        return instance_norm(x, padding_mask)


class LayerNormNoAffine(Normalizer):
    def __call__(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        return layer_norm(x)
