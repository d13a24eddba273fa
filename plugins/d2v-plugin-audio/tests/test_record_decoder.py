"""Decoding FLAC/WAV/OGG records into clips, skipping bad ones, and batching them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from d2v_core.interfaces import SkipRecord
from d2v_core.testing import check_record_decoder

from d2v_plugin_audio.data import AudioRecordDecoder
from d2v_plugin_audio.options import AudioDataOptions


def decoder(**opts) -> AudioRecordDecoder:
    base = {"min_sample_size": 400, "max_sample_size": None, "normalize": False}
    return AudioRecordDecoder(AudioDataOptions(**{**base, **opts}))


def skip_reason(dec: AudioRecordDecoder, record: dict) -> str:
    with pytest.raises(SkipRecord) as err:
        dec.decode(record, torch.Generator().manual_seed(0))
    return err.value.reason


@pytest.mark.parametrize(
    "ext,fmt,subtype,tol",
    [("wav", "WAV", "FLOAT", 0.0), ("flac", "FLAC", "PCM_16", 1 / 32768), ("ogg", "OGG", "VORBIS", None)],
)
def test_formats_decode_to_the_written_samples(audio, ext, fmt, subtype, tol):
    samples = audio.speechlike(0.5)
    out = decoder().decode({"__key__": "a", ext: audio.encode(samples, 16000, fmt, subtype)})
    wav = out["source"]
    assert out["key"] == "a" and wav.dtype == torch.float32 and wav.dim() == 1
    assert wav.shape[0] == samples.shape[0]
    if tol is not None:
        np.testing.assert_allclose(wav.numpy(), samples[:, 0], atol=tol + 1e-7)
    else:  # lossy: the waveform is still clearly the same
        assert np.corrcoef(wav.numpy(), samples[:, 0])[0, 1] > 0.95


def test_stereo_is_averaged_to_mono(audio):
    samples = audio.speechlike(0.3, channels=2)
    wav = decoder().decode({"wav": audio.encode(samples, 16000, "WAV", "FLOAT")})["source"]
    np.testing.assert_allclose(wav.numpy(), samples.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 44100, 22050])
def test_other_rates_are_resampled_to_16k(audio, rate):
    n = int(0.4 * rate)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)[:, None]
    wav = decoder().decode({"wav": audio.encode(tone, rate, "WAV", "FLOAT")})["source"].numpy()
    assert wav.shape[0] == math.ceil(n * 16000 / rate)
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(wav.size)))
    assert np.fft.rfftfreq(wav.size, 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=5)


def test_normalisation_gives_zero_mean_unit_variance(audio):
    samples = 3 * audio.speechlike(1.0) + 0.2  # louder than written and with a DC offset
    wav = decoder(normalize=True).decode({"wav": audio.encode(samples, 16000, "WAV", "FLOAT")})["source"]
    assert abs(wav.mean().item()) < 1e-5
    assert wav.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)


def test_normalisation_uses_layer_norm_eps_like_fairseq(audio):
    # F.layer_norm(wav, wav.shape) divides by sqrt(var + 1e-5): very quiet clips stay below unit variance
    samples = 0.01 * audio.speechlike(1.0)
    wav = decoder(normalize=True).decode({"wav": audio.encode(samples, 16000, "WAV", "FLOAT")})["source"]
    x = samples[:, 0].astype(np.float64)
    expected = (x - x.mean()) / np.sqrt(x.var() + 1e-5)
    np.testing.assert_allclose(wav.numpy(), expected, atol=1e-4)
    assert wav.var(unbiased=False).item() < 0.9


def test_bad_records_are_skipped_with_a_reason(audio, clip_bytes):
    dec = decoder()
    good_wav = clip_bytes(1.0, fmt="WAV", subtype="PCM_16")
    good_flac = clip_bytes(1.0, fmt="FLAC")
    assert skip_reason(dec, {"wav": b"this is not audio at all" * 10}) == "unreadable"
    assert skip_reason(dec, {"flac": b"fLaC" + bytes(range(256)) * 4}) == "unreadable"
    assert skip_reason(dec, {"wav": good_wav[: len(good_wav) // 2]}) == "truncated"
    assert skip_reason(dec, {"flac": good_flac[: len(good_flac) // 2]}) == "truncated"
    assert skip_reason(dec, {"wav": b""}) == "empty"
    assert skip_reason(dec, {"wav": audio.encode(np.zeros((0, 1), np.float32))}) == "empty"
    assert skip_reason(dec, {"flac": audio.encode(np.zeros((16000, 1), np.float32), 16000, "FLAC")}) == "silent"
    nan = audio.speechlike(0.5)
    nan[100:110] = np.nan
    assert skip_reason(dec, {"wav": audio.encode(nan, 16000, "WAV", "FLOAT")}) == "non_finite"
    inf = audio.speechlike(0.5)
    inf[7] = np.inf
    assert skip_reason(dec, {"wav": audio.encode(inf, 16000, "WAV", "FLOAT")}) == "non_finite"
    assert skip_reason(decoder(min_sample_size=16001), {"wav": good_wav}) == "too_short"
    assert skip_reason(dec, {"txt": b"hello", "__key__": "x"}) == "no_audio"


def test_min_sample_size_is_measured_after_resampling(audio):
    eight_k = audio.encode(audio.speechlike(1.0, rate=8000), 8000, "WAV")  # 8000 samples -> 16000 at 16 kHz
    assert decoder(min_sample_size=16000).decode({"wav": eight_k})["source"].shape[0] == 16000
    assert skip_reason(decoder(min_sample_size=16001), {"wav": eight_k}) == "too_short"


def test_long_clips_are_randomly_cropped_after_normalisation(audio):
    samples = audio.speechlike(2.0)
    record = {"wav": audio.encode(samples, 16000, "WAV", "FLOAT")}
    full = torch.nn.functional.layer_norm(torch.from_numpy(samples[:, 0]), (32000,))
    dec = decoder(max_sample_size=8000, normalize=True)
    starts = set()
    for seed in range(6):
        a = dec.decode(record, torch.Generator().manual_seed(seed))["source"]
        b = dec.decode(record, torch.Generator().manual_seed(seed))["source"]
        assert torch.equal(a, b) and a.shape == (8000,)
        start = int((full - a[0]).abs().argmin())
        assert torch.allclose(full[start : start + 8000], a, atol=1e-6)
        starts.add(start)
    assert len(starts) > 1


def _samples(audio, dec, seconds):
    records = [{"__key__": f"k{i}", "wav": audio.encode(audio.speechlike(s, seed=i), 16000, "WAV", "FLOAT")} for i, s in enumerate(seconds)]
    return [dec.decode(r, torch.Generator().manual_seed(i)) for i, r in enumerate(records)]


def test_crop_batching_cuts_every_clip_to_the_shortest(audio):
    dec = decoder(batching="crop")
    samples = _samples(audio, dec, [0.5, 0.3, 0.8])
    batch = dec.collate(samples)
    assert batch["source"].shape == (3, 4800) and batch["padding_mask"] is None
    assert batch["keys"] == ["k0", "k1", "k2"]
    for row, s in zip(batch["source"], samples, strict=True):
        full = s["source"]
        windows = full.unfold(0, 4800, 1)
        assert (windows == row).all(-1).any()  # a contiguous window of the clip
    assert torch.equal(dec.collate(samples)["source"], batch["source"])  # deterministic


def test_pad_batching_pads_with_zeros_and_a_sample_mask(audio):
    dec = decoder(batching="pad")
    samples = _samples(audio, dec, [0.5, 0.3, 0.8])
    batch = dec.collate(samples)
    lengths = [8000, 4800, 12800]
    assert batch["source"].shape == (3, 12800) and batch["padding_mask"].dtype == torch.bool
    for row, mask, s, n in zip(batch["source"], batch["padding_mask"], samples, lengths, strict=True):
        assert not mask[:n].any() and mask[n:].all()
        assert torch.equal(row[:n], s["source"]) and (row[n:] == 0).all()


def test_conformance_kit(clip_bytes):
    dec = AudioRecordDecoder(AudioDataOptions(min_sample_size=4000, max_sample_size=12000, batching="pad"))
    records = [
        {"__key__": "mono16", "flac": clip_bytes(0.5)},
        {"__key__": "stereo44", "wav": clip_bytes(0.6, rate=44100, channels=2)},
        {"__key__": "ogg8", "ogg": clip_bytes(1.2, rate=8000, fmt="OGG", subtype="VORBIS")},
    ]
    batch = check_record_decoder(dec, records)
    assert batch["keys"] == ["mono16", "stereo44", "ogg8"]
    assert batch["source"].shape == (3, 12000)
    assert batch["padding_mask"].sum(-1).tolist() == [12000 - 8000, 12000 - 9600, 0]


def test_inference_decoding_keeps_whole_short_clips_and_pads():
    """Embedding and probing need every clip whole: no min_sample_size filter, no crop, padding."""
    import io

    import numpy as np
    import soundfile as sf

    from d2v_plugin_audio.data import AudioRecordDecoder
    from d2v_plugin_audio.options import AudioDataOptions

    def flac(n):
        buf = io.BytesIO()
        sf.write(buf, np.sin(np.arange(n) / 7.0).astype(np.float32), 16000, format="FLAC")
        return {"__key__": f"c{n}", "flac": buf.getvalue()}

    dec = AudioRecordDecoder(AudioDataOptions(min_sample_size=16000, max_sample_size=16000, batching="crop"))
    a, b = dec.decode_for_inference(flac(20000)), dec.decode_for_inference(flac(9000))
    assert a["source"].shape == (20000,) and b["source"].shape == (9000,)  # neither dropped nor cropped
    assert abs(float(a["source"].mean())) < 1e-5 and abs(float(a["source"].std()) - 1) < 1e-3
    batch = dec.collate_for_inference([a, b])
    assert batch["source"].shape == (2, 20000)
    assert batch["padding_mask"][1, 9000:].all() and not batch["padding_mask"][1, :9000].any()
    with pytest.raises(SkipRecord, match="too_short"):
        dec.decode_for_inference(flac(300))
