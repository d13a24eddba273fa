"""What a user sees: plain log lines off a terminal, rank 0 only, threads, single-file embed with
progress, presets in list-plugins, one exit code for usage errors, short errors, help texts."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from d2v_core.loggers import LoggerContext
from d2v_core.train.metrics import MetricsWriter, plain_line

WORKER = Path(__file__).with_name("pretrain_worker.py")
BASE = ["pretrain", "--modality", "vectors", "--set", "runtime.tensorboard=false", "--set", "data.batch_size=8"]
LINE = re.compile(r"^step (\d+)/(\d+) loss \S+ rel_loss \S+ lr \S+ tau \S+ target_var \S+ samples/s \S+ eta (\d+:\d\d:\d\d|\?)$")


def vectors(folder: Path, n: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(folder / f"seq_{i:03d}.npy", rng.standard_normal((int(rng.integers(30, 50)), 16)).astype(np.float32))
    return folder


# -- logs ------------------------------------------------------------------------------------------


def test_off_a_terminal_one_plain_line_per_log_every_steps(tmp_path, example_plugins, cli):
    run = tmp_path / "run"
    code, out, err = cli([*BASE, "--data", str(vectors(tmp_path / "d")), "--out", str(run), "--max-steps", "6",
                          "--set", "runtime.log_every=2", "--set", "runtime.progress=true"])
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [LINE.match(line).group(1) for line in lines] == ["2", "4", "6"], out  # full lines, never cut
    assert all(len(line) > 80 for line in lines)  # longer than a terminal's default width, and whole
    assert not any("\x1b[" in line or "━" in line for line in out.splitlines())  # no bar, no escape codes
    final = out.splitlines()[-1]
    ckpt = run / "checkpoints" / "step_00000006"
    assert final.startswith("done: step 6/6, last loss ") and final.endswith(f"checkpoint {ckpt}") and ckpt.is_dir()


def test_plain_lines_also_with_progress_false(tmp_path, example_plugins, cli):
    code, out, err = cli([*BASE, "--data", str(vectors(tmp_path / "d")), "--out", str(tmp_path / "run"), "--max-steps", "3",
                          "--set", "runtime.log_every=1", "--set", "runtime.progress=false"])
    assert code == 0, err
    assert [m.group(1) for m in map(LINE.match, out.splitlines()) if m] == ["1", "2", "3"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_rich_bar_instead_of_lines(tmp_path):
    tty = _Terminal()
    logger = MetricsWriter(LoggerContext(tmp_path, max_steps=4), stream=tty)
    assert logger._progress is not None  # the rich bar, writing to that terminal
    logger.log(2, {"loss": 1.5, "rel_loss": 0.5, "lr": 1e-4})
    logger.close()
    assert "step 2/4" in tty.getvalue() and not LINE.match(tty.getvalue().strip().splitlines()[-1])
    piped = io.StringIO()
    logger = MetricsWriter(LoggerContext(tmp_path, max_steps=4), stream=piped)
    logger.log(2, {"loss": 1.5, "rel_loss": 0.5, "lr": 1e-4})
    logger.close()
    assert piped.getvalue().startswith("step 2/4 loss 1.5 rel_loss 0.5 lr 0.0001 eta ")


def test_plain_line_format():
    values = {"loss": 0.123456, "rel_loss": 0.9, "lr": 2e-4, "tau": 0.999, "target_var": 1.25, "samples_per_s": 123.4}
    assert plain_line(20, 100, values, 65.4) == (
        "step 20/100 loss 0.1235 rel_loss 0.9 lr 0.0002 tau 0.999 target_var 1.25 samples/s 123.4 eta 0:01:05")
    assert plain_line(1, 10, {}, float("nan")) == "step 1/10 eta ?"


@pytest.mark.slow
def test_under_torchrun_only_rank_zero_prints(tmp_path):
    data, run = vectors(tmp_path / "d", n=16), tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), *BASE[1:],
           "--data", str(data), "--out", str(run), "--max-steps", "4", "--set", "runtime.log_every=2",
           "--set", "runtime.device=cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert sum(line.startswith("pretraining vectors/") for line in lines) == 1, res.stdout
    assert [LINE.match(line).group(1) for line in lines if line.startswith("step ")] == ["2", "4"], res.stdout
    done = [line for line in lines if line.startswith("done:")]
    assert len(done) == 1 and "checkpoint None" not in done[0] and str(run / "checkpoints") in done[0], res.stdout
    assert "Warning" not in res.stderr, res.stderr[-3000:]


def test_threads_sets_torchs_intra_op_threads(tmp_path, example_plugins, cli):
    before = torch.get_num_threads()
    try:
        code, _, err = cli([*BASE, "--data", str(vectors(tmp_path / "d")), "--out", str(tmp_path / "run"),
                            "--max-steps", "1", "--threads", "1", "--set", "runtime.progress=false"])
        assert code == 0, err
        assert torch.get_num_threads() == 1
        code, _, err = cli([*BASE, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run2"), "--max-steps", "1",
                            "--threads", "0"])
        assert code == 2 and "--threads" in err
    finally:
        torch.set_num_threads(before)


# -- embed -----------------------------------------------------------------------------------------


def test_embed_accepts_single_files_and_shows_progress(tmp_path, example_plugins, cli):
    data = vectors(tmp_path / "d", n=12)
    run = tmp_path / "run"
    code, _, err = cli([*BASE, "--data", str(data), "--out", str(run), "--max-steps", "1", "--set", "runtime.progress=false"])
    assert code == 0, err
    code, _, err = cli(["embed", str(run), str(data), "--out", str(tmp_path / "all.npy")])
    assert code == 0, err
    assert re.match(r"^embedded 12/12 records \(\S+/s, eta 0:00:00\)$", err.splitlines()[-1]), err
    keys = (tmp_path / "all.npy.keys.txt").read_text().split()
    code, out, err = cli(["embed", str(run), str(data / "seq_003.npy"), str(data / "seq_007.npy"), "--out", str(tmp_path / "two.npy")])
    assert code == 0, err
    assert (tmp_path / "two.npy.keys.txt").read_text().split() == ["seq_003", "seq_007"]
    both = np.load(tmp_path / "two.npy")
    everything = np.load(tmp_path / "all.npy")
    np.testing.assert_allclose(both, everything[[keys.index("seq_003"), keys.index("seq_007")]], atol=1e-5)
    (tmp_path / "notes.md").write_text("x")
    code, _, err = cli(["embed", str(run), str(tmp_path / "notes.md"), "--out", str(tmp_path / "x.npy")])
    assert code == 1 and err.count("\n") == 1 and "pass a .npy file or a folder of them" in err


# -- list-plugins ------------------------------------------------------------------------------------


def test_list_plugins_shows_presets_and_masker_modalities(example_plugins, cli):
    code, out, err = cli(["list-plugins", "--json"])
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    vec = rows["plugin"]["modalities"]["vectors"]
    from d2v_plugin_example.presets import PRESETS

    assert vec["presets"] == sorted(PRESETS) and vec["default_preset"] == "tiny" and vec["default_masker"] == "random"
    masker = {c["name"]: c for c in rows["plugin"]["components"]}["random"]
    assert masker["kind"] == "masker" and masker["modalities"] is None  # usable by any modality
    code, out, err = cli(["list-plugins"])
    assert code == 0 and re.search(r"│ vectors\s+│ plugin\s+│ .*tiny\*", out), out


def test_list_plugins_shows_a_maskers_modalities():
    env = {**os.environ, "D2V_LOAD_PLUGINS": "maskers"}
    res = subprocess.run([sys.executable, "-m", "d2v_cli.app", "list-plugins", "--json"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["maskers"]["components"][0] | {"description": ""} == {
        "kind": "masker", "name": "inverse-block", "modalities": ["image"], "description": ""}


# -- errors and help ---------------------------------------------------------------------------------


def test_init_from_a_mismatched_checkpoint_is_short_and_leaves_no_folder(tmp_path, example_plugins, cli):
    data = vectors(tmp_path / "d")
    code, _, err = cli([*BASE, "--data", str(data), "--out", str(tmp_path / "a"), "--max-steps", "1",
                        "--set", "runtime.progress=false", "--set", "model.depth=3"])
    assert code == 0, err
    fresh = tmp_path / "b"
    code, out, err = cli([*BASE, "--data", str(data), "--out", str(fresh), "--max-steps", "1", "--preset", "tiny",
                          "--init-from", str(tmp_path / "a")])
    assert code == 1 and err.count("\n") == 1 and len(err) < 400, err
    assert err.startswith(f"error: --init-from {tmp_path / 'a'} does not fit this config: pass its config with --config ")
    assert "missing" in err or "unexpected" in err
    assert not fresh.exists()
    code, _, err = cli([*BASE, "--data", str(data), "--out", str(fresh), "--init-from", str(tmp_path / "nothing")])
    assert code == 2 and err.startswith("error: --init-from") and not fresh.exists()


def test_a_run_refused_by_preflight_leaves_no_folder(tmp_path, example_plugins, cli, monkeypatch):
    import d2v_core.train.run as run_module

    monkeypatch.setattr(run_module, "checkpoint_bytes", lambda n: 2**62)  # no disk is that large
    out_dir = tmp_path / "new" / "run"
    code, _, err = cli([*BASE, "--data", str(vectors(tmp_path / "d")), "--out", str(out_dir), "--max-steps", "1"])
    assert code == 2 and err.startswith("error: not enough disk space") and not out_dir.exists()
    out_dir.mkdir(parents=True)  # a folder the user made is theirs: kept
    code, _, err = cli([*BASE, "--data", str(tmp_path / "d"), "--out", str(out_dir), "--max-steps", "1"])
    assert code == 2 and out_dir.is_dir()


def test_resume_on_an_empty_folder_says_so(tmp_path, example_plugins, cli):
    code, out, err = cli([*BASE, "--data", str(vectors(tmp_path / "d")), "--out", str(tmp_path / "run"), "--max-steps", "1",
                          "--set", "runtime.progress=false", "--resume"])
    assert code == 0, err
    assert out.splitlines()[0] == f"--resume: no checkpoint in {tmp_path / 'run'} yet; starting a new run there"


@pytest.mark.parametrize("args", [
    ["pretrain", "--modality", "vectors", "--data", "/nonexistent/folder"],
    ["pretrain", "--modality", "vectors", "--preset", "nope"],
    ["pretrain", "--modality", "nope"],
    ["pretrain", "--modality", "vectors", "--set", "optim.lr=-1"],
    ["pretrain", "--bogus"],
    ["embed", "/nonexistent/run", "x.npy", "--out", "y.npy"],
    ["make-shards", "/nonexistent/folder", "out", "--modality", "vectors"],
    ["make-shards", "in", "out", "--modality", "vectors", "--max-size", "12XB"],
    ["probe", "/nonexistent/run"],
    ["export", "/nonexistent/run", "--out", "x"],
    ["config", "show"],
    ["list-plugins", "--bogus"],
], ids=lambda a: " ".join(a[:2]))
def test_usage_errors_exit_2_with_one_line(args, example_plugins, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(args)
    assert code == 2, (code, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(("error: ", "Error: ")) and "Traceback" not in err, err


def test_unknown_modality_does_not_guess_a_package_name(example_plugins, cli):
    code, _, err = cli(["pretrain", "--modality", "speech"])
    assert code == 2 and "pip install" not in err and "install the plugin that provides this modality" in err


def _commands():
    import typer.main

    from d2v_cli.app import app

    root = typer.main.get_command(app)
    todo = [((), root)]
    while todo:
        path, cmd = todo.pop()
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            todo.append(((*path, name), sub))


def test_every_option_and_argument_has_help():
    missing = [f"d2v {' '.join(path)} {p.name}" for path, cmd in _commands() for p in cmd.params
               if not getattr(p, "help", None)]
    assert missing == []


@pytest.mark.parametrize("path", [p for p, _ in _commands()], ids=lambda p: " ".join(p) or "d2v")
def test_dash_h_is_help(path, cli):
    code, out, err = cli([*path, "-h"])
    assert code == 0 and out.startswith("Usage: "), err
