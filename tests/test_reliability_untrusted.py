"""Guarantee 3: untrusted files and strings never run code. Checkpoints load without unpickling
arbitrary objects, webdataset ``pipe:`` URLs need ``--allow-pipe-urls``, and an installed plugin
can be blocked by name (``D2V_DISABLE_PLUGINS``)."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from d2v_core.errors import CheckpointError
from d2v_core.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--modality", "vectors", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
          "--set", "runtime.device=cpu", "--set", "data.batch_size=4"]


class Payload:
    """Unpickling this writes ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def write_vectors(folder: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(folder / f"seq_{i:03d}.npy", rng.standard_normal((int(rng.integers(20, 40)), 16)).astype(np.float32))
    return folder


def small_checkpoint(run: Path) -> Path:
    w = torch.ones(2, 2)
    return ck.save_checkpoint(run, 1, {"w": w}, {"w": w}, {"step": 1}, "modality: vectors\n", {})


def drop_checksums(checkpoint: Path) -> None:
    """What an attacker who also edits ``meta.json`` does (or a checkpoint older than checksums):
    the file-type checks below are the defence that remains."""
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta.pop("sha256")
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def test_the_payload_is_live(tmp_path):
    """Control: plain unpickling of the planted bytes does run code (so the tests below can fail)."""
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps({"step": 1, "x": Payload(marker)}))
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_payload_in_trainer_state_is_refused_not_run(tmp_path, writer):
    marker = tmp_path / "marker"
    path = small_checkpoint(tmp_path / "run")
    state = {"step": 1, "optimizer": Payload(marker)}
    if writer == "pickle":
        (path / "trainer_state.pt").write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="does not match the checksum"):  # first line of defence
        ck.load_checkpoint(path)
    assert not marker.exists()
    drop_checksums(path)
    with pytest.raises(CheckpointError) as info:
        ck.load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"refusing to load {path / 'trainer_state.pt'}: it holds more than tensors and plain data")
    assert "\n" not in message and "could run code" in message
    assert not marker.exists()


@pytest.mark.parametrize("name", ["student.safetensors", "teacher.safetensors"])
@pytest.mark.parametrize("content", ["pickle", "truncated"])
def test_weights_that_are_not_safetensors_are_refused(tmp_path, name, content):
    marker = tmp_path / "marker"
    path = small_checkpoint(tmp_path / "run")
    f = path / name
    f.write_bytes(pickle.dumps(Payload(marker)) if content == "pickle" else f.read_bytes()[:-5])
    drop_checksums(path)
    with pytest.raises(CheckpointError, match=r"^cannot read checkpoint .*: .+") as info:
        ck.load_checkpoint(path)
    assert "\n" not in str(info.value) and not marker.exists()


def test_resume_refuses_a_planted_trainer_state(tmp_path, example_plugins, cli):
    """Through ``d2v pretrain --resume``: exit 1, one line, the payload never runs."""
    data, run, marker = write_vectors(tmp_path / "data"), tmp_path / "run", tmp_path / "marker"
    args = ["pretrain", *COMMON, "--data", str(data), "--out", str(run), "--set", "runtime.save_every=2"]
    code, _, err = cli([*args, "--max-steps", "2"])
    assert code == 0, err
    state = run / "checkpoints" / "step_00000002" / "trainer_state.pt"
    torch.save({"step": 2, "optimizer": Payload(marker)}, state)
    drop_checksums(state.parent)
    code, out, err = cli([*args, "--max-steps", "4", "--resume"])
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: refusing to load {state}: ") and "could run code" in err
    assert not marker.exists() and "done:" not in out
    assert not (run / "checkpoints" / "step_00000004").exists()


# -- webdataset pipe: URLs -------------------------------------------------------------------------


def _one_shard(tmp_path: Path) -> Path:
    shard = tmp_path / "vectors-000000.tar"
    with tarfile.open(shard, "w") as tf:
        for f in sorted(write_vectors(tmp_path / "vec").iterdir()):
            tf.add(f, arcname=f.name)
    return shard


@pytest.mark.parametrize("url", ["pipe:touch {marker}; cat {shard}", "PIPE:touch {marker}; cat {shard}",
                                 "  pipe:touch {marker}; cat {shard}", "http://localhost:9/x-{{000..001}}.tar"])
def test_pipe_and_remote_urls_are_refused_without_the_flag(tmp_path, example_plugins, cli, url):
    marker = tmp_path / "marker"
    spec = url.format(marker=marker, shard=_one_shard(tmp_path))
    code, out, err = cli(["pretrain", *COMMON, "--data", spec, "--out", str(tmp_path / "run"), "--max-steps", "1"])
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: refusing URL ") and "pass --allow-pipe-urls if you trust this string" in err
    assert not marker.exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_pipe_urls_work_with_the_flag(tmp_path, example_plugins, cli):
    marker = tmp_path / "marker"
    spec = f"pipe:touch {marker}; cat {_one_shard(tmp_path)}"
    code, out, err = cli(["pretrain", *COMMON, "--data", spec, "--out", str(tmp_path / "run"), "--max-steps", "1",
                          "--allow-pipe-urls"])
    assert code == 0, err
    assert "done: step 1" in out and marker.exists()  # the command ran, because it was allowed


# -- blocking a plugin by name ---------------------------------------------------------------------


def _example_plugin_install(site: Path) -> tuple[str, str]:
    """(entry-point name, distribution) of the example plugin as a real installed distribution:
    the installed one if there is one, else a dist-info with an entry point written into ``site``."""
    import importlib.metadata as md

    for ep in md.entry_points(group="d2v"):
        if ep.value.split(":")[0] == "d2v_plugin_example.plugin" and ep.dist is not None:
            return ep.name, ep.dist.metadata["Name"]
    info = site / "d2v_plugin_vectors_test-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: d2v-plugin-vectors-test\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[d2v]\nvectors-test = d2v_plugin_example.plugin\n")
    return "vectors-test", "d2v-plugin-vectors-test"


def _d2v(args: list[str], site: Path, disable: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "plugins" / "d2v-plugin-example")])}
    env.pop("D2V_DISABLE_PLUGINS", None)
    env.pop("D2V_LOAD_PLUGINS", None)
    if disable is not None:
        env["D2V_DISABLE_PLUGINS"] = disable
    return subprocess.run([sys.executable, "-m", "d2v_cli.app", *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_a_plugin_blocked_by_name_loads_nothing_and_its_modality_is_gone(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    name, dist = _example_plugin_install(site)
    rows = {r["name"]: r for r in json.loads(_d2v(["list-plugins", "--json"], site, None).stdout)}
    assert rows[name]["status"] == "ok" and "modality:vectors" in rows[name]["provides"]
    for blocked in (name, dist):  # entry-point name or distribution name
        rows = {r["name"]: r for r in json.loads(_d2v(["list-plugins", "--json"], site, blocked).stdout)}
        assert rows[name]["status"] == "disabled" and rows[name]["provides"] == []
        assert all("modality:vectors" not in r["provides"] for r in rows.values())
    res = _d2v(["pretrain", "--modality", "vectors", "--out", str(tmp_path / "run"), "--max-steps", "1"], site, name)
    assert res.returncode == 2 and res.stderr.startswith("error: unknown modality 'vectors'"), res.stderr
    assert res.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("code ran")
from transformers import PretrainedConfig


class EvilConfig(PretrainedConfig):
    model_type = "evil-custom"
"""


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["text", "audio", "image"])
@pytest.mark.parametrize("model_type", ["evil-custom", "data2vec-text"])
def test_import_from_hf_refuses_a_directory_that_ships_code(tmp_path, modality, model_type):
    """``auto_map`` makes transformers import the directory's Python files (after a y/N prompt on a
    terminal, or with ``trust_remote_code``). Answering "y" must not matter: d2v refuses first."""
    marker, src = tmp_path / "marker", tmp_path / "hf"
    src.mkdir()
    (src / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    (src / "config.json").write_text(json.dumps({"model_type": model_type, "auto_map": {"AutoConfig": "evil.EvilConfig",
                                                                                      "AutoModel": "evil.EvilConfig"}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "D2V_DISABLE_PLUGINS": "d2v-plugin-example"}
    proc = subprocess.run([sys.executable, "-m", "d2v_cli.app", "import", "--from-hf", str(src), "--modality", modality,
                           "--out", str(tmp_path / "out")], input="y\ny\n", capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"error: refusing {src}: config.json has 'auto_map'") and proc.stderr.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("modality", ["text", "audio", "image"])
def test_every_hf_loader_passes_trust_remote_code_false(modality, monkeypatch, tmp_path):
    """Below the ``auto_map`` check: each importer's transformers call says ``trust_remote_code=False``."""
    transformers = pytest.importorskip("transformers")
    plugin = pytest.importorskip(f"d2v_plugin_{modality}.hf_export")
    seen: list[dict] = []

    class Stop(Exception):
        pass

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs)
        raise Stop

    for name in ("AutoConfig", "Data2VecTextConfig", "Data2VecAudioConfig", "Data2VecVisionConfig"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", spy)
    kind = {"text": "data2vec-text", "audio": "data2vec-audio", "image": "data2vec-vision"}[modality]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": kind}))
    exporter = next(v for v in vars(plugin).values() if isinstance(v, type) and hasattr(v, "import_config") and v.__module__ == plugin.__name__)()
    with pytest.raises(Stop):
        exporter.import_config(tmp_path)
    assert seen and all(kw.get("trust_remote_code") is False for kw in seen)
