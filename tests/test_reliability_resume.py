"""Guarantee 8: ``--resume`` continues the run that was started, or says why not. The stored
config is compared with the new one, weights that do not fit are named, checkpoint files are
checksummed, ``metrics.jsonl`` survives a torn line and holds each step once, and a signal
always ends the run within ``runtime.stop_timeout_s``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from d2v_core.train import checkpoint as ck
from d2v_core.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--modality", "vectors", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
          "--set", "runtime.device=cpu", "--set", "data.batch_size=4", "--set", "runtime.log_every=1"]


def write_vectors(folder: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(folder / f"seq_{i:03d}.npy", rng.standard_normal((int(rng.integers(20, 40)), 16)).astype(np.float32))
    return folder


@pytest.fixture
def run2(tmp_path, example_plugins, cli):
    """A finished 2-step run: (args without --max-steps, run folder)."""
    data, out = write_vectors(tmp_path / "data"), tmp_path / "run"
    args = ["pretrain", *COMMON, "--data", str(data), "--out", str(out)]
    code, _, err = cli([*args, "--max-steps", "2"])
    assert code == 0, err
    return args, out


def _replacing(args: list[str], change: list[str]) -> list[str]:
    """``args`` without the ``--set`` of the path ``change`` sets (a path is given once)."""
    path = change[1].split("=")[0] + "="
    out: list[str] = []
    for a in args:
        if a.startswith(path) and out and out[-1] == "--set":
            out.pop()
        else:
            out.append(a)
    return [*out, *change]


@pytest.mark.parametrize("change, listed", [
    (["--set", "optim.lr=0.002"], "optim.lr (0.001 -> 0.002)"),
    (["--set", "data.batch_size=8"], "data.batch_size (4 -> 8)"),
    (["--set", "runtime.seed=7"], "runtime.seed (0 -> 7)"),
    (["--set", "masking.options.mask_prob=0.3"], "masking.options.mask_prob (0.5 -> 0.3)"),
])
def test_resume_with_a_changed_config_is_refused_listing_the_fields(run2, cli, change, listed):
    args, out = run2
    code, _, err = cli([*_replacing(args, change), "--max-steps", "4", "--resume"])
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --resume with a different config: ") and listed in err and "--allow-config-change" in err
    assert ck.latest_checkpoint(out).step == 2


def test_resume_may_change_steps_intervals_and_workers_and_records_it(run2, cli):
    args, out = run2
    code, _, err = cli([*args, "--max-steps", "4", "--resume", "--set", "runtime.save_every=3", "--set", "data.num_workers=1"])
    assert code == 0, err
    events = json.loads((out / "run.json").read_text())["events"]
    assert [e["event"] for e in events] == ["resume"]
    assert events[0]["changed"] == {"data.num_workers": {"from": 0, "to": 1}, "runtime.max_steps": {"from": 2, "to": 4},
                                    "runtime.save_every": {"from": 25, "to": 3}}
    assert ck.latest_checkpoint(out).step == 4


def test_allow_config_change_continues_and_records_the_change(run2, cli):
    args, out = run2
    code, _, err = cli([*args, "--max-steps", "3", "--resume", "--set", "optim.lr=0.002", "--allow-config-change"])
    assert code == 0, err
    changed = json.loads((out / "run.json").read_text())["events"][-1]["changed"]
    assert changed["optim.lr"] == {"from": 0.001, "to": 0.002}


def test_a_changed_width_names_the_tensors_that_do_not_fit(run2, cli):
    args, out = run2
    code, _, err = cli([*args, "--max-steps", "3", "--resume", "--set", "model.dim=48", "--set", "model.ffn_dim=96",
                        "--allow-config-change"])
    assert code == 1 and err.count("\n") == 1, err
    assert "does not fit this config" in err and "in the checkpoint" in err and "(32" in err and "48" in err


def test_a_flipped_bit_in_the_weights_is_refused(run2, cli):
    args, out = run2
    f = ck.latest_checkpoint(out).path / "student.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x10  # one bit of one weight: still a valid safetensors file
    f.write_bytes(bytes(raw))
    load_file(str(f))
    code, _, err = cli([*args, "--max-steps", "3", "--resume"])
    assert code == 1 and err.count("\n") == 1, err
    assert "student.safetensors does not match the checksum recorded when it was written" in err


def test_int8_weights_are_refused_not_cast(run2, cli):
    args, out = run2
    path = ck.latest_checkpoint(out).path
    state = load_file(str(path / "student.safetensors"))
    save_file({k: v.to(torch.int8) if v.is_floating_point() else v for k, v in state.items()}, str(path / "student.safetensors"))
    code, _, err = cli([*args, "--max-steps", "3", "--resume"])
    assert code == 1 and "student.safetensors does not match the checksum" in err
    meta = json.loads((path / "meta.json").read_text())
    del meta["sha256"]  # a checkpoint without checksums (older d2v): the dtype check remains
    (path / "meta.json").write_text(json.dumps(meta))
    code, _, err = cli([*args, "--max-steps", "3", "--resume"])
    assert code == 1 and err.count("\n") == 1 and "dtype torch.int8 in the checkpoint, torch.float32 in this model" in err


def test_a_torn_last_metrics_line_does_not_stop_resume(run2, cli):
    args, out = run2
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.1')  # a kill in the middle of a write
    code, _, err = cli([*args, "--max-steps", "4", "--resume"])
    assert code == 0, err
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert all(line.endswith("}") for line in (out / "metrics.jsonl").read_text().splitlines())


def test_steps_logged_after_the_last_checkpoint_are_logged_once_after_resume(tmp_path, example_plugins, cli, monkeypatch):
    data, out = write_vectors(tmp_path / "data"), tmp_path / "run"
    args = ["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--set", "runtime.save_every=2", "--max-steps", "6"]
    real = ck.save_checkpoint

    def killed_at_4(run_dir, step, *a, **kw):  # type: ignore[no-untyped-def]
        if step == 4:  # steps 3 and 4 are logged, their checkpoint never lands: what a kill leaves
            raise KeyboardInterrupt
        return real(run_dir, step, *a, **kw)

    monkeypatch.setattr(ck, "save_checkpoint", killed_at_4)
    code, _, _ = cli(args)
    assert code == 130 and [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    monkeypatch.setattr(ck, "save_checkpoint", real)

    code, _, err = cli([*args, "--resume"])
    assert code == 0, err
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5, 6]


def test_a_signal_during_the_final_checkpoint_reports_a_finished_run(tmp_path, example_plugins, cli, monkeypatch):
    data, out = write_vectors(tmp_path / "data"), tmp_path / "run"
    real = ck.save_checkpoint

    def signalled(run_dir, step, *a, **kw):  # type: ignore[no-untyped-def]
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # lands while the final checkpoint is written
        return real(run_dir, step, *a, **kw)

    monkeypatch.setattr(ck, "save_checkpoint", signalled)
    code, stdout, err = cli(["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--max-steps", "3"])
    assert code == 0, err
    assert "done: step 3" in stdout and "before step" not in err
    assert ck.latest_checkpoint(out).step == 3
    assert json.loads((out / "summary.json").read_text())["stopped_early"] is False


HANGING = """
import sys, time
from pathlib import Path
import numpy as np
from d2v_plugin_example import data

real = data.VectorRecordDecoder.decode
marker = Path(sys.argv[1])


def decode(self, record, generator=None):
    if record["__key__"] == "seq_005":
        marker.write_text("hanging")
        while True:  # a plugin's decoder that never returns
            time.sleep(0.05)
    return real(self, record, generator)


data.VectorRecordDecoder.decode = decode
from d2v_core.plugin_loader import plugin_context
from d2v_plugin_example import plugin
from d2v_cli.app import main

with plugin_context(plugin):
    main(sys.argv[2:])
"""


@pytest.mark.slow
def test_one_sigterm_ends_a_run_whose_decoder_hangs(tmp_path):
    data, out, marker = write_vectors(tmp_path / "data"), tmp_path / "run", tmp_path / "hanging"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins" / "d2v-plugin-example")}
    proc = subprocess.Popen(
        [sys.executable, "-c", HANGING, str(marker), "pretrain", *COMMON, "--data", str(data), "--out", str(out),
         "--max-steps", "50", "--set", "data.shuffle_buffer=0", "--set", "runtime.stop_timeout_s=3",
         "--set", "runtime.save_every=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        raise AssertionError("one SIGTERM did not end the run within 60 s") from exc
    waited = time.time() - sent
    assert proc.returncode == 143, err
    assert "SIGTERM received, but the run did not stop within 3 s" in err and "a record decoder or another rank" in err
    assert waited < 30, waited
    assert ck.latest_checkpoint(out) is not None  # the checkpoints written before stay complete
