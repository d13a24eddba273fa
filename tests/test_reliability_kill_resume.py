"""Guarantee 1: a run killed at any point (SIGKILL, also in the middle of writing a checkpoint)
resumes from its last complete checkpoint and ends with the weights of an uninterrupted run;
SIGINT / SIGTERM stop after writing a checkpoint.

This file is also the test worker: ``python tests/test_reliability_kill_resume.py ARGS`` runs
``d2v pretrain ARGS`` (through ``tests/pretrain_worker.py``) after installing test-only hooks that
environment variables switch on. The library has no such hooks:

- ``D2V_TEST_KILL_AT=STEP:FILE``: SIGKILL itself right after ``FILE`` of the step-``STEP``
  checkpoint was written into its temporary directory (a torn checkpoint on disk).
- ``D2V_TEST_KILL_AT=prune``: SIGKILL itself while deleting the first pruned checkpoint, after
  one of its files is gone (a half-deleted checkpoint on disk).
- ``D2V_TEST_PAUSE_AFTER_STEP=K``: after update K, write ``OUT/paused-rank<R>`` (holding the pid)
  and wait up to ``D2V_TEST_PAUSE_S`` seconds (default 60) for a stop signal, so that the test
  sends its signal at a known step.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

MAX_STEPS = 10
COMMON = ["--modality", "vectors", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
          "--set", "runtime.log_every=1", "--set", "runtime.deterministic=true", "--set", "model.dropout=0.1",
          "--set", "runtime.device=cpu"]


# -- the worker side -----------------------------------------------------------------------------

def _install_test_hooks() -> None:
    from d2v_core.train import checkpoint as ck
    from d2v_core.train.trainer import Trainer

    kill_at = os.environ.get("D2V_TEST_KILL_AT")
    if kill_at == "prune":
        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):  # type: ignore[no-untyped-def]
            if Path(path).name.startswith(".trash-step_"):
                next(iter(sorted(Path(path).iterdir()))).unlink()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif kill_at:
        step, target = kill_at.split(":")
        real_save_file, real_torch_save = ck.save_file, torch.save

        def maybe_die(filename) -> None:  # type: ignore[no-untyped-def]
            f = Path(filename)
            if f.name == target and f.parent.name.startswith(f".tmp-step_{int(step):08d}-"):
                os.kill(os.getpid(), signal.SIGKILL)

        def save_file(tensors, filename, *args, **kwargs):  # type: ignore[no-untyped-def]
            real_save_file(tensors, filename, *args, **kwargs)
            maybe_die(filename)

        def torch_save(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
            real_torch_save(obj, f, *args, **kwargs)
            maybe_die(f)

        ck.save_file, torch.save = save_file, torch_save

    pause = os.environ.get("D2V_TEST_PAUSE_AFTER_STEP")
    if pause:
        real_step, wait_s = Trainer.train_step, float(os.environ.get("D2V_TEST_PAUSE_S", "60"))

        def train_step(self):  # type: ignore[no-untyped-def]
            metrics = real_step(self)
            if self.step == int(pause):
                (self.run_dir / f"paused-rank{self.dist.rank}").write_text(str(os.getpid()))
                deadline = time.time() + wait_s
                while not self._stop and time.time() < deadline:
                    time.sleep(0.02)
            return metrics

        Trainer.train_step = train_step


if __name__ == "__main__":
    sys.path.insert(0, str(THIS.parent))
    _install_test_hooks()
    from pretrain_worker import main  # noqa: E402

    main(sys.argv[1:])
    sys.exit(0)


# -- the test side -------------------------------------------------------------------------------

def write_vectors(folder: Path, n: int = 20, seed: int = 0) -> Path:
    """n sequences (T in 40..64, 16 features) of noisy sinusoids."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        t = np.arange(int(rng.integers(40, 65)))[:, None]
        x = np.sin(rng.uniform(0.05, 0.4, (1, 16)) * t + rng.uniform(0, 6.3, (1, 16)))
        np.save(folder / f"seq_{i:03d}.npy", (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32))
    return folder


def start_worker(args: list[str], log: Path, env: dict[str, str] | None = None, nproc: int = 1) -> subprocess.Popen:
    """Start the worker in its own session (so a test can signal its whole process group)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    if nproc == 1:
        cmd = [sys.executable, str(THIS), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(THIS), *args]
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 120) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as err:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"worker hung; output:\n{log.read_text()[-3000:]}") from err
    return code, log.read_text()


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) before {path.name} appeared:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def deterministic_torch():
    """In-process runs set torch's global deterministic mode and thread count; restore both."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # the workers run with OMP_NUM_THREADS=1: same reduction order
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


@pytest.fixture
def data(tmp_path):
    return write_vectors(tmp_path / "data")  # 20 records, batch 8: epochs end mid-run


def run_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [*COMMON, "--data", str(data), "--out", str(out), "--max-steps", str(MAX_STEPS), *extra]


def pretrain_in_process(args: list[str], cli) -> str:  # type: ignore[no-untyped-def]
    code, out, err = cli(["pretrain", *args])
    assert code == 0, err
    return out


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{MAX_STEPS:08d}" / "student.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def step_dirs(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


@pytest.fixture
def reference(tmp_path, data, example_plugins, cli, deterministic_torch):
    """Final student weights of an uninterrupted run."""
    out = tmp_path / "reference"
    pretrain_in_process(run_args(data, out, "--set", "runtime.save_every=5"), cli)
    return final_weights(out)


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path, data, reference, cli):
    from d2v_core.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

    run = tmp_path / "killed"
    args = run_args(data, run, "--set", "runtime.save_every=2", "--set", "runtime.keep_last=2")
    log = tmp_path / "killed.log"
    code, text = finish(start_worker(args, log, {"D2V_TEST_KILL_AT": "6:student.safetensors"}), log)
    assert code == -signal.SIGKILL, text
    torn = [n for n in step_dirs(run) if n.startswith(".tmp-step_00000006-")]
    assert torn and step_dirs(run) == [*torn, "step_00000002", "step_00000004"]
    assert sorted(p.name for p in (run / "checkpoints" / torn[0]).iterdir()) == ["student.safetensors"]
    assert [c.step for c in list_checkpoints(run)] == [2, 4] and latest_checkpoint(run).step == 4
    assert load_checkpoint(run)["trainer_state"]["step"] == 4

    out = pretrain_in_process([*args, "--resume"], cli)
    assert f"done: step {MAX_STEPS}" in out
    assert not [n for n in step_dirs(run) if n.startswith(".")]  # the torn write was cleaned up
    assert_same_weights(final_weights(run), reference)


@pytest.mark.slow
def test_kill_while_pruning_never_leaves_a_half_deleted_checkpoint(tmp_path, data, reference, cli):
    from d2v_core.train.checkpoint import list_checkpoints, load_checkpoint

    run = tmp_path / "killed"
    args = run_args(data, run, "--set", "runtime.save_every=2", "--set", "runtime.keep_last=2")
    log = tmp_path / "killed.log"
    code, text = finish(start_worker(args, log, {"D2V_TEST_KILL_AT": "prune"}), log)
    assert code == -signal.SIGKILL, text
    # step 6 was complete, step 2 was being deleted: it is out of sight, half gone, under .trash-
    names = step_dirs(run)
    trash = [n for n in names if n.startswith(".trash-step_00000002-")]
    assert trash and [n for n in names if not n.startswith(".")] == ["step_00000004", "step_00000006"]
    assert len(list((run / "checkpoints" / trash[0]).iterdir())) < len(list((run / "checkpoints" / "step_00000004").iterdir()))
    assert [c.step for c in list_checkpoints(run)] == [4, 6]
    for c in list_checkpoints(run):
        assert load_checkpoint(c.path)["trainer_state"]["step"] == c.step

    pretrain_in_process([*args, "--resume"], cli)
    assert not [n for n in step_dirs(run) if n.startswith(".")]
    assert_same_weights(final_weights(run), reference)


def wait_until_step(run: Path, step: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Until ``metrics.jsonl`` (logged every step, before that step's checkpoint) reaches ``step``."""
    metrics, deadline = run / "metrics.jsonl", time.time() + timeout
    while True:
        if metrics.exists():
            steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")]
            if steps and max(steps) >= step:
                return
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) before step {step}:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"step {step} not reached in {timeout} s")
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path, data, reference, cli):
    """Checkpoint every step, kill twice at a random step plus a random fraction of a step (so
    the kill often lands inside a checkpoint write or a prune), resume, compare the weights.
    The seed is printed on failure; ``D2V_TEST_KILL_SEED`` replays it."""
    from d2v_core.train.checkpoint import list_checkpoints, load_checkpoint

    seed = int(os.environ.get("D2V_TEST_KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    run = tmp_path / "killed"
    args = run_args(data, run, "--set", "runtime.save_every=1", "--set", "runtime.keep_last=2")
    kill_steps = sorted(rng.sample(range(1, MAX_STEPS - 1), 2))
    killed = 0
    for attempt, step in enumerate(kill_steps):
        log = tmp_path / f"attempt{attempt}.log"
        proc = start_worker([*args, "--resume"], log)
        wait_until_step(run, step, proc, log)
        time.sleep(rng.uniform(0.0, 0.08))
        proc.send_signal(signal.SIGKILL)
        code, text = finish(proc, log)
        assert code in (-signal.SIGKILL, 0), f"seed {seed}: {text[-2000:]}"
        killed += code == -signal.SIGKILL
        for c in list_checkpoints(run):  # wherever the kill landed, every complete-looking checkpoint loads
            loaded = load_checkpoint(c.path)
            assert loaded["trainer_state"]["step"] == loaded["meta"]["step"] == c.step, f"seed {seed}"
    assert killed >= 1, f"seed {seed}: the runs finished before the kills"
    pretrain_in_process([*args, "--resume"], cli)
    assert not [n for n in step_dirs(run) if n.startswith(".")], f"seed {seed}"
    assert_same_weights(final_weights(run), reference)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, group, workers",
    [(signal.SIGINT, False, 0),  # Ctrl-C reaching the trainer
     (signal.SIGTERM, True, 2)],  # scancel / docker stop: the whole process group, DataLoader workers too
    ids=["sigint", "sigterm-process-group-with-workers"],
)
def test_stop_signal_writes_a_checkpoint_and_the_run_resumes_exactly(tmp_path, data, reference, cli, sig, group, workers):
    from d2v_core.train.checkpoint import latest_checkpoint

    run = tmp_path / "stopped"
    args = run_args(data, run, "--set", "runtime.save_every=5", "--set", f"data.num_workers={workers}")
    log = tmp_path / "stopped.log"
    proc = start_worker(args, log, {"D2V_TEST_PAUSE_AFTER_STEP": "3"})
    wait_for(run / "paused-rank0", proc, log)
    (os.killpg if group else os.kill)(proc.pid, sig)
    code, text = finish(proc, log)
    assert code == 128 + sig, text
    assert "stopped on signal: step 3" in text and f"stopped by {signal.Signals(sig).name}" in text, text
    assert "Traceback" not in text and "error:" not in text, text
    assert latest_checkpoint(run).step == 3
    assert json.loads((run / "summary.json").read_text())["stopped_early"] is True
    pretrain_in_process([*args, "--resume"], cli)
    assert_same_weights(final_weights(run), reference)


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_all_ranks_at_the_same_step(tmp_path, data):
    """Ranks agree on stopping; otherwise rank 0 would wait in the next all-reduce for a rank
    that already left."""
    from d2v_core.train.checkpoint import latest_checkpoint

    run = tmp_path / "ddp"
    args = run_args(data, run, "--set", "runtime.save_every=100", "--set", "data.batch_size=8")
    log = tmp_path / "ddp.log"
    proc = start_worker(args, log, {"D2V_TEST_PAUSE_AFTER_STEP": "3", "D2V_TEST_PAUSE_S": "2"}, nproc=2)
    wait_for(run / "paused-rank1", proc, log)
    os.kill(int((run / "paused-rank1").read_text()), signal.SIGTERM)  # rank 1 only
    code, text = finish(proc, log, timeout=90)
    assert latest_checkpoint(run) is not None and latest_checkpoint(run).step == 3, text
    # Both ranks left the loop after step 3. Only count rank 0's line: once one rank exits with 143,
    # torchrun may terminate the other before its own line is printed.
    assert "stopped on signal: step 3" in text, text
    assert re.findall(r"stopped on signal: step (\d+)", text) in (["3"], ["3", "3"]), text
    assert code != 0  # torchrun reports the ranks' exit 143


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie (exited, not yet reaped by torchrun) is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_one_sigterm_ends_rank_0_while_another_rank_is_stopped(tmp_path, data):
    """A SIGSTOPped rank never answers the all-reduce: rank 0's watchdog ends it anyway, within
    ``runtime.stop_timeout_s`` (3 s here) plus start-up slack, not after gloo's 30-minute timeout."""
    run = tmp_path / "ddp"
    args = run_args(data, run, "--set", "runtime.save_every=100", "--set", "data.batch_size=8",
                    "--set", "runtime.stop_timeout_s=3")
    log = tmp_path / "ddp.log"
    proc = start_worker(args, log, {"D2V_TEST_PAUSE_AFTER_STEP": "3", "D2V_TEST_PAUSE_S": "30"}, nproc=2)
    wait_for(run / "paused-rank0", proc, log)
    wait_for(run / "paused-rank1", proc, log)
    rank0, rank1 = (int((run / f"paused-rank{r}").read_text()) for r in (0, 1))
    os.kill(rank1, signal.SIGSTOP)
    try:
        sent = time.time()
        os.kill(rank0, signal.SIGTERM)
        while not _gone(rank0) and time.time() - sent < 60:
            time.sleep(0.1)
        waited = time.time() - sent
        assert _gone(rank0), f"rank 0 still running 60 s after SIGTERM:\n{log.read_text()[-3000:]}"
        assert waited < 30, waited
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rank1, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "SIGTERM received, but the run did not stop within 3 s" in log.read_text(), log.read_text()[-3000:]
