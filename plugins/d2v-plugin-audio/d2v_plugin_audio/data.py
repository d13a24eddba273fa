"""Audio records -> samples -> batches (fairseq ``RawAudioDataset`` semantics).

A sample is ``{"source": (L,) float32, "key": str, "crop_offset": float in [0, 1)}``; the
offset is drawn in :meth:`AudioRecordDecoder.decode` from the caller's generator so that
:meth:`AudioRecordDecoder.collate` (which gets no generator) is deterministic too.
A batch is ``{"source": (B, L) float32, "padding_mask": (B, L) bool or None, "keys": [...]}``.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import soundfile as sf
import torch
import torch.nn.functional as F

from d2v_core import Batch, BuildContext, DataError, RecordDecoder, SkipRecord, crop_offset, crop_window, pad_sequences

from d2v_plugin_audio.audio_io import load_waveform
from d2v_plugin_audio.options import AudioDataOptions

EXTENSIONS = ("flac", "wav", "ogg")
#: The shortest clip the conv feature extractor turns into one frame (its receptive field, 25 ms).
MIN_INFERENCE_SAMPLES = 400


class AudioRecordDecoder(RecordDecoder):
    """Decodes FLAC/WAV/OGG records (any rate, any channel count) into normalised 16 kHz mono clips."""

    extensions = EXTENSIONS

    def __init__(self, options: AudioDataOptions | None = None) -> None:
        self.options = options or AudioDataOptions()

    def _payload(self, record: Mapping[str, Any]) -> bytes:
        by_ext = {str(k).lower().lstrip("."): v for k, v in record.items() if not str(k).startswith("__")}
        for ext in self.extensions:
            if ext in by_ext:
                value = by_ext[ext]
                return bytes(value) if not isinstance(value, bytes) else value
        raise SkipRecord("no_audio", f"record has none of the extensions {', '.join(self.extensions)}")

    def decode(self, record: Mapping[str, Any], generator: torch.Generator | None = None) -> dict:
        opts = self.options
        wav = load_waveform(self._payload(record), opts.sample_rate, opts.max_duration_s)
        if wav.shape[0] < max(opts.min_sample_size, 1):
            raise SkipRecord("too_short", f"{wav.shape[0]} samples < min_sample_size {opts.min_sample_size}")
        if opts.normalize:
            # fairseq normalises the whole utterance before cropping
            wav = F.layer_norm(wav, wav.shape)
        if opts.max_sample_size is not None:
            wav = crop_window(wav, opts.max_sample_size, crop_offset(generator))
        return {"source": wav.contiguous(), "key": str(record.get("__key__", "")), "crop_offset": crop_offset(generator)}

    def decode_for_inference(self, record: Mapping[str, Any]) -> dict:
        """The whole clip, normalised: no random crop and no ``min_sample_size`` (that is a
        training filter); only clips too short for one frame are skipped."""
        wav = load_waveform(self._payload(record), self.options.sample_rate, self.options.max_duration_s)
        if wav.shape[0] < MIN_INFERENCE_SAMPLES:
            raise SkipRecord("too_short", f"{wav.shape[0]} samples < {MIN_INFERENCE_SAMPLES} (one frame)")
        if self.options.normalize:
            wav = F.layer_norm(wav, wav.shape)
        return {"source": wav.contiguous(), "key": str(record.get("__key__", ""))}

    def collate_for_inference(self, samples: list[dict]) -> Batch:
        """Pad (with a padding mask) whatever ``batching`` says: embeddings need every frame."""
        padded, padding_mask = pad_sequences([s["source"] for s in samples], 0.0)
        return {"source": padded, "padding_mask": padding_mask, "keys": [s.get("key", "") for s in samples]}

    def collate(self, samples: list[dict]) -> Batch:
        if not samples:
            raise DataError("cannot collate an empty list of audio samples")
        sources = [s["source"] for s in samples]
        keys = [s.get("key", "") for s in samples]
        if self.options.batching == "crop":
            size = min(int(w.shape[0]) for w in sources)
            cropped = [crop_window(w, size, float(s.get("crop_offset", 0.0))) for w, s in zip(sources, samples, strict=True)]
            return {"source": torch.stack(cropped), "padding_mask": None, "keys": keys}
        padded, padding_mask = pad_sequences(sources, 0.0)
        return {"source": padded, "padding_mask": padding_mask, "keys": keys}


    # -- lengths for data.max_tokens (fairseq: sizes from the manifest, min/max_sample_size) ------
    def record_length(self, record: Mapping[str, Any]) -> int:
        """Samples at ``sample_rate`` from the file header (no decoding); a file whose header
        cannot be read is decoded (and skipped when that fails too)."""
        try:
            info = sf.info(io.BytesIO(self._payload(record)))
            frames, rate = int(info.frames), int(info.samplerate)
        except SkipRecord:
            raise
        except Exception:  # noqa: BLE001 - let the full decoder say what is wrong
            return int(load_waveform(self._payload(record), self.options.sample_rate).shape[0])
        if frames <= 0:
            raise SkipRecord("empty", "the file has no samples")
        # torchaudio's resample returns ceil(frames * new / old) samples
        return frames if rate == self.options.sample_rate else -(-frames * self.options.sample_rate // rate)

    def sample_length(self, sample: dict) -> int:
        return int(sample["source"].shape[0])

    def length_from_meta(self, meta: Mapping[str, Any]) -> int | None:
        """``n_samples`` of a fairseq ``.tsv`` manifest (or a CSV/JSONL column of that name),
        at the training rate as fairseq assumes."""
        value = meta.get("n_samples")
        try:
            return int(value) if value is not None and str(value).strip() != "" else None
        except (TypeError, ValueError):
            return None

    def length_bounds(self) -> tuple[int, int | None]:
        return self.options.min_sample_size, self.options.max_sample_size

    def length_fingerprint(self) -> str:
        return f"audio:{self.options.sample_rate}"


def build_record_decoder(options: AudioDataOptions, encoder: object, ctx: BuildContext) -> AudioRecordDecoder:
    """Factory named by the audio ModalitySpec (the data options alone decide)."""
    return AudioRecordDecoder(options)
