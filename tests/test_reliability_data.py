"""Guarantee 2: corrupt data (truncated shards, garbage members, records without payload, decoder
exceptions of any kind) is skipped, counted per reason and logged with its shard and key; a run
whose data is mostly broken stops with one line and a non-zero exit (``data.max_bad_fraction``,
``--max-bad-fraction``)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from d2v_core.data.loader import TrainLoader
from d2v_core.data.sources import resolve_source
from d2v_core.interfaces import RecordDecoder

WORKER = Path(__file__).with_name("pretrain_worker.py")
COMMON = ["--modality", "vectors", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
          "--set", "runtime.device=cpu"]


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float32))
    return buf.getvalue()


def write_vectors(folder: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"seq_{i:03d}.npy").write_bytes(npy(rng.standard_normal((int(rng.integers(40, 65)), 16))))
    return folder


def add_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def member(path: Path, name: str) -> tarfile.TarInfo:
    with tarfile.open(path) as tf:
        return tf.getmember(name)


@pytest.fixture
def broken_shards(tmp_path, example_plugins, cli):
    """Real shards from ``d2v make-shards`` (30 records, 6 per shard), then broken in every way."""
    code, out, err = cli(["make-shards", str(write_vectors(tmp_path / "vec", 30)), str(tmp_path / "shards"),
                          "--modality", "vectors", "--max-count", "6"])
    assert code == 0, err
    shards = tmp_path / "shards"
    # 1. garbage bytes inside one member of a good shard (the tar structure stays valid)
    target = shards / "vectors-000001.tar"
    info = member(target, "seq_007.npy")
    with open(target, "r+b") as f:
        f.seek(info.offset_data)
        f.write(np.random.default_rng(1).integers(0, 256, info.size, dtype=np.uint8).tobytes())
    # 2. a shard cut in the middle of its 4th member's data: members 1-3 stay readable
    cut = shards / "vectors-000004.tar"
    info = member(cut, "seq_027.npy")
    os.truncate(cut, info.offset_data + info.size // 2)
    # 3. a file named like a shard that is not a tar at all
    (shards / "vectors-garbage.tar").write_bytes(np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    # 4. records the decoder refuses, and one without any payload
    add_tar(shards / "vectors-odd.tar", {
        "nopayload.json": b"{}",
        "wrongdim.npy": npy(np.ones((50, 3))),
        "nan.npy": npy(np.full((50, 16), np.nan)),
        "short.npy": npy(np.ones((2, 16))),
    })
    return shards


EXPECTED_EPOCH_COUNTS = {"tar:ReadError": 2, "unreadable": 1, "missing_payload": 1, "bad_shape": 1, "non_finite": 1, "too_short": 1}


@pytest.mark.slow
def test_corrupt_shards_are_skipped_counted_and_logged_with_shard_and_key(tmp_path, broken_shards, cli, caplog):
    out = tmp_path / "run"
    # 23 + 3 usable records, batch 8: an epoch is 3 batches, so step 4 reads epoch 0 to its end
    with caplog.at_level(logging.WARNING, logger="d2v.data"):
        code, stdout, err = cli(["pretrain", *COMMON, "--data", str(broken_shards / "*.tar"), "--out", str(out),
                                 "--max-steps", "4", "--set", "data.batch_size=8"])
    assert code == 0, err
    assert "done: step 4" in stdout
    lines = [r.getMessage() for r in caplog.records if r.name == "d2v.data"]
    epoch0 = [line for line in lines if line.startswith("d2v: epoch 0, rank 0:")]
    assert len(epoch0) == 1, lines
    # 31 records read + 2 unreadable tar streams; 7 of them bad, each reason counted once
    assert "seen 33 records, skipped 7 (21.2%)" in epoch0[0]
    per_reason = epoch0[0].split("(21.2%): ", 1)[1]
    assert {r: int(n) for r, n in (part.rsplit(" ", 1) for part in per_reason.split(", "))} == EXPECTED_EPOCH_COUNTS

    def logged(key: str, shard: str, reason: str) -> bool:
        return any(f"skipped record {key} in " in m and shard in m and f"({reason}" in m for m in lines)

    assert logged("seq_007", "vectors-000001.tar", "unreadable")
    assert logged("nopayload", "vectors-odd.tar", "missing_payload")
    assert logged("wrongdim", "vectors-odd.tar", "bad_shape")
    assert logged("nan", "vectors-odd.tar", "non_finite")
    assert logged("short", "vectors-odd.tar", "too_short")
    assert any("vectors-000004.tar" in m and "(tar:ReadError" in m for m in lines)
    assert any("vectors-garbage.tar" in m and "(tar:ReadError" in m for m in lines)

    summary = json.loads((out / "summary.json").read_text())["bad_records"]
    assert set(summary["counts"]) == set(EXPECTED_EPOCH_COUNTS)
    assert all(summary["counts"][r] >= n for r, n in EXPECTED_EPOCH_COUNTS.items())
    examples = {(Path(url).name, key, msg.split(":")[0]) for url, key, msg in summary["examples"]}
    assert {("vectors-000001.tar", "seq_007", "unreadable"), ("vectors-odd.tar", "nopayload", "missing_payload"),
            ("vectors-odd.tar", "short", "too_short")} <= examples


@pytest.mark.slow
def test_mostly_broken_data_aborts_with_one_line_and_non_zero_exit(tmp_path, example_plugins, cli):
    """Through a real ``d2v pretrain`` process: the skips go to stderr, then one error line."""
    data = write_vectors(tmp_path / "data", 10)
    for i in range(30):  # 30 of 40 files cannot be decoded
        (data / f"junk_{i:03d}.npy").write_bytes(b"\x93NUMPY garbage " + bytes([i]) * 40)
    args = [*COMMON, "--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "20"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(WORKER), *args, "--max-bad-fraction", "0.5"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and res.stderr.rstrip().splitlines()[-1] == errors[0]
    assert re.match(r"error: 75% of records are unusable \(limit data.max_bad_fraction=0.5\): seen 40 records, skipped 30", errors[0])
    assert errors[0].endswith("raise the limit with --max-bad-fraction")
    assert "Traceback" not in res.stderr
    assert re.search(r"d2v: skipped record junk_\d{3} in \S+junk_\d{3}\.npy \(unreadable", res.stderr)
    assert not (tmp_path / "run" / "checkpoints").exists()
    # the same data under a higher limit trains on the 10 good records
    code, stdout, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(tmp_path / "run2"), "--max-steps", "2",
                             "--max-bad-fraction", "0.8", "--set", "data.batch_size=4"])
    assert code == 0 and "done: step 2" in stdout, err


def test_max_bad_fraction_flag_is_validated(tmp_path, example_plugins, cli):
    code, _, err = cli(["pretrain", *COMMON, "--data", str(write_vectors(tmp_path / "d", 4)), "--out", str(tmp_path / "r"),
                        "--max-bad-fraction", "1.5"])
    assert code == 2 and err.startswith("error: ") and "max_bad_fraction" in err and err.count("\n") == 1


# -- decoder exceptions of any kind, in-process and in DataLoader workers ------------------------


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


def _raise(kind: int) -> None:
    if kind == 0:
        raise ValueError("bad value\nsecond line must not reach the log")
    if kind == 1:
        raise KeyError("missing")
    if kind == 2:
        raise ZeroDivisionError("division by zero")
    if kind == 3:
        struct.unpack("<i", b"\x00")
    if kind == 4:
        b"\xff".decode("utf-8")
    if kind == 5:
        raise RecursionError("maximum recursion depth exceeded")
    if kind == 6:
        raise MemoryError()
    if kind == 7:
        raise AssertionError("plugin assertion")
    if kind == 8:
        raise UnprintableError()
    if kind == 9:
        raise OSError(5, "Input/output error")


RAISED = {0: "ValueError", 1: "KeyError", 2: "ZeroDivisionError", 3: "error", 4: "UnicodeDecodeError",
          5: "RecursionError", 6: "MemoryError", 7: "AssertionError", 8: "UnprintableError", 9: "OSError"}


class ThrowingDecoder(RecordDecoder):
    """Record i of value v < 10 raises exception kind v; values >= 10 decode."""

    extensions = ("npy",)

    def decode(self, record, generator=None):  # type: ignore[no-untyped-def]
        value = int(np.load(io.BytesIO(record["npy"]))[0])
        if value < 10:
            _raise(value)
        return {"key": record["__key__"], "value": value}

    def collate(self, samples):  # type: ignore[no-untyped-def]
        return {"keys": [s["key"] for s in samples], "value": torch.tensor([s["value"] for s in samples])}


@pytest.mark.parametrize("workers", [0, 2])
def test_decoder_exceptions_of_any_kind_are_counted_per_type(tmp_path, workers):
    folder = tmp_path / "d"
    folder.mkdir()
    values = list(range(10)) + list(range(10, 30))
    for i, v in enumerate(values):
        np.save(folder / f"r{i:03d}.npy", np.array([v]))
    loader = TrainLoader(resolve_source(str(folder), ("npy",)), ThrowingDecoder(), batch_size=4, num_workers=workers,
                         shuffle_buffer=0, drop_last=False)
    batches = list(loader.iter_epoch(0))
    assert sorted(v for b in batches for v in b["value"].tolist()) == list(range(10, 30))
    expected = Counter({f"error:{name}": 1 for name in RAISED.values()})
    assert loader.stats.counts == expected and loader.stats.seen == 30
    messages = {key: msg for _, key, msg in loader.stats.examples}
    assert messages["r000"] == "error:ValueError: bad value"  # first line only
    assert messages["r008"].startswith("error:UnprintableError: <UnprintableError with an unprintable message>")


def test_keyboard_interrupt_in_a_decoder_is_not_swallowed(tmp_path):
    class Interrupting(ThrowingDecoder):
        def decode(self, record, generator=None):  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt

    folder = tmp_path / "d"
    folder.mkdir()
    np.save(folder / "r.npy", np.array([11]))
    with pytest.raises(KeyboardInterrupt):
        list(TrainLoader(str(folder), Interrupting(), batch_size=1).iter_epoch(0))
