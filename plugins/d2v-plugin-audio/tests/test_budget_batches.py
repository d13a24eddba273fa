"""Audio under a token budget (data.max_tokens), as fairseq's RawAudioDataset + batch_by_size:
lengths from the header or the manifest, clips shorter than min_sample_size left out, batches of
similar length within the sample budget, each cropped to its shortest clip."""

from __future__ import annotations

import pytest

from d2v_core.data.loader import TrainLoader
from d2v_core.data.sources import resolve_source

from d2v_plugin_audio.data import AudioRecordDecoder
from d2v_plugin_audio.options import AudioDataOptions


@pytest.mark.parametrize("rate, seconds", [(16000, 0.73), (8000, 0.5), (22050, 0.31), (44100, 1.0)])
def test_record_length_from_the_header_equals_the_decoded_length(audio, rate, seconds):
    dec = AudioRecordDecoder(AudioDataOptions(min_sample_size=0, max_sample_size=None))
    record = {"wav": audio.encode(audio.speechlike(seconds, rate, channels=2), rate), "__key__": "a"}
    assert dec.record_length(record) == dec.decode(record)["source"].shape[0]


def test_manifest_n_samples_and_bounds():
    dec = AudioRecordDecoder(AudioDataOptions(min_sample_size=32000, max_sample_size=320000))
    assert dec.length_from_meta({"n_samples": 12345}) == 12345
    assert dec.length_from_meta({"n_samples": ""}) is None and dec.length_from_meta({}) is None
    assert dec.length_bounds() == (32000, 320000)


def test_budget_batches_hold_similar_clips_cropped_to_the_shortest(tmp_path, audio):
    seconds = [0.2, 0.35, 0.5, 0.55, 0.6, 0.8, 0.82, 0.85, 1.0, 1.1, 1.2, 1.5, 1.6, 1.9, 2.4, 0.1]
    for i, s in enumerate(seconds):
        (tmp_path / f"c{i:02d}.wav").write_bytes(audio.encode(audio.speechlike(s, 16000, seed=i)))
    opts = AudioDataOptions(min_sample_size=3200, max_sample_size=24000)  # 0.2 s .. 1.5 s
    loader = TrainLoader(resolve_source(str(tmp_path), ("wav",)), AudioRecordDecoder(opts), batch_size=1, max_tokens=64000, seed=0)
    batches = list(loader.iter_epoch(0))
    kept = sorted(k for b in batches for k in b["keys"])
    assert kept == sorted(f"c{i:02d}" for i, s in enumerate(seconds) if s * 16000 >= 3200)  # 0.1 s left out
    clipped = {f"c{i:02d}": min(int(s * 16000), 24000) for i, s in enumerate(seconds)}
    for b in batches:
        sizes = [clipped[k] for k in b["keys"]]
        assert len(sizes) * max(sizes) <= 64000
        assert b["source"].shape == (len(sizes), min(sizes)) and b["padding_mask"] is None
    # fairseq's longest-first fill: the 8 longest clipped clips (1.5 s = 24000) go 2 per batch
    assert sorted(len(b["keys"]) for b in batches if max(clipped[k] for k in b["keys"]) == 24000) == [2, 2]


@pytest.mark.parametrize("preset, budget", [("base", 3_800_000), ("large", 3_800_000), ("v2-base", 1_000_000),
                                            ("tiny", None), ("v2-tiny", None)])
def test_presets_use_fairseqs_sample_budget_per_gpu(preset, budget):
    # fairseq base_librispeech.yaml / v2 base_audio_only_task.yaml: dataset.max_tokens per GPU;
    # the tiny presets keep 8 counted clips for 2 CPU cores
    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import plugin_context

    from d2v_plugin_audio import plugin as audio_plugin

    with plugin_context(audio_plugin) as loaded:
        cfg = resolve_config(loaded.registry, "audio", preset)
    assert cfg.data.max_tokens == budget
    assert budget is not None or cfg.data.batch_size == 8


def test_audio_shards_buffer_encoded_records_and_decode_each_once(tmp_path, audio):
    import io
    import tarfile

    seconds = [0.3, 0.45, 0.5, 0.7, 0.72, 0.9, 1.0, 1.1, 1.3, 1.4, 0.05, 0.6]
    for s in range(2):
        with tarfile.open(tmp_path / f"a-{s:06d}.tar", "w") as tf:
            for i in range(s, len(seconds), 2):
                data = audio.encode(audio.speechlike(seconds[i], 16000, seed=i))
                info = tarfile.TarInfo(f"c{i:02d}.wav")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

    class Counting(AudioRecordDecoder):
        decoded: list = []

        def decode(self, record, generator=None):
            self.decoded.append(record["__key__"])
            return super().decode(record, generator)

    dec = Counting(AudioDataOptions(min_sample_size=3200, max_sample_size=16000))
    src = resolve_source(str(tmp_path / "a-{000000..000001}.tar"), ("wav",))
    loader = TrainLoader(src, dec, batch_size=1, max_tokens=40000, bucket_window=6, seed=0)
    batches = list(loader.iter_epoch(0))
    usable = sorted(f"c{i:02d}" for i, s in enumerate(seconds) if s * 16000 >= 3200)
    assert sorted(k for b in batches for k in b["keys"]) == usable
    assert sorted(Counting.decoded) == usable  # the 0.05 s clip is refused from its header, never decoded
    assert loader.stats.counts["too_short"] == 1
    clipped = {f"c{i:02d}": min(int(s * 16000), 16000) for i, s in enumerate(seconds)}
    for b in batches:
        sizes = [clipped[k] for k in b["keys"]]
        assert len(sizes) * max(sizes) <= 40000 and b["source"].shape == (len(sizes), min(sizes))
