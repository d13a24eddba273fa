"""End to end through ``d2v pretrain`` with the example 'vectors' modality: learning, checkpoints,
exact resume, 2-process DDP (gloo) against 1 process, and clear errors before training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from d2v_core.train.checkpoint import list_checkpoints, load_checkpoint
from d2v_core.train.metrics import read_metrics

WORKER = Path(__file__).with_name("pretrain_worker.py")


def write_vectors(folder: Path, n: int = 32, seed: int = 0) -> Path:
    """Structured sequences (sums of sinusoids) that a model can learn to predict from context."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        T = int(rng.integers(40, 65))
        t = np.arange(T)[:, None]
        x = np.sin(rng.uniform(0.05, 0.4, (1, 16)) * t + rng.uniform(0, 6.3, (1, 16)))
        np.save(folder / f"seq_{i:03d}.npy", (x + 0.05 * rng.standard_normal((T, 16))).astype(np.float32))
    return folder


def run_worker(args: list[str], *, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(WORKER), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and res.returncode != 0:
        raise AssertionError(f"exit {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}")
    return res


def losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run_dir)}


COMMON = ["--modality", "vectors", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
          "--set", "runtime.log_every=1"]


@pytest.mark.slow
def test_pretrain_learns_and_writes_checkpoints(tmp_path):
    data = write_vectors(tmp_path / "data")
    out = tmp_path / "run"
    res = run_worker([*COMMON, "--data", str(data), "--out", str(out), "--max-steps", "60",
                      "--set", "runtime.save_every=20", "--set", "runtime.keep_last=2", "--set", "optim.lr=2e-3"])
    assert "done: step 60" in res.stdout
    loss = losses(out)
    first, last = np.mean([loss[s] for s in range(1, 11)]), np.mean([loss[s] for s in range(51, 61)])
    assert last < 0.8 * first, f"loss did not decrease: {first:.3f} -> {last:.3f}"
    assert [c.step for c in list_checkpoints(out)] == [40, 60]  # keep_last=2
    ck = load_checkpoint(out)
    assert ck["meta"]["step"] == 60 and ck["meta"]["versions"]["d2v"]
    assert yaml.safe_load(ck["config_yaml"])["modality"] == "vectors"
    assert any(k.startswith("transformer.layers.0.") for k in ck["student"])
    assert "encoder.proj.weight" not in ck["teacher"]  # excluded from the teacher by the preset
    assert ck["trainer_state"]["step"] == 60
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 60


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    data = write_vectors(tmp_path / "data", n=20)  # 20 records / batch 8: epochs end mid-run
    args = [*COMMON, "--data", str(data), "--max-steps", "12", "--set", "runtime.save_every=5",
            "--set", "runtime.keep_last=5", "--set", "model.dropout=0.1"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_worker([*args, "--out", str(full)])
    run_worker([*args, "--out", str(part)])
    # simulate a crash right after the step-5 checkpoint: later checkpoints and metrics are gone
    for c in list_checkpoints(part):
        if c.step > 5:
            shutil.rmtree(c.path)
    lines = (part / "metrics.jsonl").read_text().splitlines()[:5]
    (part / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    refused = run_worker([*args, "--out", str(part)], check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr  # never overwrite a run silently
    run_worker([*args, "--out", str(part), "--resume"])
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(1, 13))
    for step in range(6, 13):
        assert b[step] == pytest.approx(a[step], abs=1e-6), step


def assert_two_processes_match_one(args: list[str], tmp_path: Path, steps: int) -> Path:
    """Run ``args`` in 1 process and under torchrun with 2 (gloo); every step's loss must agree to
    1e-5, and so must the collapse statistics (the std over both ranks' rows equals the one
    process's std over the same rows). Returns the 1-process run directory."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_worker([*args, "--out", str(one)])
    run_worker([*args, "--out", str(two)], nproc=2)
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5), (step, a[step], b[step])
    for m1, m2 in zip(read_metrics(one), read_metrics(two), strict=True):
        for key in ("pred_var", "target_var"):
            assert m2[key] == pytest.approx(m1[key], rel=1e-5), (m1["step"], key, m1[key], m2[key])
    return one


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path):
    data = write_vectors(tmp_path / "data", n=24)
    args = [*COMMON, "--data", str(data), "--max-steps", "6", "--masker", "stripes",
            "--set", "data.batch_size=8", "--set", "runtime.device=cpu"]
    assert_two_processes_match_one(args, tmp_path, steps=6)


@pytest.mark.slow
def test_two_process_gloo_matches_one_process_with_the_data2vec2_student(tmp_path):
    """Multi-mask, sparse student and decoder under DDP (the unused mask embedding included):
    2 processes with half the batch each reproduce one process (noise and dropout off)."""
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(16):  # equal lengths: the equal-count masks do not depend on the batch
        t = np.arange(48)[:, None]
        x = np.sin(rng.uniform(0.05, 0.4, (1, 16)) * t + rng.uniform(0, 6.3, (1, 16)))
        np.save(data / f"seq_{i:03d}.npy", x.astype(np.float32))
    args = [*COMMON, "--data", str(data), "--max-steps", "4", "--masker", "equal-stripes",
            "--set", "data.batch_size=8", "--set", "runtime.device=cpu", "--set", "masking.clone_batch=3",
            "--set", "decoder.name=conv1d", "--set", "decoder.options.channels=16",
            "--set", "decoder.options.input_dropout=0", "--set", "decoder.mask_noise_std=0"]
    one = assert_two_processes_match_one(args, tmp_path, steps=4)
    assert read_metrics(one)[-1]["sample_size"] == 8 * 3 * 16  # 16 of 48 steps in each of 8 x 3 clones


def test_errors_before_training(tmp_path, example_plugins, cli):
    code, _, err = cli(["pretrain", "--modality", "vectors", "--data", str(tmp_path / "shards/x-{000000..000003}.tar"),
                        "--out", str(tmp_path / "o")])
    assert code != 0 and err.startswith("error: ") and err.count("\n") == 1 and "x-000000.tar" in err
    data = write_vectors(tmp_path / "data", n=4)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = cli(["pretrain", "--modality", "vectors", "--data", str(data), "--out", str(blocker / "run")])
    assert code == 2 and "not writable" in err and err.count("\n") == 1
    code, _, err = cli(["pretrain", "--modality", "vectors", "--data", str(data), "--out", str(tmp_path / "o2"),
                        "--set", "data.batch_size=8", "--set", "optim.accum_steps=3"])
    assert code == 2 and "does not divide" in err and err.count("\n") == 1
    assert not (tmp_path / "o2" / "checkpoints").exists()
