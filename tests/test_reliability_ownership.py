"""Guarantee 7: d2v writes only inside run folders it created or that carry its manifest, deletes
only names it recorded, and one writer at a time holds a run folder's lock."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from d2v_core.errors import CheckpointError
from d2v_core.train import checkpoint as ck
from d2v_core.train import run_folder

COMMON = ["--modality", "vectors", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
          "--set", "runtime.device=cpu", "--set", "data.batch_size=4"]


def write_vectors(folder: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(folder / f"seq_{i:03d}.npy", rng.standard_normal((int(rng.integers(20, 40)), 16)).astype(np.float32))
    return folder


def tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` with its SHA-256 (directories as '<dir>')."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[p.relative_to(root).as_posix()] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def users_folder(root: Path) -> Path:
    """A folder of the user's that happens to use d2v's file names."""
    (root / "checkpoints" / "step_00000001").mkdir(parents=True)
    (root / "checkpoints" / "step_00000001" / "notes.txt").write_text("mine")
    (root / "checkpoints" / ".tmp-step_00000002-1").mkdir()
    (root / "checkpoints" / ".trash-old-999999").mkdir()
    for name in ("config.yaml", "run.json", "summary.json"):
        (root / name).write_text(f"the user's {name}\n")
    (root / "metrics.jsonl").write_text("not json, the user's log\n")
    return root


@pytest.mark.parametrize("resume", [False, True])
def test_a_foreign_non_empty_out_is_refused_and_left_as_it_was(tmp_path, example_plugins, cli, resume):
    out = users_folder(tmp_path / "mine")
    before = tree(out)
    code, _, err = cli(["pretrain", *COMMON, "--data", str(write_vectors(tmp_path / "data")), "--out", str(out),
                        "--max-steps", "2", *(["--resume"] if resume else [])])
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --out {out} is not empty and is not a d2v run folder (no d2v-run.json)")
    assert tree(out) == before


def test_a_new_folder_gets_the_manifest_and_reruns_and_resumes_work(tmp_path, example_plugins, cli):
    data, out = write_vectors(tmp_path / "data"), tmp_path / "runs" / "new"
    code, _, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--max-steps", "2"])
    assert code == 0, err
    assert json.loads((out / run_folder.MANIFEST).read_text())["d2v_run"] == 1
    assert not (out / run_folder.LOCK).exists()  # released
    code, _, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--max-steps", "3", "--resume"])
    assert code == 0, err
    assert ck.latest_checkpoint(out).step == 3


def test_a_pre_manifest_d2v_run_is_adopted_by_resume(tmp_path, example_plugins, cli):
    data, out = write_vectors(tmp_path / "data"), tmp_path / "old"
    code, _, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--max-steps", "2"])
    assert code == 0, err
    (out / run_folder.MANIFEST).unlink()  # as written by a d2v without manifests
    (out / run_folder.JOURNAL).unlink()
    code, _, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--max-steps", "4", "--resume",
                        "--set", "runtime.save_every=1", "--set", "runtime.keep_last=1"])
    assert code == 0, err
    assert (out / run_folder.MANIFEST).is_file()
    assert [c.step for c in ck.list_checkpoints(out)] == [4]  # the adopted step-2 checkpoint was d2v's to prune


def test_pruning_and_clean_up_delete_only_names_d2v_recorded(tmp_path, example_plugins, cli):
    data, out = write_vectors(tmp_path / "data"), tmp_path / "run"
    code, _, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--max-steps", "1"])
    assert code == 0, err
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    root = out / "checkpoints"
    users = [root / "step_00000000", root / f".tmp-step_00000005-{int(dead.stdout)}", root / f".trash-step_00000002-{int(dead.stdout)}"]
    for p in users:  # the user's folders inside d2v's run, shaped like d2v's own names
        p.mkdir()
        (p / "keep.txt").write_text("mine")
    code, _, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--max-steps", "4", "--resume",
                        "--set", "runtime.save_every=1", "--set", "runtime.keep_last=1"])
    assert code == 0, err
    assert all((p / "keep.txt").read_text() == "mine" for p in users)
    assert [c.step for c in ck.list_checkpoints(out)] == [4]
    assert sorted(p.name for p in root.iterdir()) == sorted(["step_00000004", *(p.name for p in users)])


def test_a_checkpoint_name_taken_by_a_users_folder_is_never_replaced(tmp_path):
    run, w = tmp_path / "run", torch.zeros(1)
    ck.save_checkpoint(run, 1, {"w": w}, {"w": w}, {}, "x: 1\n", {})
    mine = run / "checkpoints" / "step_00000002"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="exists but was not written by d2v"):
        ck.save_checkpoint(run, 2, {"w": w}, {"w": w}, {}, "x: 1\n", {})
    assert (mine / "keep.txt").read_text() == "mine"


HOLDER = """
import sys, time
from d2v_core.train import run_folder
run_folder.acquire_lock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, example_plugins, cli):
    data, out = write_vectors(tmp_path / "data"), tmp_path / "run"
    code, _, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--max-steps", "1"])
    assert code == 0, err
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree(out)
        code, _, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--max-steps", "2", "--resume"])
        assert code == 2 and err.count("\n") == 1, err
        assert f"is being written by another d2v run (pid {holder.pid} on {socket.gethostname()})" in err
        assert tree(out) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / run_folder.LOCK).exists()  # a SIGKILLed writer leaves its lock: stale, taken over
    code, _, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--max-steps", "2", "--resume"])
    assert code == 0, err
    assert not (out / run_folder.LOCK).exists()


def test_a_lock_from_another_host_is_refused_with_the_way_out(tmp_path, example_plugins, cli):
    data, out = write_vectors(tmp_path / "data"), tmp_path / "run"
    run_folder.claim(out)
    (out / run_folder.LOCK).write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere", "time": time.time()}))
    code, _, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--max-steps", "1"])
    assert code == 2 and "pid" in err and "on elsewhere" in err and f"delete {out / run_folder.LOCK}" in err
    assert not (out / "checkpoints").exists()


def test_out_with_a_hash_is_taken_literally(tmp_path, example_plugins, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["pretrain", *COMMON, "--data", str(write_vectors(tmp_path / "data")), "--out", "runs/exp #3",
                        "--max-steps", "1"])
    assert code == 0, err
    assert ck.latest_checkpoint(tmp_path / "runs" / "exp #3").step == 1
    assert not (tmp_path / "runs" / "exp").exists()


@pytest.mark.parametrize("flag", ["--data", "--out"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_path_flag_is_refused_not_defaulted(tmp_path, example_plugins, cli, monkeypatch, flag, value):
    monkeypatch.chdir(tmp_path)
    args = {"--data": str(write_vectors(tmp_path / "data")), "--out": str(tmp_path / "run")}
    args[flag] = value
    code, out, err = cli(["pretrain", *COMMON, "--max-steps", "1", *[x for kv in args.items() for x in kv]])
    assert code == 2 and err == f"error: {flag} is empty; pass a value (or leave the flag out)\n"
    assert "demo data" not in out and not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_real_pretrain_processes_on_one_out_one_is_refused(tmp_path):
    """The reported case: two ``d2v pretrain`` on one ``--out`` both ran to exit 0, interleaving
    metrics and checkpoints of two seeds. Now the second stops in preflight and changes nothing."""
    root = Path(__file__).resolve().parents[1]
    data, out = write_vectors(tmp_path / "data"), tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(root / "plugins" / "d2v-plugin-example"), "OMP_NUM_THREADS": "1"}
    script = ("import sys; from d2v_core.plugin_loader import plugin_context; from d2v_plugin_example import plugin; "
              "from d2v_cli.app import main\nwith plugin_context(plugin): main(sys.argv[1:])")

    def start(seed: int, steps: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", script, "pretrain", *COMMON, "--data", str(data), "--out", str(out),
                                 "--max-steps", str(steps), "--set", f"runtime.seed={seed}", "--set", "runtime.log_every=1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    first = start(0, 100_000)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)  # the first run holds the lock from preflight on; it is training now
        assert (out / "metrics.jsonl").exists(), first.communicate()
        second = start(1, 3)
        _, err = second.communicate(timeout=120)
        assert first.poll() is None, "the first run ended before the second was checked; make it longer"
        assert second.returncode == 2 and err.count("\n") == 1, err
        assert f"is being written by another d2v run (pid {first.pid} on {socket.gethostname()})" in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))  # one run's rows only
    assert json.loads((out / "summary.json").read_text())["stopped_early"] is True
