"""One attempt of the data2vec 2.0 audio sweep (issue 20): a fixed-step pretrain of one preset with
overrides, every checkpoint probed as in ``v1_vs_v2.py`` (whole clips, padded batches, split by
speaker), the student and with ``--teacher`` also the EMA teacher; one JSON line per attempt.

Run:  .venv/bin/python benchmarks/v2_audio_sweep.py --name base --preset v2-tiny --steps 300 \
          --checkpoints 3 [--teacher] [--set masking.clone_batch=4 ...]
      .venv/bin/python benchmarks/v2_audio_sweep.py --name base --steps 300 --reuse --teacher
      -> appends to benchmarks/results/v2_audio_sweep.jsonl (runs under runs/bench/v2_audio_sweep/)

Training runs with ``--threads 1`` and the probes with one OpenMP thread (the machine is shared),
so compare attempts by probe accuracy at a step count and by CPU seconds (the pretrain
subprocess's user + system time, far steadier than wall time on an oversubscribed machine), not
by absolute times against the 2-thread runs of ``v1_vs_v2.py``. The schedule is fitted to
``--steps``; to see what a run twice as long has at its middle without paying for the rest, set
``optim.schedule.phase_ratio=[0.2, 0.8, 0.0]`` (on a tri-stage preset) with half the steps: the
first half of a ``[0.1, 0.6, 0.3]`` tri-stage run exactly (the EMA anneals by absolute step). The
random-init probe of the tiny audio architecture is the same for every attempt (0.8525 on this
split) and is not repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import RESULTS, ROOT, SHARED, machine_info  # noqa: E402
from pretrain_probe import d2v_exe, pretrain, probe_manifest, read_metrics, teacher_view, whole_clip_view  # noqa: E402
from v1_vs_v2 import time_at  # noqa: E402


def probe_accuracy(target: Path, manifest: Path, out_json: Path) -> float:
    cmd = [d2v_exe(), "probe", str(target), "--train", str(manifest), "--split-by", "speaker", "--json", str(out_json)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(json.loads(out_json.read_text())["pretrained"]["accuracy"])


def main(argv: list[str] | None = None) -> None:
    from d2v_core.train.checkpoint import list_checkpoints

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="attempt name (the run directory's)")
    p.add_argument("--preset", default="v2-tiny")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--checkpoints", type=int, default=3)
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--teacher", action="store_true", help="also probe each checkpoint's EMA teacher")
    p.add_argument("--steps-to-probe", type=int, nargs="*", help="probe only these checkpoint steps")
    p.add_argument("--root", type=Path, default=SHARED)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "v2_audio_sweep")
    p.add_argument("--reuse", action="store_true", help="probe the attempt's existing run")
    p.add_argument("--out", type=Path, default=RESULTS / "v2_audio_sweep.jsonl")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the probe subprocesses too
    manifest = probe_manifest("audio", a.root, a.work / "audio-manifests")
    run = a.work / a.name / "run"
    every = max(1, a.steps // a.checkpoints)
    sets = [*a.sets, f"runtime.threads={a.threads}", f"runtime.save_every={every}", f"runtime.keep_last={a.checkpoints + 2}",
            f"runtime.log_every={max(1, min(every, 10))}"]
    record: dict = {"name": a.name, "preset": a.preset, "steps": a.steps, "overrides": sets}
    if not a.reuse:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        pt = pretrain("audio", str(a.root / "audio" / "speech"), run, a.steps, None,
                      [x for s in sets for x in ("--set", s)], preset=a.preset)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        record["command"] = pt["command"]
        record["pretrain_cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    metrics = read_metrics(run)
    record["last_metrics"] = metrics[-1]
    record["checkpoints"] = []
    for ck in list_checkpoints(run):
        if a.steps_to_probe and ck.step not in a.steps_to_probe:
            continue
        row: dict = {"step": ck.step, "train_seconds": time_at(ck.step, metrics)}
        view = whole_clip_view(run, a.work / a.name / "view", ck.path)
        row["student"] = probe_accuracy(view, manifest, a.work / a.name / "probe.json")
        if a.teacher:
            row["teacher"] = probe_accuracy(teacher_view(view), manifest, a.work / a.name / "probe.json")
        record["checkpoints"].append(row)
        print(a.name, row, flush=True)
    record["load_average"] = machine_info()["load_average"]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
