"""Shared helpers: small synthetic clips written with soundfile into bytes."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf


def speechlike(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A few harmonics with a syllable-rate envelope plus noise: (frames, channels) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    out = np.stack([0.3 * voiced + 0.01 * rng.standard_normal(t.size) * (c + 1) for c in range(channels)], axis=1)
    return out.astype(np.float32)


def encode(samples: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.fixture
def audio():
    """Namespace with ``speechlike(seconds, rate, channels, seed)`` and ``encode(samples, rate, fmt, subtype)``."""
    return SimpleNamespace(speechlike=speechlike, encode=encode)


@pytest.fixture
def clip_bytes():
    """``clip_bytes(seconds, rate=16000, channels=1, fmt="WAV", subtype=None, seed=0) -> bytes``."""

    def make(seconds: float, rate: int = 16000, channels: int = 1, fmt: str = "WAV", subtype: str | None = None, seed: int = 0) -> bytes:
        return encode(speechlike(seconds, rate, channels, seed), rate, fmt, subtype)

    return make
