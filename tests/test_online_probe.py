"""The online probe (``eval``, ``--probe``): agreement with ``d2v probe`` on the final
checkpoint, failures that never stop training, and the checks before a run starts."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from manifest_helpers import write_labels_csv  # noqa: E402

STEPS = 6


def labelled(folder: Path, n: int = 60, labels: list[int] | None = None) -> Path:
    """``n`` sinusoid records in 3 overlapping frequency bands over 6 groups; a CSV manifest.
    The bands overlap, so a probe of a 6-step model is far from perfect and sensitive to the
    exact features and split (one test record is 1/15 of the accuracy)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        band = i % 3
        lo, hi = [(0.05, 0.3), (0.2, 0.5), (0.4, 0.8)][band]
        t = np.arange(int(rng.integers(30, 50)))[:, None]
        x = np.sin(rng.uniform(lo, hi, (1, 16)) * t + rng.uniform(0, 6.3, (1, 16))).astype(np.float32)
        np.save(folder / f"r{i:02d}.npy", x)
        rows.append({"path": f"r{i:02d}.npy", "label": band if labels is None else labels[i], "group": f"g{i % 6}"})
    return write_labels_csv(folder / "labels.csv", rows)


def pretrain_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["pretrain", "--modality", "vectors", "--data", str(data), "--out", str(run), "--max-steps", str(STEPS),
            "--set", "runtime.progress=false", "--set", "runtime.log_every=4", "--set", "eval.every=3", *extra]


def probe_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "probe_acc" in r]


@pytest.mark.parametrize("split", ["random", "split_by"])
def test_the_last_online_probe_agrees_with_d2v_probe_on_the_final_checkpoint(tmp_path, example_plugins, cli, split):
    manifest = labelled(tmp_path / "data")
    run = tmp_path / "run"
    extra = ["--set", "eval.split_by=group"] if split == "split_by" else []
    # a constant, high learning rate: the model moves enough in 6 steps for its probe to change
    fast = ["--set", "optim.lr=0.01", "--set", "optim.schedule.name=constant", "--set", "runtime.save_every=3"]
    code, out, err = cli(pretrain_args(tmp_path / "data", run, "--probe", str(manifest), "--set", "eval.teacher=true", *fast, *extra))
    assert code == 0, err
    rows = probe_rows(run)
    # every 3 steps (step 3 is not a log step: the trainer logs there too) and at the last step
    assert [r["step"] for r in rows] == [3, 6]
    for r in rows:
        assert 0.0 <= r["probe_acc"] <= 1.0 and 0.0 <= r["probe_teacher_acc"] <= 1.0 and r["probe_seconds"] > 0
        assert r["probe_train_size"] + r["probe_test_size"] == 60
    assert rows[-1]["probe_test_size"] == (20 if split == "split_by" else 15)  # 2 of 6 groups / a quarter of 60
    offline = []
    for checkpoint in (run / "checkpoints" / "step_00000003", run):  # step 3's checkpoint, then the final one
        report = tmp_path / "probe.json"
        code, out, err = cli(["probe", str(checkpoint), "--train", str(manifest), "--json", str(report),
                              *(["--split-by", "group"] if split == "split_by" else [])])
        assert code == 0, err
        offline.append(json.loads(report.read_text())["pretrained"])
    assert offline[-1]["test_size"] == rows[-1]["probe_test_size"] and offline[-1]["train_size"] == rows[-1]["probe_train_size"]
    assert abs(offline[-1]["accuracy"] - rows[-1]["probe_acc"]) <= 0.01
    # and at step 3 with step 3's weights; on the random split the two steps' probes differ (0.467 and 0.533 when
    # written), so agreeing with the right checkpoint is no accident
    assert abs(offline[0]["accuracy"] - rows[0]["probe_acc"]) <= 0.01
    if split == "random":
        assert offline[0]["accuracy"] != offline[-1]["accuracy"]
    # the run report has the curve
    from d2v_core.inference.report import report_data

    probe_panel = [p for p in report_data(run).panels if p.title.startswith("online probe")][0]
    assert [s.points for s in probe_panel.series if s.key == "probe_acc"] == [[(3, rows[0]["probe_acc"]), (6, rows[1]["probe_acc"])]]


def sort_by_label(manifest: Path) -> Path:
    """Rewrite a :func:`labelled` CSV sorted by label (as a manifest made class by class is): its
    first records then hold its first classes only."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: int(r["label"]))
    return write_labels_csv(manifest, rows)


def test_a_capped_online_probe_agrees_with_d2v_probe_max_records_and_sees_every_class(tmp_path, example_plugins, cli):
    # 60 records sorted by label (20 per class): the first 30 hold 2 of the 3 classes
    manifest = sort_by_label(labelled(tmp_path / "data"))
    with open(manifest, newline="") as f:
        assert {r["label"] for r in list(csv.DictReader(f))[:30]} == {"0", "1"}
    run = tmp_path / "run"
    fast = ["--set", "optim.lr=0.01", "--set", "optim.schedule.name=constant"]
    code, out, err = cli(pretrain_args(tmp_path / "data", run, "--probe", str(manifest), "--set", "eval.max_records=30", *fast))
    assert code == 0, err
    last = probe_rows(run)[-1]
    assert last["step"] == STEPS and last["probe_train_size"] + last["probe_test_size"] == 30
    reports = {}
    for cap in ("30", None):
        report = tmp_path / f"probe-{cap}.json"
        code, out, err = cli(["probe", str(run), "--train", str(manifest), "--json", str(report), *(["--max-records", cap] if cap else [])])
        assert code == 0, err
        reports[cap] = json.loads(report.read_text())
    capped = reports["30"]
    assert capped["classes"] == 3 and capped["max_records"] == 30  # a prefix of 30 would train on 2 classes
    assert (capped["pretrained"]["train_size"], capped["pretrained"]["test_size"]) == (last["probe_train_size"], last["probe_test_size"])
    assert abs(capped["pretrained"]["accuracy"] - last["probe_acc"]) <= 0.01
    full = reports[None]["pretrained"]
    assert full["train_size"] + full["test_size"] == 60  # without --max-records d2v probe reads every record
    code, _, err = cli(["probe", str(run), "--train", str(manifest), "--max-records", "0"])
    assert code == 2


def _sorted_text_manifest(path: Path, classes: int = 4, per_class: int = 20) -> Path:
    """A JSONL manifest of ``classes * per_class`` text records sorted by label."""
    lines = [json.dumps({"text": f"record {c}-{i}", "label": f"c{c}"}) for c in range(classes) for i in range(per_class)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_record_cap_is_a_seeded_sample_in_manifest_order_not_a_prefix(tmp_path):
    from d2v_core.data.sources import resolve_source
    from d2v_core.inference.embed import cap_records

    source = resolve_source(str(_sorted_text_manifest(tmp_path / "m.jsonl")), ("txt",))
    assert len(source) == 80
    position = {e.key: i for i, e in enumerate(source.entries)}
    assert {e.meta["label"] for e in source.entries[:20]} == {"c0"}  # the first-k prefix is one class
    capped = cap_records(source, 20, seed=0)
    keys = [e.key for e in capped.entries]
    assert len(keys) == len(set(keys)) == 20 and set(keys) <= set(position)
    assert {e.meta["label"] for e in capped.entries} == {"c0", "c1", "c2", "c3"}
    assert [position[k] for k in keys] == sorted(position[k] for k in keys)  # manifest order
    assert keys != [e.key for e in source.entries[:20]]
    assert [e.key for e in cap_records(source, 20, seed=0).entries] == keys  # the same on every call
    assert [e.key for e in cap_records(source, 20, seed=1).entries] != keys  # the seed chooses
    for cap in (None, 80, 1000):  # no cap, or one the manifest fits in: every record, as it was
        assert cap_records(source, cap, seed=0).entries == source.entries
    from d2v_core.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 1"):
        cap_records(source, 0)
    # the records decode_source keeps are exactly cap_records's, with their labels
    from d2v_core.inference.embed import decode_source

    class Decoder:  # a text record stays its text; one row per record
        def decode_for_inference(self, record: dict) -> str:
            return record["txt"].decode()

        def collate_for_inference(self, samples: list[str]) -> dict:
            return {"text": samples}

    decoded = decode_source(source, Decoder(), batch_size=8, max_records=20, seed=0)
    assert [k for group in decoded.keys for k in group] == keys
    assert [m["label"] for group in decoded.meta for m in group] == [e.meta["label"] for e in capped.entries]
    assert [t for b in decoded.batches for t in b["text"]] == [e.text for e in capped.entries]


def test_a_failing_probe_does_not_stop_training(tmp_path, example_plugins, cli):
    manifest = labelled(tmp_path / "data", labels=[7] * 60)  # one class: the fit fails at every probe
    run = tmp_path / "run"
    code, out, err = cli(pretrain_args(tmp_path / "data", run, "--probe", str(manifest)))
    assert code == 0, err
    failures = [line for line in err.splitlines() if "online probe" in line]
    assert len(failures) == 2 and failures[0].startswith("warning: online probe at step 3 failed (DataError:")
    assert "fewer than 2 classes" in failures[0] and "training goes on" in failures[0]
    assert probe_rows(run) == []
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    from d2v_core.train.checkpoint import latest_checkpoint

    assert rows[-1]["step"] == STEPS and latest_checkpoint(run).step == STEPS


def test_the_probe_restores_the_mode_and_leaves_the_random_stream_alone(tmp_path, example_plugins):
    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import get_registry
    from d2v_core.train.build import build_components
    from d2v_core.train.online_probe import OnlineProbe, probe_sources

    manifest = labelled(tmp_path / "data")
    registry = get_registry()
    cfg = resolve_config(registry, "vectors", None, None, [])
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"probe": str(manifest)})})
    parts = build_components(cfg, registry)
    probe = OnlineProbe(cfg.eval, parts.record_decoder, probe_sources(cfg, registry.modality("vectors").extensions, 1))
    model = parts.model.train()
    state = torch.get_rng_state()
    values = probe.run(1, model)
    assert model.training and torch.equal(torch.get_rng_state(), state)
    assert set(values) == {"probe_acc", "probe_train_size", "probe_test_size", "probe_seconds"}
    model.eval()
    assert probe.run(2, model)["probe_acc"] == values["probe_acc"] and not model.training
    # a decoded set is kept: the second probe decodes nothing
    kept = probe._sets
    probe.run(3, model.train())
    assert probe._sets is kept and model.training


def test_probe_flag_and_config(tmp_path, example_plugins, cli):
    manifest = labelled(tmp_path / "data")
    code, out, err = cli(["config", "show", "--modality", "vectors", "--probe", str(manifest), "--set", "eval.every=7"])
    assert code == 0, err
    import yaml

    shown = yaml.safe_load(out)["eval"]
    assert shown["probe"] == str(manifest) and shown["every"] == 7 and shown["split_by"] is None and shown["teacher"] is False
    code, _, err = cli(["config", "show", "--modality", "vectors", "--probe", "a.csv", "--set", "eval.probe=b.csv"])
    assert code == 2 and "eval.probe" in err and err.count("\n") == 1
    code, _, err = cli(["config", "show", "--modality", "vectors", "--probe", str(manifest), "--set", "eval.split_by=group",
                        "--set", "eval.probe_test=t.csv"])
    assert code == 2 and "not both" in err and err.count("\n") == 1
    code, _, err = cli(["config", "show", "--modality", "vectors", "--set", "eval.every=0"])
    assert code == 2 and "eval.every" in err


@pytest.mark.parametrize("problem", ["missing", "not_utf8", "no_label_column"])
def test_a_bad_probe_manifest_is_a_usage_error_before_any_folder_is_written(tmp_path, example_plugins, cli, problem):
    labelled(tmp_path / "data")
    bad = tmp_path / "probe.csv"
    if problem == "not_utf8":
        bad.write_bytes(b"path,label\n\xff\xfe.npy,1\n")
    elif problem == "no_label_column":
        bad.write_text("path,kind\ndata/r00.npy,a\n")
    run = tmp_path / "run"
    code, out, err = cli(pretrain_args(tmp_path / "data", run, "--probe", str(bad)))
    assert code == 2 and err.count("\n") == 1 and "eval.probe (--probe)" in err, err
    assert {"missing": "does not exist", "not_utf8": "cannot be read", "no_label_column": "no 'label' column"}[problem] in err
    assert not run.exists()


def test_fsdp_on_several_processes_is_refused_before_the_run(tmp_path, example_plugins):
    from d2v_core.config_resolve import parse_set, resolve_config
    from d2v_core.errors import ProbeManifestError
    from d2v_core.plugin_loader import get_registry
    from d2v_core.train.online_probe import probe_sources

    manifest = labelled(tmp_path / "data")
    registry = get_registry()
    cfg = resolve_config(registry, "vectors", None, None, [parse_set(f"eval.probe={manifest}"), parse_set("runtime.distributed=fsdp")])
    exts = registry.modality("vectors").extensions
    assert probe_sources(cfg, exts, 1) is not None  # one process runs unsharded
    with pytest.raises(ProbeManifestError, match="runtime.distributed=fsdp on several processes") as err:
        probe_sources(cfg, exts, 2)
    assert err.value.exit_code == 2


@pytest.mark.slow
def test_with_two_ddp_processes_rank_0_probes_and_the_run_is_unchanged(tmp_path):
    """2 gloo processes: only rank 0 probes (no collective of its own), nobody waits forever, and
    every step's loss is the 1-process run's without a probe (the probe changes nothing)."""
    import os
    import subprocess
    import sys

    def run_worker(args: list[str], nproc: int) -> subprocess.CompletedProcess:  # as tests/test_pretrain_e2e.py
        worker = str(Path(__file__).parent / "pretrain_worker.py")
        launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        res = subprocess.run([*launch, worker, *args], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    def losses(run: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())}

    manifest = labelled(tmp_path / "data")
    args = ["--modality", "vectors", "--data", str(tmp_path / "data"), "--max-steps", "4", "--masker", "stripes",
            "--set", "data.batch_size=8", "--set", "runtime.device=cpu", "--set", "runtime.log_every=1",
            "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false"]
    plain, probed = tmp_path / "plain", tmp_path / "probed"
    run_worker([*args, "--out", str(plain)], nproc=1)
    res = run_worker([*args, "--out", str(probed), "--probe", str(manifest), "--set", "eval.every=2"], nproc=2)
    assert [r["step"] for r in probe_rows(probed)] == [2, 4] and "online probe" not in res.stderr
    a, b = losses(plain), losses(probed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5), (step, a[step], b[step])


def test_a_resumed_run_may_add_or_change_the_probe(tmp_path, example_plugins):
    from d2v_core.config_resolve import config_to_yaml, parse_set, resolve_config
    from d2v_core.errors import ConfigError
    from d2v_core.plugin_loader import get_registry
    from d2v_core.train.resume import check_resume_config

    registry = get_registry()
    stored = config_to_yaml(resolve_config(registry, "vectors", None, None, []))
    probed = resolve_config(registry, "vectors", None, None, [parse_set("eval.probe=m.csv"), parse_set("eval.every=50")])
    assert set(check_resume_config(stored, probed)) == {"eval.probe", "eval.every"}
    with pytest.raises(ConfigError, match="optim.lr"):  # what changes training is still refused
        check_resume_config(stored, resolve_config(registry, "vectors", None, None, [parse_set("optim.lr=0.1")]))
