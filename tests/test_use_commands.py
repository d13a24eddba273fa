"""embed / probe / report / export dispatch through the CLI, with the example 'vectors' modality."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, safe_open

sys.path.insert(0, str(Path(__file__).parent))
from manifest_helpers import write_labels_csv  # noqa: E402


def labelled_vectors(folder: Path, n_per_class: int = 24) -> Path:
    """Two classes (slow vs fast sinusoids) over 6 groups; returns a CSV manifest."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    rows = []
    for label, (lo, hi) in enumerate([(0.05, 0.15), (0.5, 0.8)]):
        for i in range(n_per_class):
            T = int(rng.integers(30, 50))
            t = np.arange(T)[:, None]
            x = np.sin(rng.uniform(lo, hi, (1, 16)) * t + rng.uniform(0, 6.3, (1, 16))).astype(np.float32)
            name = f"c{label}_{i:02d}.npy"
            np.save(folder / name, x)
            rows.append({"path": name, "label": label, "group": f"g{i % 6}"})
    return write_labels_csv(folder / "labels.csv", rows)


@pytest.fixture
def trained(tmp_path, example_plugins, cli):
    manifest = labelled_vectors(tmp_path / "data")
    run = tmp_path / "run"
    code, out, err = cli(["pretrain", "--modality", "vectors", "--data", str(tmp_path / "data"), "--out", str(run),
                          "--max-steps", "6", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
                          "--set", "runtime.log_every=1"])
    assert code == 0, err
    return run, manifest


def test_embed_pools_consistently(trained, cli, tmp_path):
    run, manifest = trained
    code, out, err = cli(["embed", str(run), str(manifest), "--out", str(tmp_path / "e.safetensors")])
    assert code == 0, err
    pooled = load_file(str(tmp_path / "e.safetensors"))["embeddings"]
    keys = (tmp_path / "e.safetensors.keys.txt").read_text().split()
    with safe_open(str(tmp_path / "e.safetensors"), "np") as f:
        assert json.loads(f.metadata()["keys"]) == keys
    assert pooled.shape == (48, 32) and len(keys) == 48
    code, _, err = cli(["embed", str(run), str(manifest), "--out", str(tmp_path / "n.safetensors"), "--pool", "none"])
    assert code == 0, err
    per_step = load_file(str(tmp_path / "n.safetensors"))
    lengths = {Path(r).stem: len(np.load(Path(manifest).parent / f"{r}.npy")) for r in keys}
    for i, key in enumerate(keys):
        assert per_step[str(i)].shape == (lengths[key], 32)  # every valid step, no padding
        np.testing.assert_allclose(per_step[str(i)].mean(0), pooled[i], atol=1e-5)
    # post-LN without a final norm: the last layer's output is the final output
    code, _, err = cli(["embed", str(run), str(manifest), "--out", str(tmp_path / "l.npy"), "--layer", "2"])
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "l.npy"), pooled, atol=1e-5)
    code, _, err = cli(["embed", str(run), str(manifest), "--out", str(tmp_path / "x.npy"), "--pool", "cls"])
    assert code == 2 and "CLS" in err and err.count("\n") == 1


def test_probe_with_random_init_baseline(trained, cli, tmp_path):
    run, manifest = trained
    report_file = tmp_path / "probe.json"
    code, out, err = cli(["probe", str(run), "--train", str(manifest), "--split-by", "group",
                          "--baseline", "random-init", "--json", str(report_file)])
    assert code == 0, err
    report = json.loads(report_file.read_text())
    assert report["classes"] == 2
    assert report["pretrained"]["train_size"] + report["pretrained"]["test_size"] == 48
    assert report["pretrained"]["test_size"] == 16  # 2 of 6 groups held out, 8 records each
    assert 0.0 <= report["random-init"]["accuracy"] <= 1.0
    assert report["pretrained"]["accuracy"] >= report["majority_class_accuracy"]
    assert "random-init: accuracy" in out
    # a short summary on stdout; the full report only in the file
    assert out.splitlines()[0].startswith("probe: 2 classes, 32 train / 16 test records; skipped: ") and "{" not in out
    assert out.splitlines()[-1] == f"report: {report_file}" and len(out.splitlines()) == 5
    code, _, err = cli(["probe", str(run), "--train", str(manifest), "--test", str(manifest), "--split-by", "group"])
    assert code == 2 and "--test MANIFEST or --split-by COLUMN, not both" in err
    # neither: a seeded random quarter of the records is held out
    code, out, err = cli(["probe", str(run), "--train", str(manifest)])
    assert code == 0 and out.startswith("probe: 2 classes, 36 train / 12 test records"), err


def test_report_writes_png_and_html(trained, cli):
    run, _ = trained
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # written at the end of pretrain
    (run / "report.png").unlink()
    code, out, err = cli(["report", str(run)])
    assert code == 0, err
    assert (run / "report.png").exists()
    assert "loss" in (run / "report.html").read_text()


def test_export_without_exporter_is_a_clear_error(trained, cli, tmp_path):
    run, _ = trained
    code, _, err = cli(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert code == 2 and "no 'hf' exporter for modality 'vectors'" in err and err.count("\n") == 1
