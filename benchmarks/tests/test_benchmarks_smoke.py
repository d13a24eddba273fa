"""Smoke tests: every benchmark script runs on a tiny setting and writes its JSON, so the scripts
do not rot. They measure nothing. ``train_step.py --check`` is a real test: with dropout off and
d2v's weights copied into the transformers reference, both steps must give the same losses.

Run: .venv/bin/python -m pytest -q benchmarks/tests    (about 2 minutes on 2 cores; all marked slow)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# every test starts the scripts as subprocesses (10-40 s each): end-to-end, hence slow
pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run_script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True, env=ENV, timeout=timeout)
    assert proc.returncode == 0, f"{name} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.parametrize("modality", ["audio", "image", "text"])
def test_reference_step_does_the_same_math(modality: str, tmp_path: Path) -> None:
    run_script("train_step.py", "--modality", modality, "--preset", "tiny", "--check", "--batch", "2", "--length",
               "8000" if modality == "audio" else "32", "--out", str(tmp_path))
    result = json.loads(next(tmp_path.glob("train_step_*_check.json")).read_text())
    assert result["check_passed"]
    assert all(row["rel_diff"] < 1e-4 for row in result["check"])


def test_train_step_writes_timings_and_memory(tmp_path: Path) -> None:
    run_script("train_step.py", "--modality", "text", "--preset", "tiny", "--quick", "--batch", "2", "--length", "32",
               "--repeats", "2", "--out", str(tmp_path))
    result = json.loads((tmp_path / "train_step_text_tiny_fp32_quick.json").read_text())
    for side in ("d2v", "reference"):
        assert result["seconds_per_step"][side]["n"] == 2
        assert result["flops_per_step"][side] > 0
        assert result["peak_memory"][side]["peak_bytes"] > 0
    assert result["summary"]["time_ratio_d2v_over_reference"] > 0


def _write_wav(path: Path, seconds: float, freq: float, seed: int) -> None:
    import soundfile as sf

    t = np.arange(int(16000 * seconds)) / 16000
    noise = np.random.default_rng(seed).normal(0, 0.05, t.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32), 16000)


def _make_datasets(root: Path) -> None:
    from PIL import Image

    for i in range(10):
        _write_wav(root / "audio" / "speech" / f"utt{i}.flac", 1.2, 200 + 40 * i, i)
    rows = ["path,label,speaker"]
    for i in range(12):
        label, speaker = i % 2, f"s{i % 3}"
        _write_wav(root / "audio" / "digits" / f"d{i}.flac", 0.6, 300 if label else 600, 100 + i)
        rows.append(f"d{i}.flac,{label},{speaker}")
    (root / "audio" / "digits" / "labels.csv").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(0)
    (root / "image" / "digits").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).convert("RGB").save(root / "image" / "digits" / f"digit_{i}.png")
    (root / "text").mkdir()
    (root / "text" / "corpus.txt").write_text("".join(f"the cat number {i} sat on a mat and looked around.\n" for i in range(24)))
    topics = ["the cat sat on a mat", "stocks fell on the market today"]
    (root / "text" / "labelled.jsonl").write_text("".join(
        json.dumps({"text": f"{topics[i % 2]} {i}", "label": i % 2, "category": str(i % 2)}) + "\n" for i in range(24)))


def test_data_pipeline_runs(tmp_path: Path) -> None:
    _make_datasets(tmp_path / "data")
    run_script("data_pipeline.py", "--quick", "--root", str(tmp_path / "data"), "--set", "data.batch_size=2", "--out", str(tmp_path))
    result = json.loads((tmp_path / "data_pipeline_quick.json").read_text())
    for modality in ("audio", "image", "text"):
        row = result["modalities"][modality]
        assert row["per_worker"]["samples_per_s"]["median"] > 0
        assert row["training"]["samples_per_s"] > 0


def test_pretrain_probe_runs(tmp_path: Path) -> None:
    _make_datasets(tmp_path / "data")
    run_script("pretrain_probe.py", "--modality", "audio", "--minutes", "2", "--steps", "2", "--root", str(tmp_path / "data"),
               "--work", str(tmp_path / "runs"), "--set", "data.batch_size=2", "--out", str(tmp_path))
    result = json.loads((tmp_path / "pretrain_probe_audio_2min.json").read_text())
    assert result["pretrain"]["steps_done"] == 2
    probe = result["probes"][0]
    assert 0.0 <= probe["pretrained"]["accuracy"] <= 1.0 and 0.0 <= probe["random-init"]["accuracy"] <= 1.0
    assert 0.0 <= result["classical"]["accuracy"] <= 1.0


def test_v1_vs_v2_runs(tmp_path: Path) -> None:
    _make_datasets(tmp_path / "data")
    run_script("v1_vs_v2.py", "--modality", "audio", "--minutes", "2", "--steps", "2", "--checkpoints", "1",
               "--root", str(tmp_path / "data"), "--work", str(tmp_path / "runs"), "--set", "data.batch_size=2",
               "--probe-targets", "--out", str(tmp_path), "--v2-set", "masking.clone_batch=3")
    result = json.loads((tmp_path / "v1_vs_v2_audio_2min.json").read_text())
    v1, v2 = result["runs"]
    assert (v1["preset"], v2["preset"]) == ("tiny", "v2-tiny")
    from d2v_plugin_audio.presets import PRESETS

    # --v2-set reaches the 2.0 run only: its clones per sample as overridden (the preset has
    # another count), one for 1.0
    assert PRESETS["v2-tiny"]["masking"]["clone_batch"] != 3
    assert v2["throughput"]["clone_batch"] == 3 and v2["overrides"] == ["masking.clone_batch=3"]
    assert v1["throughput"]["clone_batch"] == 1 and v1["overrides"] == []
    assert all(0.0 <= r["checkpoints"][-1]["accuracy"] <= 1.0 for r in (v1, v2))
    # audio targets are instance-normed over time (zero mean per clip): the unnormalised top-k layers
    assert all(r["checkpoints"][-1]["targets_variant"] == "--layers top-k" for r in (v1, v2))
    assert all(0.0 <= r["checkpoints"][-1]["targets_accuracy"] <= 1.0 for r in (v1, v2))
    assert result["summary"]["samples_per_s_ratio_v2_over_v1"] > 0


def test_text_steps_probes_the_final_layer_and_the_targets(tmp_path: Path) -> None:
    _make_datasets(tmp_path / "data")
    out = tmp_path / "rows.jsonl"
    args = ["--tag", "a", "--set", "data.batch_size=2", "--root", str(tmp_path / "data"), "--work", str(tmp_path / "runs"),
            "--out", str(out)]
    run_script("text_steps.py", "--steps", "2", *args)
    run_script("text_steps.py", "--probe-only", *args)
    first, again = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["last_metrics"]["step"] == 2 and "last_metrics" not in again
    # CPU seconds of the d2v pretrain child (only when it trained) and of the in-process probe
    assert first["pretrain_cpu_seconds"] > 0 and "pretrain_cpu_seconds" not in again
    assert first["probe_cpu_seconds"] > 0 and again["probe_cpu_seconds"] > 0
    for row in (first, again):  # tiny 1.0: layer-normed targets, so --layers targets
        assert set(row["probes"]) == {"final", "targets"}
        assert all(0.0 <= v <= 1.0 for r in row["probes"].values() for v in r.values())
    assert again["probes"] == first["probes"]  # the same checkpoint, split and seeds; random init from the cache
    assert len(json.loads((tmp_path / "runs" / "random_init.json").read_text())) == 2


def test_text_steps_every_probes_each_checkpoint(tmp_path: Path) -> None:
    """--every K: a checkpoint every K updates, each probed on both variants; the last is `probes`."""
    _make_datasets(tmp_path / "data")
    out = tmp_path / "rows.jsonl"
    run_script("text_steps.py", "--steps", "4", "--every", "2", "--tag", "e", "--set", "data.batch_size=2",
               "--set", "runtime.log_every=1", "--root", str(tmp_path / "data"), "--work", str(tmp_path / "runs"),
               "--out", str(out))
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["every"] == 2 and row["last_metrics"]["step"] == 4
    (mid,) = row["checkpoint_probes"]  # step 2; step 4 is the final checkpoint's `probes`
    assert mid["step"] == 2 and mid["metrics"]["step"] == 2
    assert 0 < mid["cpu_seconds"] < row["pretrain_cpu_seconds"]
    assert set(mid["probes"]) == set(row["probes"]) == {"final", "targets"}
    for v in ("final", "targets"):  # one architecture: the same random init at every checkpoint
        assert mid["probes"][v]["random_init"] == row["probes"][v]["random_init"]
        assert "random_init_run_seed" not in row["probes"][v]  # a seed-0 run: its own init is the baseline


def test_text_steps_probes_random_init_at_the_runs_seed_too(tmp_path: Path) -> None:
    _make_datasets(tmp_path / "data")
    out = tmp_path / "rows.jsonl"
    run_script("text_steps.py", "--steps", "1", "--tag", "s", "--set", "data.batch_size=2", "--set", "runtime.seed=3",
               "--root", str(tmp_path / "data"), "--work", str(tmp_path / "runs"), "--out", str(out))
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(0.0 <= r["random_init_run_seed"] <= 1.0 for r in row["probes"].values())
    keys = json.loads((tmp_path / "runs" / "random_init.json").read_text())
    assert len(keys) == 4 and sum(k.endswith("|seed=3") for k in keys) == 2  # cached apart from seed 0's


def test_text_steps_teacher_probes_each_checkpoints_ema_teacher(tmp_path: Path) -> None:
    """--teacher: one teacher row per checkpoint; at EMA decay 0 the teacher is the student."""
    _make_datasets(tmp_path / "data")
    out = tmp_path / "rows.jsonl"
    run_script("text_steps.py", "--steps", "2", "--every", "1", "--teacher", "--tag", "t", "--set", "data.batch_size=2",
               "--set", "ema.decay=0", "--set", "ema.end_decay=0", "--root", str(tmp_path / "data"),
               "--work", str(tmp_path / "runs"), "--out", str(out))
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert [t["step"] for t in row["teacher_probes"]] == [1, 2]
    assert row["teacher_probes"][-1]["probes"] == {v: r["pretrained"] for v, r in row["probes"].items()}


def test_text_probe_capacity_runs(tmp_path: Path) -> None:
    _make_datasets(tmp_path / "data")
    run_script("text_probe_capacity.py", "--root", str(tmp_path / "data"), "--work", str(tmp_path / "w"), "--dims", "8",
               "--out", str(tmp_path))
    result = json.loads((tmp_path / "text_probe_capacity.json").read_text())
    assert 0.0 <= result["tfidf_pieces"] <= 1.0 and set(result["mean_random_embeddings"]) == {"8", "one-hot"}


def test_gpu_step_script_runs_its_cases_and_writes_json(tmp_path: Path) -> None:
    """The GPU benchmark's code path on the CPU (tiny presets, fp32): eager, compiled and reference
    sides timed, FLOPs counted, one JSON row per case; the GPU-only probes are left empty."""
    run_script("gpu_step.py", "--device", "cpu", "--dtype", "fp32", "--cases", "text:tiny", "--repeats", "1",
               "--warmup", "1", "--batch", "2", "--length", "32", "--out", str(tmp_path))
    result = json.loads((tmp_path / "gpu_step_cpu_smoke.json").read_text())
    (row,) = result["cases"]
    assert "error" not in row, row
    assert set(row["mfu"]) == {"d2v_eager", "d2v_compiled", "reference"} and all(v > 0 for v in row["mfu"].values())
    assert row["flops_per_step_d2v"] > 0 and row["speedup_vs_reference"]["d2v_compiled"] > 0


def test_activation_memory_shrinks_with_checkpointing(tmp_path: Path) -> None:
    run_script("train_step.py", "--modality", "text", "--preset", "tiny", "--batch", "2", "--length", "32",
               "--activation-memory", "--out", str(tmp_path))
    sb = json.loads((tmp_path / "activation_memory_text_tiny_fp32.json").read_text())["saved_for_backward_bytes"]
    assert 0 < sb["with_ac"] < 0.5 * sb["without_ac"]


def test_ac_vs_plain_times_and_measures_both_sides(tmp_path: Path) -> None:
    run_script("train_step.py", "--modality", "audio", "--preset", "tiny", "--batch", "2", "--length", "8000", "--ac-vs-plain",
               "--quick", "--out", str(tmp_path))
    r = json.loads((tmp_path / "ac_vs_plain_audio_tiny_fp32_b2_l8000_quick.json").read_text())
    assert r["seconds_per_step"]["ac"]["median"] > 0 and r["seconds_per_step"]["plain"]["median"] > 0
    assert r["peak_memory"]["ac"]["peak_bytes"] > 0 and r["peak_memory"]["plain"]["peak_bytes"] > 0
    assert r["summary"]["peak_memory_reduction"] == 1 - r["peak_memory"]["ratio_ac_over_plain"]


def test_batching_writes_the_issue_fields(tmp_path: Path) -> None:
    (tmp_path / "data" / "text").mkdir(parents=True)
    (tmp_path / "data" / "text" / "corpus.txt").write_text(
        "".join(f"the cat number {i} sat on a mat and looked around the room for a while.\n" for i in range(10000)))
    run_script("batching.py", "--quick", "--root", str(tmp_path / "data"), "--out", str(tmp_path))
    result = json.loads((tmp_path / "batching_quick.json").read_text())
    for preset in ("base", "v2-base"):
        audio = result["audio"][preset]
        for field in ("seconds_per_update", "crop_loss", "pad_fraction", "masked_fraction"):
            assert audio[field] >= 0 and audio[f"fairseq_{field}"] >= 0
        text = result["text"][preset]
        assert {"rows_per_batch", "expected_rows", "pad_fraction"} <= set(text)


def test_size_limits_runs(tmp_path: Path) -> None:
    run_script("size_limits.py", "--quick", "--out", str(tmp_path))
    result = json.loads((tmp_path / "size_limits_quick.json").read_text())
    assert result["pack_rows"]["rows"] == -(-50_000 // 511)
    assert result["text_decode"]["note"] == "truncated" and result["text_decode"]["batch_rows"] <= 8


def test_online_probe_cost_runs(tmp_path: Path) -> None:
    _make_datasets(tmp_path / "data")
    run_script("online_probe_cost.py", "--modality", "text", "--steps", "4", "--root", str(tmp_path / "data"),
               "--work", str(tmp_path / "runs"), "--set", "data.batch_size=2", "--out", str(tmp_path))
    row = json.loads((tmp_path / "online_probe_cost.json").read_text())["modalities"]["text"]
    assert row["probe_train_size"] + row["probe_test_size"] == 24 and row["probes_per_run"] == 5  # 1000 steps, every 200
    assert row["first_probe_s"] > 0 and row["later_probe_s"] > 0 and 0 < row["cost_fraction"] < 1
    parts = row["parts"]
    assert parts["decode_s"] > 0 and parts["embed_s"] > 0
    assert set(parts["fit_s"]) == {"one_thread", "library_threads"} and all(len(v) == 3 for v in parts["fit_runs_s"].values())
    assert parts["fit_accuracy"]["one_thread"] == parts["fit_accuracy"]["library_threads"]


def test_v2_audio_sweep_probes_student_and_teacher(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    _make_datasets(tmp_path / "data")
    out = tmp_path / "sweep.jsonl"
    run_script("v2_audio_sweep.py", "--name", "smoke", "--steps", "2", "--checkpoints", "1", "--teacher", "--set",
               "data.batch_size=2", "--set", "masking.clone_batch=2", "--root", str(tmp_path / "data"), "--work",
               str(tmp_path / "runs"), "--out", str(out))
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["last_metrics"]["step"] == 2 and record["pretrain_cpu_seconds"] > 0
    (row,) = record["checkpoints"]
    assert 0.0 <= row["student"] <= 1.0 and 0.0 <= row["teacher"] <= 1.0
    # the last view probed is the teacher's: every weight the teacher has replaced the student's
    view = next((tmp_path / "runs" / "smoke" / "view").iterdir())
    student, teacher = load_file(view / "student.safetensors"), load_file(view / "teacher.safetensors")
    assert teacher and all(k in student and np.array_equal(student[k].numpy(), v.numpy()) for k, v in teacher.items())
    ckpt = load_file(next((tmp_path / "runs" / "smoke" / "run" / "checkpoints").iterdir()) / "student.safetensors")
    assert any(not np.array_equal(ckpt[k].numpy(), v.numpy()) for k, v in teacher.items())  # it did change something


@pytest.mark.parametrize("modality,extra", [("audio", ["--length", "8000"]), ("text", ["--length", "32"])])
def test_step_cost_runs(modality: str, extra: list[str]) -> None:
    proc = run_script("step_cost.py", "--modality", modality, "--rounds", "1", "--batch", "2", *extra, "--variant", "tiny",
                      "--variant", "v2-tiny masking.clone_batch=2")
    lines = [line for line in proc.stdout.splitlines() if "CPU s/step" in line]
    assert len(lines) == 2 and "(1.00x)" in lines[0] and lines[1].endswith("v2-tiny masking.clone_batch=2")
