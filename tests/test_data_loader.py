"""TrainLoader: determinism, rank/worker splits, resume, and bad-record accounting."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from d2v_core.data.bad_records import BadRecordStats
from d2v_core.data.loader import TrainLoader
from d2v_core.data.sources import resolve_source
from d2v_core.errors import DataError
from d2v_core.interfaces import RecordDecoder, SkipRecord

MARKER = -1  # a stored value the test decoder refuses with SkipRecord("marked")


class NpyDecoder(RecordDecoder):
    """Decodes a 1-element .npy array; draws one random number from the record's generator."""

    extensions = ("npy",)

    def decode(self, record, generator=None):
        value = np.load(io.BytesIO(record["npy"]), allow_pickle=False)
        if int(value[0]) == MARKER:
            raise SkipRecord("marked", "test marker")
        if int(value[0]) == -2:
            raise ValueError("decoder refuses -2")
        return {"key": record["__key__"], "value": int(value[0]), "noise": float(torch.rand((), generator=generator))}

    def collate(self, samples):
        return {
            "keys": [s["key"] for s in samples],
            "value": torch.tensor([s["value"] for s in samples]),
            "noise": torch.tensor([s["noise"] for s in samples]),
        }


def npy_bytes(v: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([v], dtype=np.int64))
    return buf.getvalue()


def make_folder(root: Path, n: int, values: dict[int, int] | None = None) -> Path:
    for i in range(n):
        sub = root / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"r{i:03d}.npy").write_bytes(npy_bytes((values or {}).get(i, i)))
    return root


def write_tar(path: Path, records: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for key, members in records:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def make_shards(root: Path, n_shards: int, per_shard: int) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        recs = [(f"s{s}_{j:03d}", {"npy": npy_bytes(s * per_shard + j)}) for j in range(per_shard)]
        write_tar(root / f"toy-{s:06d}.tar", recs)
    return str(root / f"toy-{{000000..{n_shards - 1:06d}}}.tar")


def run(loader: TrainLoader, epoch: int = 0, skip: int = 0) -> list[dict]:
    return list(loader.iter_epoch(epoch, skip_batches=skip))


def flat_keys(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["keys"]]


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x["keys"] == y["keys"] and torch.equal(x["noise"], y["noise"]) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_epochs_are_deterministic(tmp_path, workers):
    src = resolve_source(str(make_folder(tmp_path, 30)), ("npy",))
    kw = dict(batch_size=4, num_workers=workers, seed=7)
    a = run(TrainLoader(src, NpyDecoder(), **kw), epoch=1)
    b = run(TrainLoader(src, NpyDecoder(), **kw), epoch=1)
    assert same_batches(a, b) and len(a) == 30 // 4
    assert all("_skipped" not in x and "_seen" not in x for x in a)
    other_epoch = run(TrainLoader(src, NpyDecoder(), **kw), epoch=2)
    assert flat_keys(other_epoch) != flat_keys(a)
    other_seed = run(TrainLoader(src, NpyDecoder(), **{**kw, "seed": 8}), epoch=1)
    assert flat_keys(other_seed) != flat_keys(a)


def test_worker_count_does_not_change_list_batches(tmp_path):
    src = resolve_source(str(make_folder(tmp_path, 26)), ("npy",))
    in_process = run(TrainLoader(src, NpyDecoder(), batch_size=3, num_workers=0, seed=1))
    two_workers = run(TrainLoader(src, NpyDecoder(), batch_size=3, num_workers=2, seed=1))
    assert same_batches(in_process, two_workers)


def test_rank_batches_together_equal_the_one_process_batch(tmp_path):
    src = resolve_source(str(make_folder(tmp_path, 23)), ("npy",))
    single = run(TrainLoader(src, NpyDecoder(), batch_size=6, seed=3))
    ranks = [run(TrainLoader(src, NpyDecoder(), batch_size=3, rank=r, world_size=2, seed=3)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 23 // 6
    for k, batch in enumerate(single):
        union = ranks[0][k]["keys"] + ranks[1][k]["keys"]
        assert sorted(union) == sorted(batch["keys"])
        # a record's decode randomness does not depend on the rank that decodes it
        noise = dict(zip(ranks[0][k]["keys"] + ranks[1][k]["keys"], (ranks[0][k]["noise"].tolist() + ranks[1][k]["noise"].tolist()), strict=True))
        assert noise == dict(zip(batch["keys"], batch["noise"].tolist(), strict=True))
    assert not set(flat_keys(ranks[0])) & set(flat_keys(ranks[1]))


def test_shards_with_two_workers_yield_every_record_once(tmp_path):
    spec = make_shards(tmp_path / "sh", n_shards=4, per_shard=7)
    loader = TrainLoader(spec, NpyDecoder(), batch_size=4, num_workers=2, drop_last=False, shuffle_buffer=5, seed=0)
    keys = flat_keys(run(loader))
    expected = [f"s{s}_{j:03d}" for s in range(4) for j in range(7)]
    assert sorted(keys) == expected and len(keys) == len(set(keys))
    assert keys != expected  # shuffled
    assert loader.stats.seen == 28 and loader.stats.bad == 0


def test_shards_split_over_ranks_without_overlap(tmp_path):
    spec = make_shards(tmp_path / "sh", n_shards=4, per_shard=5)
    per_rank = [
        flat_keys(run(TrainLoader(spec, NpyDecoder(), batch_size=2, rank=r, world_size=2, drop_last=False, seed=4)))
        for r in range(2)
    ]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(f"s{s}_{j:03d}" for s in range(4) for j in range(5))


def test_shard_epochs_are_deterministic_with_workers(tmp_path):
    spec = make_shards(tmp_path / "sh", n_shards=4, per_shard=6)
    kw = dict(batch_size=3, num_workers=2, shuffle_buffer=10, seed=5)
    assert same_batches(run(TrainLoader(spec, NpyDecoder(), **kw), 3), run(TrainLoader(spec, NpyDecoder(), **kw), 3))


def test_resampled_shards_stream_is_endless_and_deterministic(tmp_path):
    spec = make_shards(tmp_path / "sh", n_shards=2, per_shard=3)

    def take(n):
        it = TrainLoader(spec, NpyDecoder(), batch_size=4, resampled=True, world_size=3, rank=2, seed=1).iter_epoch(0)
        return [next(it) for _ in range(n)]

    a, b = take(10), take(10)  # 40 records from 6: only possible when resampling
    assert same_batches(a, b)


def test_fewer_shards_than_ranks_suggests_resampling(tmp_path):
    spec = make_shards(tmp_path / "sh", n_shards=1, per_shard=3)
    with pytest.raises(DataError, match="resampled=true"):
        TrainLoader(spec, NpyDecoder(), batch_size=1, rank=0, world_size=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_batches_drops_the_first_batches(tmp_path, workers):
    src = resolve_source(str(make_folder(tmp_path, 20)), ("npy",))
    full = run(TrainLoader(src, NpyDecoder(), batch_size=3, num_workers=workers))
    resumed = run(TrainLoader(src, NpyDecoder(), batch_size=3, num_workers=workers), skip=2)
    assert same_batches(resumed, full[2:])


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stats_match_an_unbroken_epoch(tmp_path, workers):
    values = {i: MARKER for i in (1, 4, 5, 11, 17)}
    src = resolve_source(str(make_folder(tmp_path, 22, values=values)), ("npy",))
    unbroken = TrainLoader(src, NpyDecoder(), batch_size=2, num_workers=workers, seed=2)
    it = unbroken.iter_epoch(0)
    head = [next(it) for _ in range(3)]
    saved = unbroken.stats.state_dict()  # what a checkpoint after 3 batches holds
    tail = list(it)
    resumed = TrainLoader(src, NpyDecoder(), batch_size=2, num_workers=workers, seed=2)
    resumed.stats.load_state_dict(saved)
    assert same_batches(run(resumed, skip=3), tail) and len(head) == 3
    assert resumed.stats.counts == unbroken.stats.counts == Counter({"marked": 5})
    assert resumed.stats.seen == unbroken.stats.seen == 22


def test_corrupt_shards_are_skipped_and_counted(tmp_path):
    root = tmp_path / "sh"
    root.mkdir()
    good = [(f"g{j}", {"npy": npy_bytes(j)}) for j in range(6)]
    write_tar(root / "c-000000.tar", good)
    write_tar(
        root / "c-000001.tar",
        [
            ("garbage", {"npy": b"\x93NUMPY this is not an array"}),  # np.load raises ValueError
            ("marked", {"npy": npy_bytes(MARKER)}),
            ("refused", {"npy": npy_bytes(-2)}),
            ("nopayload", {"json": b"{}"}),
            ("ok", {"npy": npy_bytes(100)}),
        ],
    )
    full = write_tar(root / "c-000002.tar", [(f"t{j}", {"npy": npy_bytes(200 + j) * 40}) for j in range(6)])
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2 + 100])  # truncated in the middle of a member
    (root / "c-000003.tar").write_bytes(b"this is not a tar file at all" * 50)
    loader = TrainLoader(str(root / "c-*.tar"), NpyDecoder(), batch_size=2, drop_last=False, shuffle_buffer=0)
    keys = flat_keys(run(loader))
    assert {f"g{j}" for j in range(6)} | {"ok"} <= set(keys)
    counts = loader.stats.counts
    assert counts["marked"] == 1 and counts["error:ValueError"] == 2 and counts["missing_payload"] == 1
    assert counts["tar:ReadError"] == 2  # the truncated shard once, the non-tar file once
    assert {Path(url).name for url, _, msg in loader.stats.examples if msg.startswith("tar:")} == {"c-000002.tar", "c-000003.tar"}
    assert "marked 1" in loader.stats.summary()
    assert any(key == "garbage" for _, key, _ in loader.stats.examples)


def test_unreadable_listed_file_is_counted(tmp_path):
    make_folder(tmp_path / "d", 4)
    manifest = tmp_path / "m.csv"
    rows = [f"d/d{i % 3}/r{i:03d}.npy" for i in range(4)] + ["d/missing.npy"]
    manifest.write_text("path\n" + "\n".join(rows) + "\n")
    loader = TrainLoader(str(manifest), NpyDecoder(), batch_size=1, shuffle_buffer=0)
    assert len(run(loader)) == 4
    assert loader.stats.counts == Counter({"error:FileNotFoundError": 1}) and loader.stats.seen == 5


def test_mostly_broken_data_raises(tmp_path):
    src = resolve_source(str(make_folder(tmp_path, 12, values={i: MARKER for i in range(10)})), ("npy",))
    loader = TrainLoader(src, NpyDecoder(), batch_size=1, max_bad_fraction=0.5, min_seen=1000)
    with pytest.raises(DataError, match="unusable.*marked 10"):
        run(loader)  # min_seen not reached mid-epoch; the finished epoch is enough evidence
    stats = BadRecordStats()
    stats.merge({"marked": 10}, 12)
    with pytest.raises(DataError, match="max_bad_fraction=0.5"):
        stats.check(0.5, min_seen=10)
    stats.check(0.9, min_seen=10)  # 83% bad is under a 90% limit
    stats.check(0.5, min_seen=13)  # too few records seen to judge


def test_epoch_with_nothing_usable_raises(tmp_path):
    src = resolve_source(str(make_folder(tmp_path, 5, values={i: MARKER for i in range(5)})), ("npy",))
    with pytest.raises(DataError, match=r"no usable record in .*seen 5 records, skipped 5"):
        run(TrainLoader(src, NpyDecoder(), batch_size=2))


def test_stats_aggregate_across_workers(tmp_path):
    values = {i: MARKER for i in range(0, 24, 4)}
    src = resolve_source(str(make_folder(tmp_path, 24, values=values)), ("npy",))
    loader = TrainLoader(src, NpyDecoder(), batch_size=3, num_workers=2, drop_last=False)
    keys = flat_keys(run(loader))
    assert len(keys) == 18 and loader.stats.counts == Counter({"marked": 6}) and loader.stats.seen == 24
