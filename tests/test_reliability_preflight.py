"""Guarantee 4: problems that would only show up later (no room for a checkpoint, no data, a
batch that does not split, an invalid config) stop the run before training: one line, a non-zero
exit, nothing written under ``checkpoints/``. (Output not writable, a brace pattern naming missing
shards and accumulation not dividing the batch: ``tests/test_pretrain_e2e.py::test_errors_before_training``.)"""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from d2v_core.config import RunConfig
from d2v_core.errors import PreflightError
from d2v_core.train.preflight import check_batch, checkpoint_bytes

COMMON = ["--modality", "vectors", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
          "--set", "runtime.device=cpu"]
DiskUsage = namedtuple("DiskUsage", "total used free")


def write_vectors(folder: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(folder / f"seq_{i:03d}.npy", rng.standard_normal((int(rng.integers(20, 40)), 16)).astype(np.float32))
    return folder


def assert_refused_before_training(code: int, err: str, out_dir: Path, expected_code: int, *needles: str) -> None:
    assert code == expected_code, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert not (out_dir / "checkpoints").exists() and not (out_dir / "metrics.jsonl").exists()


def test_no_room_for_a_checkpoint(tmp_path, monkeypatch, example_plugins, cli):
    calls = []

    def disk_usage(path):  # type: ignore[no-untyped-def]
        calls.append(Path(path))
        return DiskUsage(10 * 2**20, 10 * 2**20 - 4096, 4096)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    out = tmp_path / "run"
    code, _, err = cli(["pretrain", *COMMON, "--data", str(write_vectors(tmp_path / "data")), "--out", str(out)])
    assert_refused_before_training(code, err, out, 2, f"not enough disk space in {out}: 0 MiB free", "choose another --out")
    assert out in calls


def test_checkpoint_size_estimate_counts_student_teacher_and_adam_moments():
    assert checkpoint_bytes(1_000_000) == int(1_000_000 * 4 * 4 * 1.2)  # 4 fp32 copies, 20% headroom


@pytest.mark.parametrize("pattern, exit_code", [("shards/*.tar", 2), ("shards/x-{000000..000001}.tar", 2), ("missing-folder", 2),
                                               ("empty-folder", 1)])
def test_data_that_matches_nothing(tmp_path, example_plugins, cli, pattern, exit_code):
    """A path or pattern that names nothing is a usage error (2); a folder without usable files, a data error (1)."""
    (tmp_path / "empty-folder").mkdir()
    out = tmp_path / "run"
    code, _, err = cli(["pretrain", *COMMON, "--data", str(tmp_path / pattern), "--out", str(out)])
    assert_refused_before_training(code, err, out, exit_code, str(tmp_path / pattern).split("{")[0].split("*")[0])


@pytest.mark.parametrize("world_size, accum, batch, ok", [(2, 1, 8, True), (2, 1, 7, False), (4, 2, 8, True), (4, 2, 12, False), (3, 1, 8, False)])
def test_batch_must_divide_over_ranks_and_accumulation(world_size, accum, batch, ok):
    cfg = RunConfig.model_validate({"modality": "vectors", "data": {"batch_size": batch}, "optim": {"accum_steps": accum}})
    if ok:
        assert check_batch(cfg, world_size) * world_size * accum == batch
    else:
        with pytest.raises(PreflightError, match=rf"data.batch_size {batch} does not divide over {world_size} rank\(s\) x {accum}"):
            check_batch(cfg, world_size)


@pytest.mark.parametrize(
    "override, needle",
    [("optim.lr=abc", "optim.lr"), ("data.batch_size=0", "data.batch_size"), ("runtime.precision=fp8", "runtime.precision"),
     ("model.no_such_field=1", "no_such_field"), ("data.max_bad_fraction=0", "max_bad_fraction")],
)
def test_invalid_config(tmp_path, example_plugins, cli, override, needle):
    out = tmp_path / "run"
    code, _, err = cli(["pretrain", *COMMON, "--data", str(write_vectors(tmp_path / "data")), "--out", str(out), "--set", override])
    assert_refused_before_training(code, err, out, 2, needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu(tmp_path, example_plugins, cli):
    out = tmp_path / "run"
    code, _, err = cli(["pretrain", "--modality", "vectors", "--data", str(write_vectors(tmp_path / "data")), "--out", str(out),
                        "--set", "runtime.device=cuda"])
    assert_refused_before_training(code, err, out, 2, "no CUDA device")


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path, example_plugins, cli):
    from d2v_core.train.checkpoint import save_checkpoint

    out = tmp_path / "run"
    w = torch.zeros(1)
    save_checkpoint(out, 3, {"w": w}, {"w": w}, {"step": 3}, "x: 1\n", {})
    code, _, err = cli(["pretrain", *COMMON, "--data", str(write_vectors(tmp_path / "data")), "--out", str(out)])
    assert code == 2 and err.count("\n") == 1 and "already holds checkpoints (latest: step 3)" in err and "--resume" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000003"]
