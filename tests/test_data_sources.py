"""resolve_source: folders, manifests, text lines, shard patterns, and its error messages."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from d2v_core.data.sources import resolve_source
from d2v_core.errors import DataError
from d2v_core.interfaces import SkipRecord


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_folder_lists_matching_extensions_recursively(tmp_path):
    _write(tmp_path / "a.npy", b"A")
    _write(tmp_path / "sub" / "b.NPY", b"B")
    _write(tmp_path / "sub" / "deeper" / "c.wav", b"C")
    _write(tmp_path / "notes.txt", b"ignored")
    _write(tmp_path / ".hidden" / "d.npy", b"hidden")
    src = resolve_source(str(tmp_path), ("npy", ".wav"))
    assert src.kind == "folder"
    assert [(e.key, e.ext) for e in src.entries] == [("a", "npy"), ("sub/b", "npy"), ("sub/deeper/c", "wav")]
    rec = src.read(src.entries[1])
    assert rec == {"__key__": "sub/b", "__url__": str((tmp_path / "sub" / "b.NPY").resolve()), "npy": b"B"}


def test_folder_without_matches_names_folder_and_extensions(tmp_path):
    _write(tmp_path / "x.txt", b"t")
    with pytest.raises(DataError) as err:
        resolve_source(str(tmp_path), ("flac", "wav"))
    msg = str(err.value)
    assert str(tmp_path) in msg and ".flac" in msg and ".wav" in msg and "\n" not in msg


def test_folder_of_tar_files_is_read_as_shards(tmp_path):
    _tar(tmp_path / "s-000001.tar", {"k.npy": b"1"})
    _tar(tmp_path / "s-000000.tar", {"k.npy": b"0"})
    src = resolve_source(str(tmp_path), ("npy",))
    assert src.is_sharded and [Path(u).name for u in src.urls] == ["s-000000.tar", "s-000001.tar"]


def test_csv_manifest_relative_and_absolute_paths_with_metadata(tmp_path):
    a = _write(tmp_path / "audio" / "a.npy", b"A")
    b = _write(tmp_path / "elsewhere" / "b.npy", b"B")
    manifest = tmp_path / "train.csv"
    manifest.write_text(f"path,label,speaker\naudio/a.npy,3,s1\n{b},7,s2\n,1,s3\n")
    src = resolve_source(str(manifest), ("npy",))
    assert src.kind == "csv" and len(src) == 3
    first = src.read(src.entries[0])
    assert first == {"__key__": "audio/a", "__url__": str(a.resolve()), "npy": b"A", "__meta__": {"label": "3", "speaker": "s1"}}
    second = src.read(src.entries[1])
    assert second["npy"] == b"B" and second["__meta__"] == {"label": "7", "speaker": "s2"}
    assert not second["__key__"].startswith(("/", ".."))
    with pytest.raises(SkipRecord) as skip:  # the row with an empty path is counted, not fatal
        src.read(src.entries[2])
    assert skip.value.reason == "bad_manifest_line"


def test_csv_without_path_column_is_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label\na.npy,1\n")
    with pytest.raises(DataError, match="no 'path' column.*file, label"):
        resolve_source(str(manifest), ("npy",))


def test_fairseq_tsv_manifest(tmp_path):
    _write(tmp_path / "root" / "spk" / "u1.npy", b"U1")
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{tmp_path / 'root'}\nspk/u1.npy\t16000\n")
    src = resolve_source(str(manifest), ("npy",))
    rec = src.read(src.entries[0])
    assert rec["__key__"] == "spk/u1" and rec["npy"] == b"U1" and rec["__meta__"] == {"n_samples": 16000}


def test_jsonl_manifest_paths_text_and_bad_lines(tmp_path):
    _write(tmp_path / "x.npy", b"X")
    manifest = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"path": "x.npy", "label": 1}),
        json.dumps({"text": "hello wörld", "category": "a"}),
        "{not json",
        "",
        json.dumps({"text": "second", "id": "doc-7"}),
    ]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    src = resolve_source(str(manifest), ("npy",))
    assert src.kind == "jsonl" and len(src) == 4
    recs = []
    for e in src.entries:
        try:
            recs.append(src.read(e))
        except SkipRecord as exc:
            recs.append(exc.reason)
    assert recs[0]["npy"] == b"X" and recs[0]["__meta__"] == {"label": 1} and recs[0]["__key__"] == "x"
    assert recs[1]["txt"] == "hello wörld".encode() and recs[1]["__meta__"] == {"category": "a"}
    assert recs[1]["__key__"] == "000000002"
    assert recs[2] == "bad_manifest_line"
    assert recs[3]["__key__"] == "doc-7" and recs[3]["txt"] == b"second"


def test_text_file_is_one_record_per_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("first line\n\nthird line\n")
    src = resolve_source(str(corpus), ("txt",))
    assert [(e.key, e.text) for e in src.entries] == [("000000001", "first line"), ("000000003", "third line")]


def test_brace_pattern_expands_in_order(tmp_path):
    for i in range(4):
        _tar(tmp_path / "shards" / f"audio-{i:06d}.tar", {f"k{i}.npy": b"x"})
    src = resolve_source(str(tmp_path / "shards" / "audio-{000000..000003}.tar"), ("npy",))
    assert src.is_sharded
    assert [Path(u).name for u in src.urls] == [f"audio-{i:06d}.tar" for i in range(4)]


def test_brace_pattern_names_first_missing_shard(tmp_path):
    for i in range(3):
        _tar(tmp_path / f"audio-{i:06d}.tar", {"k.npy": b"x"})
    spec = str(tmp_path / "audio-{000000..000005}.tar")
    with pytest.raises(DataError) as err:
        resolve_source(spec, ("npy",))
    assert "audio-000003.tar" in str(err.value) and "audio-000004" not in str(err.value)


def test_glob_matching_nothing_names_the_pattern(tmp_path):
    spec = str(tmp_path / "nothing-*.tar")
    with pytest.raises(DataError) as err:
        resolve_source(spec, ("npy",))
    assert spec in str(err.value)


def test_glob_selects_shards(tmp_path):
    _tar(tmp_path / "b.tar", {"k.npy": b"x"})
    _tar(tmp_path / "a.tar", {"k.npy": b"x"})
    src = resolve_source(str(tmp_path / "*.tar"), ("npy",))
    assert [Path(u).name for u in src.urls] == ["a.tar", "b.tar"]


def test_pipe_urls_refused_unless_allowed(tmp_path):
    spec = "pipe:cat shards/x-{0..1}.tar"
    with pytest.raises(DataError, match="refusing URL"):
        resolve_source(spec, ("npy",))
    src = resolve_source(spec, ("npy",), allow_pipe_urls=True)
    assert src.urls == ("pipe:cat shards/x-0.tar", "pipe:cat shards/x-1.tar")


def test_missing_path_and_unknown_file_type(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"), ("npy",))
    odd = _write(tmp_path / "one.xyz", b"x")
    with pytest.raises(DataError, match=r"cannot read .*: pass a \.npy file or a folder of them"):
        resolve_source(str(odd), ("npy",))
    one = resolve_source(str(_write(tmp_path / "sub" / "clip.npy", b"x")), ("npy",))  # one file: one record
    assert one.kind == "file" and [(e.key, e.ext, e.path) for e in one.entries] == [("clip", "npy", str(tmp_path / "sub" / "clip.npy"))]
