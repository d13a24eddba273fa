"""TrainLoader with token-budget batches (data.max_tokens) and corpus-level block packing:
every record once per epoch, budgets kept, ranks disjoint and equal, workers and resume exact,
cached lengths, streaming shards."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from d2v_core.data.batching import pack_blocks
from d2v_core.data.lengths import CACHE_NAME, record_lengths
from d2v_core.data.loader import TrainLoader
from d2v_core.data.sources import resolve_source
from d2v_core.interfaces import RecordDecoder, SkipRecord


class SeqDecoder(RecordDecoder):
    """A record is a 1-D int .npy; records of length 13 are refused; samples shorter than
    ``min_len`` are left out by the budget, longer than ``max_len`` are counted as ``max_len``."""

    extensions = ("npy",)

    def __init__(self, min_len: int = 0, max_len: int | None = None) -> None:
        self.min_len, self.max_len = min_len, max_len

    def decode(self, record, generator=None):
        x = np.load(io.BytesIO(record["npy"]), allow_pickle=False)
        if len(x) == 13:
            raise SkipRecord("thirteen")
        return {"key": record["__key__"], "x": torch.from_numpy(x), "noise": float(torch.rand((), generator=generator))}

    def collate(self, samples):
        size = min(len(s["x"]) for s in samples)
        if self.max_len:
            size = min(size, self.max_len)
        return {"keys": [s["key"] for s in samples], "x": torch.stack([s["x"][:size] for s in samples]),
                "lengths": [len(s["x"]) for s in samples], "noise": torch.tensor([s["noise"] for s in samples])}

    def sample_length(self, sample):
        return len(sample["x"])

    def length_bounds(self):
        return self.min_len, self.max_len


class TokenDecoder(SeqDecoder):
    """Records are token documents packed into blocks of ``size`` (break mode ``mode``)."""

    def __init__(self, size: int, mode: str, drop_partial: bool = False) -> None:
        super().__init__()
        self.layout = (size, mode, drop_partial)

    def block_layout(self):
        return self.layout

    def collate_blocks(self, blocks):
        rows = [torch.cat([s["x"][a:z] for s, a, z in b]) for b in blocks]
        width = max(len(r) for r in rows)
        return {"keys": ["+".join(s["key"] for s, _, _ in b) for b in blocks],
                "x": torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=-1) for r in rows]),
                "pieces": [[(s["key"], a, z) for s, a, z in b] for b in blocks]}


def npy(values) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(values, dtype=np.int64))
    return buf.getvalue()


LENGTHS = [int(n) for n in np.random.default_rng(0).integers(1, 40, 60)]


def make_folder(root: Path, lengths=LENGTHS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(lengths):
        (root / f"r{i:03d}.npy").write_bytes(npy(np.arange(n) + 1000 * i))
    return root


def make_shards(root: Path, n_shards: int, lengths=LENGTHS) -> str:
    root.mkdir(parents=True, exist_ok=True)
    per = -(-len(lengths) // n_shards)
    for s in range(n_shards):
        with tarfile.open(root / f"seq-{s:06d}.tar", "w") as tf:
            for i in range(s * per, min(len(lengths), (s + 1) * per)):
                data = npy(np.arange(lengths[i]) + 1000 * i)
                info = tarfile.TarInfo(f"r{i:03d}.npy")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return str(root / f"seq-{{000000..{n_shards - 1:06d}}}.tar")


def epoch(loader: TrainLoader, e: int = 0, skip: int = 0) -> list[dict]:
    return list(loader.iter_epoch(e, skip_batches=skip))


def keys(batches) -> list[str]:
    return [k for b in batches for k in b["keys"]]


def usable(min_len: int = 0) -> list[str]:
    return [f"r{i:03d}" for i, n in enumerate(LENGTHS) if n != 13 and n >= max(min_len, 1)]


def within_budget(batches, max_tokens, max_len=None) -> bool:
    return all(len(b["lengths"]) * min(max(b["lengths"]), max_len or 10**9) <= max_tokens for b in batches)


@pytest.mark.parametrize("workers", [0, 2])
def test_budget_epoch_uses_every_usable_record_once_within_the_budget(tmp_path, workers):
    src = resolve_source(str(make_folder(tmp_path / "d")), ("npy",))
    loader = TrainLoader(src, SeqDecoder(min_len=3, max_len=30), batch_size=1, max_tokens=64, num_workers=workers, seed=1)
    batches = epoch(loader)
    assert sorted(keys(batches)) == sorted(usable(3))
    assert within_budget(batches, 64, max_len=30)
    # longest-first packing: clips of a batch have similar lengths, so little is cropped away
    kept = sum(b["x"].numel() for b in batches) / sum(min(n, 30) for b in batches for n in b["lengths"])
    assert kept > 0.85
    # refused when its length was measured: left out of every epoch, counted once per run (also
    # when the length comes from the cache)
    assert loader.stats.counts["thirteen"] == LENGTHS.count(13) > 0
    cached = TrainLoader(src, SeqDecoder(min_len=3, max_len=30), batch_size=1, max_tokens=64, seed=1)
    assert cached.stats.counts == loader.stats.counts - Counter() and cached.stats.seen == LENGTHS.count(13)
    assert sorted(keys(epoch(loader, 1))) == sorted(keys(batches)) and keys(epoch(loader, 1)) != keys(batches)


def test_workers_do_not_change_budget_batches(tmp_path):
    src = resolve_source(str(make_folder(tmp_path / "d")), ("npy",))
    a = epoch(TrainLoader(src, SeqDecoder(), batch_size=1, max_tokens=80, num_workers=0, seed=3))
    b = epoch(TrainLoader(src, SeqDecoder(), batch_size=1, max_tokens=80, num_workers=2, seed=3))
    assert [x["keys"] for x in a] == [x["keys"] for x in b]
    assert all(torch.equal(x["noise"], y["noise"]) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("world_size", [2, 3])
def test_budget_ranks_are_disjoint_and_equal_in_count(tmp_path, world_size):
    src = resolve_source(str(make_folder(tmp_path / "d")), ("npy",))
    per_rank = [epoch(TrainLoader(src, SeqDecoder(), batch_size=1, max_tokens=64, rank=r, world_size=world_size))
                for r in range(world_size)]
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1 and counts.pop() > 0
    flat = [k for b in per_rank for k in keys(b)]
    assert len(flat) == len(set(flat))
    one = epoch(TrainLoader(src, SeqDecoder(), batch_size=1, max_tokens=64))
    assert len(one) - len(one) % world_size == len(per_rank[0]) * world_size  # at most world_size - 1 batches left out


@pytest.mark.parametrize("workers", [0, 2])
def test_budget_resume_mid_epoch_reproduces_the_rest_exactly(tmp_path, workers):
    src = resolve_source(str(make_folder(tmp_path / "d")), ("npy",))
    full = epoch(TrainLoader(src, SeqDecoder(), batch_size=1, max_tokens=64, num_workers=workers, seed=5), 2)
    resumed = epoch(TrainLoader(src, SeqDecoder(), batch_size=1, max_tokens=64, num_workers=workers, seed=5), 2, skip=4)
    assert [b["keys"] for b in resumed] == [b["keys"] for b in full[4:]]
    assert all(torch.equal(x["x"], y["x"]) and torch.equal(x["noise"], y["noise"]) for x, y in zip(resumed, full[4:], strict=True))


def test_lengths_are_cached_next_to_the_data_and_reused(tmp_path):
    folder = make_folder(tmp_path / "d")
    src = resolve_source(str(folder), ("npy",))
    lengths = record_lengths(src, SeqDecoder())
    assert lengths == [0 if n == 13 else n for n in LENGTHS]
    cache = json.loads((folder / CACHE_NAME).read_text())
    assert cache["fingerprint"] == "SeqDecoder" and len(cache["records"]) == len(LENGTHS)

    class NoMeasure(SeqDecoder):
        def record_length(self, record):
            raise AssertionError("measured again")

        def length_fingerprint(self):
            return "SeqDecoder"

    assert record_lengths(src, NoMeasure()) == lengths
    (folder / "r000.npy").write_bytes(npy(np.arange(7)))  # a changed file is measured again
    assert record_lengths(src, SeqDecoder())[0] == 7


def test_manifest_lengths_come_from_the_manifest(tmp_path):
    folder = make_folder(tmp_path / "d", [5, 6, 7])
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{folder}\nr000.npy\t50\nr001.npy\t60\nr002.npy\t70\n")

    class FromMeta(SeqDecoder):
        def length_from_meta(self, meta):
            return meta.get("n_samples")

        def record_length(self, record):
            raise AssertionError("measured although the manifest says")

    assert record_lengths(resolve_source(str(manifest), ("npy",)), FromMeta()) == [50, 60, 70]


def test_streaming_shards_give_budget_batches(tmp_path):
    spec = make_shards(tmp_path / "s", 4)
    src = resolve_source(spec, ("npy",))
    runs = []
    for workers in (0, 2):
        loader = TrainLoader(src, SeqDecoder(max_len=30), batch_size=1, max_tokens=64, num_workers=workers, seed=2, bucket_window=20)
        runs.append(epoch(loader))
        assert sorted(keys(runs[-1])) == sorted(usable())
        assert within_budget(runs[-1], 64, max_len=30)
        kept = sum(b["x"].numel() for b in runs[-1]) / sum(min(n, 30) for b in runs[-1] for n in b["lengths"])
        assert kept > 0.75  # sorted within 20-record buffers
    again = epoch(TrainLoader(src, SeqDecoder(max_len=30), batch_size=1, max_tokens=64, num_workers=2, seed=2, bucket_window=20))
    assert [b["keys"] for b in again] == [b["keys"] for b in runs[1]]
    parts = [epoch(TrainLoader(src, SeqDecoder(max_len=30), batch_size=1, max_tokens=64, rank=r, world_size=2, bucket_window=20))
             for r in range(2)]
    assert not set(keys(parts[0])) & set(keys(parts[1]))


@pytest.mark.parametrize("mode", ["none", "complete_doc"])
@pytest.mark.parametrize("workers", [0, 2])
def test_block_packing_gives_exactly_batch_size_rows_from_the_whole_corpus(tmp_path, mode, workers):
    src = resolve_source(str(make_folder(tmp_path / "d")), ("npy",))
    loader = TrainLoader(src, TokenDecoder(16, mode), batch_size=4, num_workers=workers, seed=0)
    batches = epoch(loader)
    assert batches and all(b["x"].shape[0] == 4 for b in batches)
    lengths = [0 if n == 13 else n for n in LENGTHS]
    blocks = pack_blocks(lengths, 16, mode)
    assert len(batches) == len(blocks) // 4
    want = sorted(tuple((f"r{i:03d}", a, z) for i, a, z in b) for b in blocks)
    got = [tuple(map(tuple, p)) for b in batches for p in b["pieces"]]
    assert len(set(got)) == len(got) and set(got) <= set(want)
    for b in batches:  # each row holds exactly its pieces' tokens
        for row, pieces in zip(b["x"], b["pieces"], strict=True):
            expect = torch.cat([torch.arange(a, z) + 1000 * int(k[1:]) for k, a, z in pieces])
            assert torch.equal(row[: len(expect)], expect) and bool((row[len(expect):] == -1).all())
    resumed = epoch(TrainLoader(src, TokenDecoder(16, mode), batch_size=4, num_workers=workers, seed=0), skip=2)
    assert [b["keys"] for b in resumed] == [b["keys"] for b in batches[2:]]


def test_block_packing_ranks_and_streaming_shards(tmp_path):
    src = resolve_source(str(make_folder(tmp_path / "d")), ("npy",))
    parts = [epoch(TrainLoader(src, TokenDecoder(16, "none"), batch_size=3, rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) > 0
    rows = [tuple(map(tuple, p)) for part in parts for b in part for p in b["pieces"]]
    assert len(rows) == len(set(rows))
    shards = resolve_source(make_shards(tmp_path / "s", 2), ("npy",))
    streamed = epoch(TrainLoader(shards, TokenDecoder(16, "none", drop_partial=True), batch_size=3, bucket_window=8, num_workers=2))
    assert streamed and all(b["x"].shape == (3, 16) for b in streamed)
    total = sum(n for n in LENGTHS if n != 13)
    assert len(streamed) * 3 * 16 > 0.6 * total  # only the rows of the last buffers are dropped


def test_clear_errors_for_budgets_that_cannot_work(tmp_path):
    from d2v_core.errors import ConfigError, DataError

    class Counted(RecordDecoder):  # says nothing about lengths (an image decoder, say)
        extensions = ("npy",)

        def decode(self, record, generator=None):
            return {"key": record["__key__"]}

        def collate(self, samples):
            return {"keys": [s["key"] for s in samples]}

    src = resolve_source(str(make_folder(tmp_path / "d")), ("npy",))
    with pytest.raises(ConfigError, match="sample_length.*remove data.max_tokens"):
        TrainLoader(src, Counted(), batch_size=1, max_tokens=64)
    with pytest.raises(DataError, match="max_tokens=20 is smaller than the longest record"):
        TrainLoader(src, SeqDecoder(), batch_size=1, max_tokens=20)
    # shards: a record over the budget is skipped and counted, not a crash
    shards = resolve_source(make_shards(tmp_path / "s", 2), ("npy",))
    loader = TrainLoader(shards, SeqDecoder(), batch_size=1, max_tokens=30)
    got = keys(epoch(loader))
    assert sorted(got) == sorted(f"r{i:03d}" for i, n in enumerate(LENGTHS) if n != 13 and n <= 30)
    assert loader.stats.counts["longer_than_max_tokens"] == sum(n > 30 for n in LENGTHS)


def test_a_corpus_too_small_for_one_batch_of_rows_says_so(tmp_path):
    from d2v_core.errors import DataError

    src = resolve_source(str(make_folder(tmp_path / "d")), ("npy",))
    with pytest.raises(DataError, match=r"packs into \d+ row\(s\) of 16 tokens, fewer than one batch of 500"):
        TrainLoader(src, TokenDecoder(16, "none"), batch_size=500)
