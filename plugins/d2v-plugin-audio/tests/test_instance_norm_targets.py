"""Audio targets use the core's instance norm: each channel over time, per utterance (fairseq
``F.instance_norm`` on B x C x T), checked here against NumPy by hand."""

from __future__ import annotations

import numpy as np
import torch

from d2v_core.model.normalizers import instance_norm


def audio_like(batch=3, steps=120, dim=16, seed=0) -> np.ndarray:
    """FFN-output-like features: per-channel offsets and scales that differ a lot between
    channels, slow drifts over time and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[None, :, None]
    offset = rng.normal(0, 5, (batch, 1, dim))
    scale = np.exp(rng.normal(0, 1, (batch, 1, dim)))
    drift = np.sin(2 * np.pi * t / rng.uniform(20, 80, (1, 1, dim)))
    return (offset + scale * (drift + 0.3 * rng.standard_normal((batch, steps, dim)))).astype(np.float32)


def by_hand(x: np.ndarray, valid: np.ndarray | None = None, eps: float = 1e-5) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    for b in range(x.shape[0]):
        keep = slice(None) if valid is None else valid[b]
        for d in range(x.shape[2]):
            col = x[b, keep, d].astype(np.float64)
            mean = col.mean()
            var = ((col - mean) ** 2).mean()  # biased variance over time
            out[b, keep, d] = (col - mean) / np.sqrt(var + eps)
    return out


def test_instance_norm_normalises_each_channel_over_time():
    x = audio_like()
    got = instance_norm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, by_hand(x), atol=1e-4)
    np.testing.assert_allclose(got.mean(axis=1), 0.0, atol=1e-4)
    raw_var = x.astype(np.float64).var(axis=1)
    np.testing.assert_allclose(got.var(axis=1), raw_var / (raw_var + 1e-5), atol=1e-4)  # unit up to eps
    # not a per-step LayerNorm over channels (the arxyzan mistake)
    assert np.abs(got.mean(axis=2)).max() > 0.1


def test_instance_norm_ignores_padded_steps():
    x = audio_like(batch=2, steps=100)
    lengths = [100, 63]
    valid = np.arange(100)[None, :] < np.array(lengths)[:, None]
    got = instance_norm(torch.from_numpy(x), torch.from_numpy(~valid)).numpy()
    np.testing.assert_allclose(got, by_hand(x, valid), atol=1e-4)
    assert np.all(got[1, 63:] == 0.0)
