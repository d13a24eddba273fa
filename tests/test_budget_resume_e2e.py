"""``d2v pretrain`` under a token budget (data.max_tokens): an interrupted run resumed mid-epoch
reproduces the uninterrupted one bit for bit, and 2 gloo ranks each take distinct batches and as
many of them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from d2v_core.train.checkpoint import list_checkpoints
from d2v_core.train.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain_e2e import COMMON, losses, run_worker, write_vectors  # noqa: E402


@pytest.mark.slow
def test_budget_resume_reproduces_an_uninterrupted_run(tmp_path):
    data = write_vectors(tmp_path / "data", n=20)  # lengths 40..64: about 5 per 320-step budget
    args = [*COMMON, "--data", str(data), "--max-steps", "12", "--set", "runtime.save_every=5",
            "--set", "runtime.keep_last=5", "--set", "model.dropout=0.1", "--set", "data.max_tokens=320"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_worker([*args, "--out", str(full)])
    run_worker([*args, "--out", str(part)])
    for c in list_checkpoints(part):
        if c.step > 5:
            shutil.rmtree(c.path)
    lines = (part / "metrics.jsonl").read_text().splitlines()[:5]
    (part / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    run_worker([*args, "--out", str(part), "--resume"])
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(1, 13))
    for step in range(6, 13):
        assert b[step] == a[step], step  # bit for bit
    samples = [m["samples"] for m in read_metrics(full)]
    assert min(samples) >= 4 and max(samples) <= 8  # 320 // 64 .. 320 // 40 records per batch
    assert len(set(samples)) > 1  # the count follows the lengths


@pytest.mark.slow
def test_budget_two_ranks_run_the_same_number_of_steps(tmp_path):
    data = write_vectors(tmp_path / "data", n=24)
    args = [*COMMON, "--data", str(data), "--max-steps", "8", "--masker", "stripes", "--set", "runtime.device=cpu",
            "--set", "data.max_tokens=256", "--out", str(tmp_path / "two")]
    # 24 records make 4-6 budget batches per epoch: 8 steps cross epoch ends, which the ranks must
    # reach together (the checkpoint keeps rank 0's epoch position for every rank)
    run_worker(args, nproc=2)
    metrics = read_metrics(tmp_path / "two")
    assert [m["step"] for m in metrics] == list(range(1, 9))
    # both ranks' records, each at most 256 // 40 (the shortest sequence); one batch per epoch,
    # the longest-first fill's remainder, may hold a single record
    assert all(2 <= m["samples"] <= 2 * 6 for m in metrics) and max(m["samples"] for m in metrics) >= 2 * 4
