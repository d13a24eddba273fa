"""What pretraining buys: pretrain a tiny model for a fixed CPU budget, then linear-probe it
against the same architecture at random init and a classical baseline (issue 9, item 4).

Run:  .venv/bin/python benchmarks/pretrain_probe.py --modality audio --minutes 15
      .venv/bin/python benchmarks/pretrain_probe.py --modality image --minutes 15
      .venv/bin/python benchmarks/pretrain_probe.py --modality text --minutes 15
      -> benchmarks/results/pretrain_probe_<modality>_<minutes>min.json (run dirs under runs/bench/)

1. Calibrate: ``d2v pretrain`` for a few steps to measure the step time on this machine, so that
   ``--max-steps`` (which sets the length of the preset's learning-rate schedule) fits the
   budget. ``--steps N`` skips this.
2. Pretrain: ``d2v pretrain --modality M --preset tiny --data DATA --max-steps N`` as a
   subprocess; at the deadline (``--minutes`` after its start) it gets SIGINT, and the trainer
   stops cleanly after writing a checkpoint.
3. Probe: ``d2v probe RUN --train MANIFEST --split-by COLUMN --baseline random-init`` (logistic
   regression on frozen, mean-pooled features; whole groups held out), once per ``--probe``
   variant (default: the final output; e.g. ``--probe "--layer 2"``). For audio the probe reads a
   copy of the final checkpoint whose stored decoding options keep every clip whole and pad the
   batches (``whole_clip_view``): with the run's own options the audio decoder skips clips shorter
   than the training ``min_sample_size`` (most spoken digits) and crops each embedding batch to its
   shortest clip at a random offset. ``--as-trained-decoding`` probes the run as it is.
4. The classical baseline on the same split (``classical_baselines.py``).

Data (``--root``, default ../shared/datasets): audio pretrains on ``audio/speech`` and probes the
spoken digits split by speaker; image pretrains on the ``image/digits`` pictures and probes their
labels on a random quarter held out; text pretrains on ``text/corpus.txt`` and probes the 8
categories of ``text/labelled.jsonl`` on a random quarter held out. For image and text the
script writes a copy of the manifest with a row-id column to split by.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import ROOT, SHARED, machine_info, write_result  # noqa: E402
from classical_baselines import manifest_rows as classical_rows  # noqa: E402

TASKS = {
    "audio": {"data": "audio/speech", "manifest": "audio/digits/labels.csv", "split_by": "speaker", "calibrate": 40},
    "image": {"data": "image/digits", "manifest": "image/digits/labels.csv", "split_by": "item", "calibrate": 60},
    "text": {"data": "text/corpus.txt", "manifest": "text/labelled.jsonl", "split_by": "doc", "calibrate": 60},
}


def d2v_exe() -> str:
    return shutil.which("d2v", path=str(Path(sys.executable).parent)) or "d2v"


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pretrain(modality: str, data: str, run: Path, steps: int, deadline_s: float | None, extra: list[str],
             preset: str = "tiny") -> dict:
    """``d2v pretrain`` in a subprocess, stopped by SIGINT at the deadline; returns what happened."""
    if run.exists():
        shutil.rmtree(run)
    cmd = [d2v_exe(), "pretrain", "--modality", modality, "--preset", preset, "--data", data, "--out", str(run),
           "--max-steps", str(steps), "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false", *extra]
    log = (run.parent / f"{run.name}.log")
    run.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # the subprocess's user + system CPU seconds: on a shared machine far steadier than wall time
    # (children's rusage counts only waited-for children, so this is the pretrain alone)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        interrupted = False
        try:
            proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            interrupted = True
            proc.send_signal(signal.SIGINT)  # the trainer finishes its step, saves, exits 130
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    metrics = read_metrics(run)
    if proc.returncode not in (0, 128 + signal.SIGINT):
        raise RuntimeError(f"d2v pretrain exited {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
    return {"command": shlex.join(cmd), "exit_code": proc.returncode, "interrupted_at_deadline": interrupted,
            "wall_seconds": wall, "cpu_seconds": cpu, "steps_done": metrics[-1]["step"] if metrics else None,
            "first_metrics": metrics[0] if metrics else None, "last_metrics": metrics[-1] if metrics else None,
            "log": str(log)}


def calibrate(metrics: list[dict], wall_seconds: float) -> tuple[float, float]:
    """(seconds per step, fixed overhead in seconds) of a calibration run: the step time between
    its first and last metrics rows (the first includes the first steps' warm-up), and the rest
    of its wall time (start-up, building, the final checkpoint)."""
    if len(metrics) < 2:
        raise RuntimeError("calibration logged fewer than 2 metrics rows; pass --steps")
    first, last = metrics[0], metrics[-1]
    sps = (last["time"] - first["time"]) / (last["step"] - first["step"])
    # "time" counts from the start of the training loop: the wall time outside it, plus the
    # first steps' excess over the steady step time, is paid once per run
    return sps, max(0.0, wall_seconds - last["time"] + first["time"] - sps * first["step"])


def probe_manifest(modality: str, root: Path, work: Path) -> Path:
    """The labelled manifest; for image and text a copy with a row id to split by."""
    src = root / TASKS[modality]["manifest"]
    if modality == "audio":
        return src
    work.mkdir(parents=True, exist_ok=True)
    if modality == "image":
        out = work / "digits_labels.csv"
        with src.open(newline="") as f, out.open("w", newline="") as g:
            w = csv.writer(g)
            w.writerow(["path", "label", "item"])
            for i, row in enumerate(csv.DictReader(f)):
                w.writerow([str((src.parent / row["path"]).resolve()), row["label"], i])
        return out
    out = work / "labelled.jsonl"
    lines = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines() if x.strip()]
    out.write_text("".join(json.dumps({**r, "doc": i}) + "\n" for i, r in enumerate(lines)), encoding="utf-8")
    return out


def probe(run: Path, manifest: Path, split_by: str, variant: str, out_json: Path) -> dict:
    cmd = [d2v_exe(), "probe", str(run), "--train", str(manifest), "--split-by", split_by, "--baseline", "random-init",
           "--json", str(out_json), *shlex.split(variant)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"d2v probe failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads(out_json.read_text())
    report["command"] = shlex.join(cmd)
    return report


def whole_clip_view(run: Path, work: Path, checkpoint: Path | None = None) -> Path:
    """A copy of the run's latest checkpoint (or ``checkpoint``) whose stored audio decoding
    options keep every clip whole: no training ``min_sample_size`` (the tiny preset's 1 s would
    skip most spoken digits, 0.5-1.1 s) and ``batching: pad`` instead of cropping each embedding
    batch to its shortest clip at a random offset. The weights are the run's, unchanged."""
    import yaml

    from d2v_core.train.checkpoint import latest_checkpoint

    if checkpoint is None:
        latest = latest_checkpoint(run)
        if latest is None:
            raise RuntimeError(f"{run} has no complete checkpoint")
        checkpoint = latest.path
    view = work / checkpoint.name
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(checkpoint, view)
    cfg = yaml.safe_load((view / "config.yaml").read_text(encoding="utf-8"))
    cfg["data"]["options"].update({"min_sample_size": 400, "batching": "pad"})  # 400: the conv stack's receptive field
    (view / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return view


def teacher_view(view: Path) -> Path:
    """Turn a probe view (a checkpoint copy) into one of its EMA teacher: the student weights are
    replaced by the teacher's wherever the teacher has them (the teacher omits the conv extractor,
    the feature projection and the decoder, which stay the student's); the recorded hash follows."""
    from safetensors.torch import load_file, save_file

    student, teacher = load_file(view / "student.safetensors"), load_file(view / "teacher.safetensors")
    student.update({k: v for k, v in teacher.items() if k in student})
    save_file(student, str(view / "student.safetensors"))
    meta = json.loads((view / "meta.json").read_text(encoding="utf-8"))
    meta["sha256"]["student.safetensors"] = hashlib.sha256((view / "student.safetensors").read_bytes()).hexdigest()
    (view / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return view


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", default="audio", choices=list(TASKS))
    p.add_argument("--minutes", type=float, default=15.0, help="pretraining budget (wall clock, main run)")
    p.add_argument("--steps", type=int, help="--max-steps of the run (default: calibrated to fill the budget)")
    p.add_argument("--probe", action="append", dest="probes",
                   help="extra d2v probe arguments of one variant (repeatable); default: final output")
    p.add_argument("--set", action="append", default=[], dest="sets", help="config override passed to d2v pretrain (repeatable)")
    p.add_argument("--root", type=Path, default=SHARED, help="datasets folder (default ../shared/datasets)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "pretrain_probe", help="run directories")
    p.add_argument("--no-classical", action="store_true", help="skip the classical baseline")
    p.add_argument("--as-trained-decoding", action="store_true",
                   help="audio: probe with the run's own decoding options (skips clips under min_sample_size, crops batches)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    task = TASKS[a.modality]
    data = str(a.root / task["data"])
    tag = f"{a.modality}-{a.minutes:g}min"
    extra = [x for s in a.sets for x in ("--set", s)]
    result: dict = {"benchmark": "pretrain_probe", "modality": a.modality, "preset": "tiny", "minutes": a.minutes,
                    "data": data, "overrides": a.sets, "machine": machine_info()}
    budget = a.minutes * 60.0
    steps = a.steps
    if steps is None:
        cal = pretrain(a.modality, data, a.work / f"{tag}-calibration", task["calibrate"], None, extra)
        sps, overhead = calibrate(read_metrics(a.work / f"{tag}-calibration"), cal["wall_seconds"])
        steps = max(1, int((budget - overhead) / sps * 0.95))  # 5% slack: step times vary with the data
        result["calibration"] = {**cal, "seconds_per_step": sps, "overhead_seconds": overhead}
        print(f"calibration: {sps:.3f} s/step, {overhead:.0f} s start-up -> --max-steps {steps} for {a.minutes:g} min")
    run = a.work / tag
    result["pretrain"] = pretrain(a.modality, data, run, steps, budget, extra)
    result["pretrain"]["max_steps"] = steps
    pt = result["pretrain"]
    print(f"pretrained {pt['steps_done']} of {steps} steps in {pt['wall_seconds']:.0f} s "
          f"({'stopped at the deadline' if pt['interrupted_at_deadline'] else 'finished'}); last metrics {pt['last_metrics']}")
    manifest = probe_manifest(a.modality, a.root, a.work / f"{tag}-manifests")
    rows = len(classical_rows(manifest))
    target = run
    if a.modality == "audio" and not a.as_trained_decoding:
        target = whole_clip_view(run, a.work / f"{tag}-probe-view")
    result["probe_decoding"] = "as trained" if target == run else "whole clips, padded batches (see whole_clip_view)"
    result["probes"] = []
    for variant in a.probes or [""]:
        try:
            rep = probe(target, manifest, task["split_by"], variant, a.work / f"{tag}-probe.json")
        except RuntimeError as exc:  # recorded, so the classical baseline and the run's metrics still come out
            result["probes"].append({"variant": variant or "final output, mean pool", "error": str(exc)})
            print(f"PROBE FAILED [{variant or 'final output'}]: {exc}")
            continue
        rep["variant"] = variant or "final output, mean pool"
        rep["gain_points"] = 100 * (rep["pretrained"]["accuracy"] - rep["random-init"]["accuracy"])
        used = rep["pretrained"]["train_size"] + rep["pretrained"]["test_size"]
        rep["coverage"] = used / rows
        result["probes"].append(rep)
        print(f"probe [{rep['variant']}]: pretrained {rep['pretrained']['accuracy']:.4f}, random-init "
              f"{rep['random-init']['accuracy']:.4f} ({rep['gain_points']:+.1f} points), majority {rep['majority_class_accuracy']:.4f}, "
              f"{rep['classes']} classes, {used} of {rows} records")
        if used < rows:
            print(f"WARNING: the probe used {used} of {rows} labelled records (the rest were skipped while decoding)")
    if not a.no_classical:
        from classical_baselines import classical_probe

        result["classical"] = classical_probe(a.modality, manifest, "label", task["split_by"])
        print(f"classical baseline ({result['classical']['features']}): {result['classical']['accuracy']:.4f}")
    print(f"wrote {write_result(f'pretrain_probe_{a.modality}_{a.minutes:g}min', result, a.out)}")


if __name__ == "__main__":
    main()
