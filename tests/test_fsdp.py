"""``runtime.distributed: fsdp`` (FSDP2 on gloo): 2 processes reproduce 1 process step by step,
checkpoints have the DDP layout, and a resumed 2-process run matches an uninterrupted one (with
activation checkpointing inside the sharded layers)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from d2v_core.train.checkpoint import list_checkpoints

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pretrain_e2e import COMMON, assert_two_processes_match_one, losses, run_worker, write_vectors  # noqa: E402


def _weights(run, step: int, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / f"{name}.safetensors"))


@pytest.mark.slow
def test_two_process_fsdp_matches_one_process_and_resumes_exactly(tmp_path):
    data = write_vectors(tmp_path / "data", n=24)
    args = [*COMMON, "--data", str(data), "--max-steps", "6", "--masker", "stripes", "--set", "data.batch_size=8",
            "--set", "runtime.device=cpu", "--set", "runtime.distributed=fsdp", "--set", "optim.clip_norm=1.0",
            "--set", "runtime.save_every=3", "--set", "runtime.keep_last=5", "--set", "model.dropout=0.0",
            "--set", "model.activation_checkpointing=true"]
    one = assert_two_processes_match_one(args, tmp_path, steps=6)  # 1 process: unsharded
    two = tmp_path / "two"
    for name in ("student", "teacher"):  # gathered on rank 0: the layout and values of a 1-process run
        a, b = _weights(one, 6, name), _weights(two, 6, name)
        assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=f"{name} {k}")

    part = tmp_path / "part"  # a crash right after the step-3 checkpoint
    shutil.copytree(two, part)
    for c in list_checkpoints(part):
        if c.step > 3:
            shutil.rmtree(c.path)
    lines = (part / "metrics.jsonl").read_text().splitlines()[:3]
    (part / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    run_worker([*args, "--out", str(part), "--resume"], nproc=2)
    full, resumed = losses(two), losses(part)
    assert sorted(resumed) == list(range(1, 7))
    for step in range(4, 7):
        assert resumed[step] == pytest.approx(full[step], abs=1e-6), step
    for name in ("student", "teacher"):
        a, b = _weights(two, 6, name), _weights(part, 6, name)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=f"{name} {k}")
