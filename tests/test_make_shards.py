"""make-shards: round trip through tar, size/count splits, no overwrite, atomic shards, CLI."""

from __future__ import annotations

import io
import json
import random
import sys
import tarfile
import types
from itertools import pairwise
from pathlib import Path

import pytest

from d2v_cli.testing import run_cli
from d2v_core import ModalitySpec, hookimpl
from d2v_core.data.make_shards import pack_shards, parse_size
from d2v_core.data.sources import Source
from d2v_core.errors import ConfigError, DataError
from d2v_core.plugin_loader import plugin_context


def make_folder(root: Path, n: int, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    payloads = {}
    for i in range(n):
        key = f"spk{i % 2}/utt{i:02d}"
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(100, 3000)))
        path = root / f"{key}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        payloads[key] = data
    return payloads


def read_tar(path: Path) -> list[tuple[str, bytes]]:
    """(member name, bytes) with the standard library, independent of webdataset."""
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def test_round_trip_keeps_keys_and_bytes_and_splits_by_count(tmp_path):
    payloads = make_folder(tmp_path / "src", 10)
    paths = pack_shards(str(tmp_path / "src"), tmp_path / "out", "toy", ("bin",), max_count=4).paths
    assert [p.name for p in paths] == ["toy-000000.tar", "toy-000001.tar", "toy-000002.tar"]
    members = [read_tar(p) for p in paths]
    assert [len(m) for m in members] == [4, 4, 2]
    got = {name[: -len(".bin")]: data for m in members for name, data in m}
    assert got == payloads
    assert not list((tmp_path / "out").glob("*.partial"))


def test_max_size_bounds_every_shard(tmp_path):
    payloads = make_folder(tmp_path / "src", 30)
    limit = 30_000
    result = pack_shards(str(tmp_path / "src"), tmp_path / "out", "toy", ("bin",), max_size_bytes=limit)
    sizes = [p.stat().st_size for p in result.paths]
    assert len(sizes) > 1 and max(sizes) <= limit
    assert result.records == 30 and result.bytes == sum(sizes)
    assert sum(len(read_tar(p)) for p in result.paths) == 30
    # a shard closes only when the next record would not fit: rebuild each shard plus the next
    # shard's first record with the standard library and check that it is over the limit
    for this, nxt in pairwise(result.paths):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for name, data in read_tar(this) + read_tar(nxt)[:1]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        assert len(buf.getvalue()) > limit
    assert {n[:-4]: d for p in result.paths for n, d in read_tar(p)} == payloads


def test_metadata_and_text_records(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"AAA")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.bin,cat\n")
    paths = pack_shards(str(manifest), tmp_path / "out", "toy", ("bin",)).paths
    assert dict(read_tar(paths[0])) == {"a.bin": b"AAA", "a.json": json.dumps({"label": "cat"}).encode()}

    lines = tmp_path / "t.jsonl"
    lines.write_text(json.dumps({"text": "héllo", "label": 2}) + "\n" + json.dumps({"text": "two", "id": "doc.v1"}) + "\n", encoding="utf-8")
    paths = pack_shards(str(lines), tmp_path / "out_txt", "text", ("txt",)).paths
    assert dict(read_tar(paths[0])) == {
        "000000001.txt": "héllo".encode(),
        "000000001.json": b'{"label": 2}',
        "doc_v1.txt": b"two",  # dots in a key's base name would split it in webdataset
    }


def test_shards_read_back_through_the_loader_source(tmp_path):
    payloads = make_folder(tmp_path / "src", 5)
    result = pack_shards(str(tmp_path / "src"), tmp_path / "out", "toy", ("bin",), max_count=2)
    from d2v_core.data.sources import resolve_source

    src = resolve_source(result.pattern(), ("bin",))
    assert len(src.urls) == 3
    assert {r["__key__"]: r["bin"] for r in src.iter_records()} == payloads


def test_existing_shards_are_not_overwritten(tmp_path):
    make_folder(tmp_path / "src", 6)
    first = pack_shards(str(tmp_path / "src"), tmp_path / "out", "toy", ("bin",), max_count=2).paths
    before = first[0].read_bytes()
    with pytest.raises(DataError, match="--overwrite"):
        pack_shards(str(tmp_path / "src"), tmp_path / "out", "toy", ("bin",), max_count=1)
    assert len(list((tmp_path / "out").glob("*.tar"))) == 3 and first[0].read_bytes() == before
    again = pack_shards(str(tmp_path / "src"), tmp_path / "out", "toy", ("bin",), max_count=5, overwrite=True).paths
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == [p.name for p in again] == ["toy-000000.tar", "toy-000001.tar"]


def test_interrupted_run_leaves_only_complete_shards(tmp_path, monkeypatch):
    make_folder(tmp_path / "src", 9)
    real_read = Source.read
    calls = {"n": 0}

    def flaky_read(self, entry):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real_read(self, entry)

    monkeypatch.setattr(Source, "read", flaky_read)
    with pytest.raises(KeyboardInterrupt):
        pack_shards(str(tmp_path / "src"), tmp_path / "out", "toy", ("bin",), max_count=2)
    left = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in left] == ["toy-000000.tar", "toy-000001.tar"]
    assert all(len(read_tar(p)) == 2 for p in left)


def test_parse_size():
    assert parse_size("256MB") == 256_000_000
    assert parse_size("1GB") == 1_000_000_000
    assert parse_size("500KB") == 500_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("1234") == 1234
    for bad in ("", "12XB", "-5", "0"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def _toy_plugin() -> types.ModuleType:
    mod = types.ModuleType("d2v_toy_shards_plugin")
    mod.D2V_PLUGIN_API_VERSION = "1.0"

    @hookimpl
    def d2v_register(registry):
        registry.add_modality(
            ModalitySpec(
                name="toy", encoder="x:y", encoder_options="x:y", record_decoder="x:y", data_options="x:y",
                default_masker="span", presets={}, extensions=("bin",),
            )
        )

    mod.d2v_register = d2v_register
    return mod


def test_cli_packs_with_a_registered_modality(tmp_path):
    make_folder(tmp_path / "src", 5)
    with plugin_context(_toy_plugin()):
        code, out, _ = run_cli(["make-shards", str(tmp_path / "src"), str(tmp_path / "out"), "--modality", "toy", "--max-count", "2",
                                "--max-size", "1MB"])
    assert code == 0
    assert "packed 5 records into 3 shards" in out and "toy-{000000..000002}.tar" in out
    assert len(out.strip().splitlines()) == 1


def test_cli_unknown_modality_exits_2(tmp_path):
    make_folder(tmp_path / "src", 2)
    with plugin_context(_toy_plugin()):
        code, _, err = run_cli(["make-shards", str(tmp_path / "src"), str(tmp_path / "out"), "--modality", "nosuch"])
    assert code == 2 and "unknown modality 'nosuch'" in err and "toy" in err
    assert not (tmp_path / "out").exists()


def test_cli_bad_size_exits_2(tmp_path):
    make_folder(tmp_path / "src", 2)
    with plugin_context(_toy_plugin()):
        code, _, err = run_cli(["make-shards", str(tmp_path / "src"), str(tmp_path / "out"), "-m", "toy", "--max-size", "lots"])
    assert code == 2 and "cannot read size 'lots'" in err


def test_help_does_not_import_torch_or_webdataset():
    import subprocess

    code = "import sys, d2v_cli.app; print('torch' in sys.modules, 'webdataset' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
