"""One attempt of the data2vec 2.0 audio sweep (issue 20): a fixed-step pretrain of one preset with
overrides, every checkpoint probed as in ``v1_vs_v2.py``; one JSON line per attempt.

Run:  .venv/bin/python benchmarks/v2_audio_sweep.py --name base --preset v2-tiny --steps 300 \
          --checkpoints 3 [--set masking.clone_batch=4 ...]
      -> appends to benchmarks/results/v2_audio_sweep.jsonl (runs under runs/bench/v2_audio_sweep/)

Training runs with ``--threads 1`` and the probes with one OpenMP thread (the machine is shared),
so compare attempts by probe accuracy at a step count and by training seconds per step taken on
the same load, not by absolute times against the 2-thread runs of ``v1_vs_v2.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import v1_vs_v2  # noqa: E402
from bench_common import RESULTS, ROOT, SHARED, machine_info  # noqa: E402
from pretrain_probe import probe_manifest  # noqa: E402

CPU: dict[str, float] = {}


def _timed_pretrain(*args, **kwargs) -> dict:  # noqa: ANN002, ANN003
    """``pretrain`` plus the CPU seconds its subprocess used (user + system, start-up included):
    on an oversubscribed machine far steadier than its wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = _pretrain(*args, **kwargs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["pretrain_cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out


_pretrain = v1_vs_v2.pretrain
v1_vs_v2.pretrain = _timed_pretrain


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="attempt name (the run directory's)")
    p.add_argument("--preset", default="v2-tiny")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--checkpoints", type=int, default=3)
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", type=Path, default=SHARED)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "v2_audio_sweep")
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "v2_audio_sweep.jsonl")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the probe subprocesses too
    a.sets = [*a.sets, f"runtime.threads={a.threads}"]
    a.minutes = 1e4  # no deadline: fixed steps
    manifest = probe_manifest("audio", a.root, a.work / "audio-manifests")
    work = a.work / a.name
    a.work = work
    out = v1_vs_v2.run_preset("audio", a.preset, a, manifest)
    rows = out["checkpoints"]
    last = out["pretrain"]["last_metrics"]
    record = {"name": a.name, "preset": a.preset, "steps": a.steps, "overrides": a.sets,
              "samples_per_s": out["throughput"]["samples_per_s"],
              "seconds_per_step": last["time"] / max(last["step"], 1), **CPU,
              "checkpoints": [{k: r.get(k) for k in ("step", "train_seconds", "accuracy", "random_init_accuracy")}
                              for r in rows],
              "last_metrics": last, "load_average": machine_info()["load_average"]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
