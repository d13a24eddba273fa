"""Guarantee 2 (continued): every record has a size limit checked before it is decoded, every
data-layer exception is a counted skip, and no input blocks or multiplies the data: FIFOs,
symlink loops, invalid UTF-8, absurd samples, decoders that raise ``SystemExit``, all-junk data,
and tar members named ``../x`` or ``/x``."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from d2v_core.data.loader import TrainLoader
from d2v_core.data.sources import resolve_source
from d2v_core.errors import DataError
from d2v_core.interfaces import RecordDecoder, SkipRecord


class ValueDecoder(RecordDecoder):
    """``.npy`` records holding one number; < 0 raises the exception ``RAISE[-value]``."""

    extensions = ("npy",)

    def __init__(self) -> None:
        self.calls = 0

    def decode(self, record, generator=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        value = int(np.load(io.BytesIO(record["npy"]))[0])
        if value < 0:
            raise RAISE[-value]
        return {"key": record["__key__"], "value": value}

    def collate(self, samples):  # type: ignore[no-untyped-def]
        return {"keys": [s["key"] for s in samples], "value": torch.tensor([s["value"] for s in samples])}


class PluginsOwnBaseException(BaseException):
    pass


RAISE = {1: SystemExit(0), 2: SystemExit(3), 3: PluginsOwnBaseException("plugin"), 4: SkipRecord("junk")}


def write_values(folder: Path, values: list[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(values):
        np.save(folder / f"r{i:04d}.npy", np.array([v]))
    return folder


def all_values(loader: TrainLoader) -> list[int]:
    return sorted(int(v) for b in loader.iter_epoch(0) for v in b["value"])


@pytest.mark.parametrize("workers", [0, 2])
def test_systemexit_and_a_plugins_own_baseexception_in_a_decoder_are_counted(tmp_path, workers):
    values = [10, -1, 11, -2, 12, -3, 13, 14]
    loader = TrainLoader(str(write_values(tmp_path / "d", values)), ValueDecoder(), batch_size=1, num_workers=workers,
                         shuffle_buffer=0)
    assert all_values(loader) == [10, 11, 12, 13, 14]
    assert dict(loader.stats.counts) == {"error:SystemExit": 2, "error:PluginsOwnBaseException": 1}


def test_all_junk_data_aborts_after_the_max_bad_fraction_window_not_the_epoch(tmp_path):
    decoder = ValueDecoder()
    loader = TrainLoader(str(write_values(tmp_path / "d", [-4] * 1000)), decoder, batch_size=4, shuffle_buffer=0,
                         max_bad_fraction=0.5)
    with pytest.raises(DataError, match=r"100% of records are unusable"):
        list(loader.iter_epoch(0))
    assert decoder.calls <= 200  # the window (100 records) plus one shipment, not all 1000


def _load_in_thread(fn, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    """Run ``fn`` and fail (instead of hanging the suite) when it blocks."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "reading the data blocked"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_among_the_data_is_counted_never_opened_for_reading(tmp_path):
    folder = write_values(tmp_path / "d", [10, 11, 12])
    os.mkfifo(folder / "x.npy")  # nobody ever writes: open() or read() would wait forever
    os.mkfifo(folder / "y.tar")
    source = resolve_source(str(folder), ("npy",))
    loader = TrainLoader(source, ValueDecoder(), batch_size=1, shuffle_buffer=0)
    assert _load_in_thread(lambda: all_values(loader)) == [10, 11, 12]
    assert dict(loader.stats.counts) == {"not_a_regular_file": 1}
    assert loader.stats.examples[0][2].startswith("not_a_regular_file: ") and "FIFO" in loader.stats.examples[0][2]


def test_symlink_loops_and_links_to_a_folder_add_no_records(tmp_path):
    folder = write_values(tmp_path / "d", list(range(10, 20)))
    (folder / "sub").mkdir()
    np.save(folder / "sub" / "deep.npy", np.array([20]))
    os.symlink(".", folder / "self")  # what turned 10 files into 410 records
    os.symlink("..", folder / "sub" / "up")  # a loop through the parent
    os.symlink(folder / "r0000.npy", folder / "alias.npy")  # the same file under another name
    source = _load_in_thread(lambda: resolve_source(str(folder), ("npy",)))
    assert len(source.entries) == 11
    assert len({os.path.realpath(e.path) for e in source.entries}) == 11


@pytest.mark.parametrize("kind", ["jsonl", "txt"])
def test_invalid_utf8_lines_are_counted_not_crashing_nor_replaced(tmp_path, kind):
    from d2v_plugin_text.data import TextRecordDecoder
    from d2v_plugin_text.tokenizer import load_tokenizer

    lines = ["first good line of text", "second good line", b"bad \xff\xfe bytes".decode("latin-1"), "third good"]
    path = tmp_path / f"corpus.{kind}"
    with open(path, "wb") as f:
        for i, line in enumerate(lines):
            raw = line.encode("latin-1") if i == 2 else line.encode("utf-8")
            if kind == "jsonl":
                raw = b'{"text": "' + raw + b'"}' if i == 2 else json.dumps({"text": line}).encode("utf-8")
            f.write(raw + b"\n")
    source = resolve_source(str(path), ("txt",))
    loader = TrainLoader(source, TextRecordDecoder(load_tokenizer(None), block_size=64), batch_size=1, shuffle_buffer=0)
    docs = sorted(doc for b in loader.iter_epoch(0) for row in b["keys"] for doc in row.split("+"))  # rows pack documents
    assert docs == ["000000001", "000000002", "000000004"]
    assert dict(loader.stats.counts) == {"invalid_utf8": 1}
    assert "line 3: not UTF-8" in loader.stats.examples[0][2]


def test_a_huge_text_document_is_cut_to_the_size_limit_before_tokenizing_and_counted(tmp_path, monkeypatch):
    from d2v_plugin_text.data import TextRecordDecoder
    from d2v_plugin_text.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    decoder = TextRecordDecoder(tok, block_size=64, max_doc_blocks=4)  # limit: 4 * 63 = 252 tokens
    lengths: list[int] = []
    real = tok.encode
    monkeypatch.setattr(tok, "encode", lambda text: lengths.append(len(text)) or real(text))
    huge = ("the quick brown fox jumps over the lazy dog " * 120_000).encode()  # one 5 MB line
    sample = decoder.decode({"__key__": "book", "txt": huge})
    assert len(sample["tokens"]) == 252 and sample["tokens"][-1] == tok.eos_id and sample["_note"] == "truncated"
    assert lengths == [252 * TextRecordDecoder.CHARS_PER_TOKEN]  # only the prefix was tokenized
    batch = decoder.collate([sample, decoder.decode({"__key__": "short", "txt": b"a short one"})])
    assert batch["tokens"].shape[0] <= 4 + 1  # at most max_doc_blocks rows for the document
    short = decoder.decode({"__key__": "s", "txt": b"a short one"})
    assert "_note" not in short

    (tmp_path / "c.txt").write_bytes(b"first line\n" + huge + b"\nthird line\n")
    loader = TrainLoader(resolve_source(str(tmp_path / "c.txt"), ("txt",)), decoder, batch_size=1, shuffle_buffer=0)
    rows = list(loader.iter_epoch(0))  # one row per batch: 1 + the cut document's 4 rows + 1
    assert len(rows) == 1 + 4 + 1 and sum(r["keys"] == ["000000002"] for r in rows) == 4
    assert dict(loader.stats.notes) == {"truncated": 1} and loader.stats.bad == 0
    assert loader.stats.state_dict()["notes"] == {"truncated": 1}


def test_pack_rows_splits_a_long_document_exactly():
    from d2v_plugin_text.packing import pack_rows

    doc = list(range(3, 3 + 100_003))
    rows = pack_rows([doc, [7, 8]], block_size=10, bos_id=0)
    assert all(r.ids[0] == 0 for r in rows)
    assert [t for r in rows for t in r.ids[1:]] == doc + [7, 8]
    assert [len(r.ids) for r in rows[:-1]] == [10] * (100_003 // 9)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns at open; we refuse
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(monkeypatch):
    from PIL import Image, ImageFile

    from d2v_plugin_image.image_io import decode_image

    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")  # 144 Mpx; ~3 GB as decoded RGB
    loads: list = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or real(self))
    with pytest.raises(SkipRecord) as info:
        decode_image(buf.getvalue(), "big.png", max_pixels=40_000_000)
    assert info.value.reason == "too_large" and "12000x12000" in info.value.detail
    assert loads == []  # not one pixel decoded
    small = io.BytesIO()
    Image.new("RGB", (32, 24)).save(small, format="PNG")
    assert decode_image(small.getvalue(), "small.png", max_pixels=40_000_000).size == (32, 24)


def _wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_audio_over_the_duration_limit_is_refused_from_its_header(monkeypatch):
    import soundfile as sf

    from d2v_plugin_audio.data import AudioRecordDecoder
    from d2v_plugin_audio.options import AudioDataOptions

    reads: list = []
    real = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, *a, **k: reads.append(1) or real(self, *a, **k))
    decoder = AudioRecordDecoder(AudioDataOptions(max_duration_s=2.0, min_sample_size=100, max_sample_size=None))
    long = _wav(np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 3).astype(np.float32))
    with pytest.raises(SkipRecord) as info:
        decoder.decode({"__key__": "k", "wav": long})
    assert info.value.reason == "too_long" and reads == []
    ok = _wav(np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32))
    assert decoder.decode({"__key__": "k", "wav": ok})["source"].shape == (16000,)


def test_a_finite_but_absurd_sample_is_counted_not_turned_into_silence():
    from d2v_plugin_audio.data import AudioRecordDecoder
    from d2v_plugin_audio.options import AudioDataOptions

    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    samples[100] = 3e38  # finite float32; the variance overflows and normalising gave all zeros
    decoder = AudioRecordDecoder(AudioDataOptions(min_sample_size=100, max_sample_size=None))
    with pytest.raises(SkipRecord) as info:
        decoder.decode({"__key__": "k", "wav": _wav(samples)})
    assert info.value.reason == "out_of_range" and "3e+38" in info.value.detail


def test_make_shards_never_writes_parent_or_absolute_member_names(tmp_path, example_plugins, cli):
    src = tmp_path / "src.tar"
    with tarfile.open(src, "w") as tar:
        for name in ("../../escape.npy", "/etc/abs.npy", "ok/./fine.npy"):
            buf = io.BytesIO()
            np.save(buf, np.zeros((8, 16), np.float32))
            info = tarfile.TarInfo(name)
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    code, _, err = cli(["make-shards", str(src), str(tmp_path / "out"), "--modality", "vectors"])
    assert code == 0, err
    names = [m for shard in sorted((tmp_path / "out").glob("*.tar")) for m in tarfile.open(shard).getnames()]
    assert sorted(names) == ["escape.npy", "etc/abs.npy", "ok/fine.npy"]


@pytest.mark.slow
def test_a_5mb_line_in_a_text_corpus_trains_and_is_counted(tmp_path):
    """End to end: the line that made a batch of ~16,500 rows and an out-of-memory crash."""
    import subprocess
    import sys

    corpus = tmp_path / "corpus.txt"
    normal = [f"line {i} of an ordinary corpus with a few words" for i in range(40)]
    huge = "the quick brown fox jumps over the lazy dog " * 120_000
    corpus.write_text("\n".join(normal[:20] + [huge] + normal[20:]) + "\n")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "d2v_cli.app", "pretrain", "--modality", "text", "--data", str(corpus), "--out", str(out),
         "--max-steps", "6", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
         "--set", "runtime.device=cpu", "--set", "data.batch_size=4", "--set", "data.shuffle_buffer=0"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 6 and summary["bad_records"]["notes"] == {"truncated": 1}
