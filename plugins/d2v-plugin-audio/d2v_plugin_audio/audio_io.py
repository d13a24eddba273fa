"""Reading audio bytes into a mono waveform at the training sample rate (soundfile + torchaudio).

Every problem with a file becomes :class:`SkipRecord` with a short reason, so that the core
counts and skips the record instead of stopping:

- ``empty``: no bytes, or a readable file with no samples;
- ``unreadable``: not an audio file soundfile can open;
- ``truncated``: the header promises more audio than the file holds, or decoding stops mid-file;
- ``non_finite``: NaN or infinite samples;
- ``silent``: every sample is zero;
- ``too_long``: the header's duration exceeds the size limit (checked before decoding);
- ``out_of_range``: a finite sample of absurd magnitude (normalising would turn the clip into
  zeros; float audio is about [-1, 1], integer formats decode to it).
"""

from __future__ import annotations

import io
import re

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from d2v_core.interfaces import SkipRecord

# libsndfile reports a WAV data chunk that is longer than the file as "data : N (should be M)".
_SHORT_DATA_CHUNK = re.compile(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)")
# Streaming writers put 0 or 0xFFFFFFFF in the size fields; such files are complete.
_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}
#: Larger sample magnitudes are not audio (and overflow float32 when squared for normalising).
MAX_AMPLITUDE = 1e6


def _declared_longer_than_file(info: str) -> bool:
    match = _SHORT_DATA_CHUNK.search(info)
    if match is None:
        return False
    declared, present = int(match.group(1)), int(match.group(2))
    return declared not in _UNKNOWN_SIZES and present < declared


def read_audio(data: bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode ``data`` to float32 samples (frames, channels) and the file's sample rate; a file
    whose header declares more than ``max_seconds`` is refused before it is decoded."""
    if len(data) == 0:
        raise SkipRecord("empty", "0 bytes")
    try:
        handle = sf.SoundFile(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types for bad input
        raise SkipRecord("unreadable", str(exc).split(": ", 1)[-1][:200]) from None
    with handle:
        if _declared_longer_than_file(handle.extra_info):
            raise SkipRecord("truncated", "the file holds less audio than its header declares")
        if max_seconds is not None and handle.samplerate > 0 and handle.frames / handle.samplerate > max_seconds:
            raise SkipRecord("too_long", f"{handle.frames / handle.samplerate:.0f} s, more than max_duration_s={max_seconds:g}")
        try:
            samples = handle.read(dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001
            raise SkipRecord("truncated", f"decoding stopped: {str(exc)[:200]}") from None
        return samples, int(handle.samplerate)


def to_mono(samples: np.ndarray) -> Tensor:
    """(frames, channels) -> (frames,) by averaging channels (fairseq ``feats.mean(-1)``)."""
    return torch.from_numpy(np.ascontiguousarray(samples)).mean(dim=1)


def load_waveform(data: bytes, sample_rate: int, max_seconds: float | None = None) -> Tensor:
    """Decode, check, down-mix and resample: a float32 mono waveform at ``sample_rate``."""
    samples, file_rate = read_audio(data, max_seconds)
    if samples.shape[0] == 0:
        raise SkipRecord("empty", "the file has no samples")
    if not np.isfinite(samples).all():
        raise SkipRecord("non_finite", "NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak > MAX_AMPLITUDE:
        raise SkipRecord("out_of_range", f"a sample of magnitude {peak:.3g}: not audio (float samples are about [-1, 1])")
    wav = to_mono(samples)
    if not bool(wav.abs().max() > 0):
        raise SkipRecord("silent", "every sample is zero")
    if file_rate != sample_rate:
        wav = AF.resample(wav, file_rate, sample_rate)
    return wav
