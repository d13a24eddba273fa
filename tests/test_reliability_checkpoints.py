"""Guarantee 5 (and the write side of guarantee 1): a checkpoint write that fails (disk full,
read-only disk, an interrupt) leaves no partial directory, keeps the earlier checkpoints intact and
stops the run with one clear line; leftovers of killed writers are never loaded and are removed."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from d2v_core.errors import CheckpointError
from d2v_core.train import checkpoint as ck
from d2v_core.train import run_folder

COMMON = ["--modality", "vectors", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
          "--set", "runtime.device=cpu", "--set", "data.batch_size=4"]

# What the writers really raise on a full disk (seen on a 512 KiB tmpfs with torch 2.11 / safetensors 0.8)
SAFETENSORS_FULL = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
TORCH_SAVE_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def write_vectors(folder: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(folder / f"seq_{i:03d}.npy", rng.standard_normal((int(rng.integers(20, 40)), 16)).astype(np.float32))
    return folder


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def save(run: Path, step: int, **kwargs) -> Path:  # type: ignore[no-untyped-def]
    w = torch.full((3, 2), float(step))
    return ck.save_checkpoint(run, step, {"w": w}, {"w": w * 2}, {"step": step, "rng": torch.arange(4)}, "modality: x\n",
                              {"versions": {}}, **kwargs)


def in_tmp_dir_of_step(path, step: int) -> bool:  # type: ignore[no-untyped-def]
    return Path(path).parent.name.startswith(f".tmp-step_{step:08d}-") or Path(path).name.startswith(f".tmp-step_{step:08d}-")


@pytest.mark.parametrize("failure", ["safetensors-disk-full", "torch-save-disk-full", "read-only-disk", "interrupt"])
def test_failed_write_keeps_the_previous_checkpoint_and_leaves_nothing_partial(tmp_path, monkeypatch, failure):
    run = tmp_path / "run"
    first = save(run, 10)
    before = digest(first)
    real_save_file, real_torch_save, real_mkdir = ck.save_file, torch.save, Path.mkdir

    def save_file(tensors, filename, *a, **k):  # type: ignore[no-untyped-def]
        if failure == "safetensors-disk-full" and in_tmp_dir_of_step(filename, 20) and "teacher" in str(filename):
            raise SAFETENSORS_FULL
        return real_save_file(tensors, filename, *a, **k)

    def torch_save(obj, f, *a, **k):  # type: ignore[no-untyped-def]
        if failure in ("torch-save-disk-full", "interrupt") and in_tmp_dir_of_step(f, 20):
            Path(f).write_bytes(b"PK\x03\x04 half a zip")  # what a full disk leaves behind
            raise TORCH_SAVE_FULL if failure != "interrupt" else KeyboardInterrupt
        return real_torch_save(obj, f, *a, **k)

    def mkdir(self, *a, **k):  # type: ignore[no-untyped-def]
        if failure == "read-only-disk" and in_tmp_dir_of_step(self, 20):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(ck, "save_file", save_file)
    monkeypatch.setattr(torch, "save", torch_save)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    if failure == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            save(run, 20)
    else:
        with pytest.raises(CheckpointError) as info:
            save(run, 20)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"cannot write checkpoint at step 20 in {run / 'checkpoints'}: ")
        assert message.endswith(f"the previous checkpoint {first} is intact")
        assert {"safetensors-disk-full": "No space left on device", "torch-save-disk-full": "unexpected pos",
                "read-only-disk": "Read-only file system"}[failure] in message
        assert "MiB free there" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000010"]  # no partial directory
    assert digest(first) == before and ck.latest_checkpoint(run).step == 10
    assert ck.load_checkpoint(run)["trainer_state"]["step"] == 10


def test_disk_full_during_training_stops_the_run_with_one_line(tmp_path, monkeypatch, example_plugins, cli):
    """In-process ``d2v pretrain``: the step-2 checkpoint is written, the step-4 one hits a full
    disk; the run stops with exit 1 and the step-2 checkpoint is untouched and loadable."""
    run = tmp_path / "run"
    real_save_file = ck.save_file
    seen: dict[str, dict[str, str]] = {}

    def save_file(tensors, filename, *a, **k):  # type: ignore[no-untyped-def]
        if in_tmp_dir_of_step(filename, 4):
            seen["before"] = digest(run / "checkpoints" / "step_00000002")
            raise SAFETENSORS_FULL
        return real_save_file(tensors, filename, *a, **k)

    monkeypatch.setattr(ck, "save_file", save_file)
    code, out, err = cli(["pretrain", *COMMON, "--data", str(write_vectors(tmp_path / "data")), "--out", str(run),
                          "--max-steps", "6", "--set", "runtime.save_every=2"])
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("error: cannot write checkpoint at step 4 in ")
    assert "No space left on device" in err and f"the previous checkpoint {run / 'checkpoints' / 'step_00000002'} is intact" in err
    assert "done:" not in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]
    assert digest(run / "checkpoints" / "step_00000002") == seen["before"]
    assert ck.load_checkpoint(run)["trainer_state"]["step"] == 2


def test_rewriting_an_existing_step_replaces_it_whole(tmp_path):
    run = tmp_path / "run"
    save(run, 5)
    w = torch.full((3, 2), 7.0)
    ck.save_checkpoint(run, 5, {"w": w}, {"w": w}, {"step": 5}, "modality: y\n", {})
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000005"]
    assert torch.equal(ck.load_checkpoint(run)["student"]["w"], w)


def test_keep_last_prunes_oldest_and_leaves_no_trash(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3, 4):
        save(run, step, keep_last=2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000003", "step_00000004"]


def test_leftovers_of_dead_writers_are_ignored_then_removed_but_a_live_writer_is_left_alone(tmp_path):
    run = tmp_path / "run"
    save(run, 1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        root = run / "checkpoints"
        torn = root / f".tmp-step_00000002-{dead_pid}"
        trash = root / f".trash-step_00000000-{dead_pid}"
        # what a writer records before it creates a name; only recorded names are ever deleted
        run_folder.record(run, torn.name, trash.name)
        users = root / f".tmp-step_00000009-{dead_pid}"  # same shape, not d2v's: never touched
        users.mkdir()
        torn.mkdir()
        (torn / "student.safetensors").write_bytes(b"half")
        (torn / "meta.json").write_text("{}")  # even a marker inside a temporary name is never loaded
        trash.mkdir()
        (trash / "meta.json").write_text("{}")
        busy = root / f".tmp-step_00000003-{live.pid}"
        run_folder.record(run, busy.name)
        busy.mkdir()
        unrelated = root / "notes"
        unrelated.mkdir()
        assert [c.step for c in ck.list_checkpoints(run)] == [1]
        removed = ck.remove_stale_temporaries(run)
        assert sorted(p.name for p in removed) == sorted([torn.name, trash.name])
        assert sorted(p.name for p in root.iterdir()) == sorted([busy.name, users.name, "notes", "step_00000001"])
    finally:
        live.kill()
        live.wait()


def test_a_checkpoint_written_before_the_per_layer_norm_rename_still_loads(tmp_path):
    """Stored configs name ``targets.layer_norm``; reading them maps it to ``per_layer_norm``."""
    import yaml

    from d2v_core.config_resolve import config_to_yaml, resolve_config
    from d2v_core.plugin_loader import plugin_context

    from d2v_plugin_example import plugin

    with plugin_context(plugin) as loaded:
        cfg = resolve_config(loaded.registry, "vectors", "tiny", None, ["targets.per_layer_norm=layer"])
        old = yaml.safe_load(config_to_yaml(cfg))
        old["targets"]["layer_norm"] = old["targets"].pop("per_layer_norm")
        path = ck.save_checkpoint(tmp_path / "run", 1, {"w": torch.zeros(1)}, {"w": torch.zeros(1)}, {"step": 1},
                                  yaml.safe_dump(old), {"modality": "vectors"})
        assert ck.load_checkpoint(path).config(loaded.registry).targets.per_layer_norm == "layer"


def test_load_checkpoint_returns_the_typed_record(tmp_path):
    state = {"step": 3, "rng": {"torch": torch.zeros(2)}}
    path = ck.save_checkpoint(tmp_path / "run", 3, {"w": torch.ones(2)}, {"t": torch.zeros(1)}, state, "modality: vectors\n",
                              {"versions": {"d2v": "9.9"}, "modality": "vectors"}, extra={"tok.model": b"abc"})
    got = ck.load_checkpoint(tmp_path / "run")  # a run directory: its newest checkpoint
    assert isinstance(got, ck.Checkpoint) and got.path == path and got.step == 3
    assert torch.equal(got.student["w"], torch.ones(2)) and list(got.teacher) == ["t"]
    assert got.trainer_state["step"] == 3 and got.versions == {"d2v": "9.9"} and got.modality == "vectors"
    assert got.extra == {"tok.model": b"abc"} and got.extra_dir == path / "extra" and got.config_yaml == "modality: vectors\n"
    assert got["trainer_state"] is got.trainer_state
    with pytest.raises(KeyError):
        got["nosuch"]
