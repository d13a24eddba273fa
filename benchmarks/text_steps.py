"""Text pretraining at a FIXED number of updates, then the shared linear probe (issue 20).

Run:  .venv/bin/python benchmarks/text_steps.py --preset tiny --steps 1500 --tag baseline
      .venv/bin/python benchmarks/text_steps.py --preset tiny --steps 1500 --tag span --set masking.name=text-span
      -> one JSON line appended to benchmarks/results/text_steps.jsonl (runs under runs/bench/text_steps/)

``v1_vs_v2.py`` trains for minutes of wall clock, so on a shared machine the number of updates
varies from run to run; this script fixes it (``--steps``), so that settings compare on equal
work. It pretrains ``d2v pretrain --modality text --preset P --max-steps N --threads T`` on
``text/corpus.txt``, then probes the final checkpoint as ``v1_vs_v2.py`` does (8 categories of
``text/labelled.jsonl``, a random quarter held out, random init of the same architecture) on
the final layer and on ``--layers targets`` (the mean of the top-K layers the run's targets use).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import ROOT, SHARED, machine_info  # noqa: E402
from pretrain_probe import TASKS, probe, probe_manifest, pretrain  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, required=True, help="--max-steps of the run (the schedule's length)")
    p.add_argument("--tag", required=True, help="name of this attempt (run directory and JSON row)")
    p.add_argument("--set", action="append", default=[], dest="sets", help="config override for d2v pretrain (repeatable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--probe", action="append", dest="probes", help="d2v probe variants (default: final layer and --layers targets)")
    p.add_argument("--root", type=Path, default=SHARED)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "text_steps")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "text_steps.jsonl")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    task = TASKS["text"]
    run = a.work / a.tag
    extra = [x for s in a.sets for x in ("--set", s)] + ["--threads", str(a.threads)]
    t0 = time.time()
    pt = pretrain("text", str(a.root / task["data"]), run, a.steps, None, extra, preset=a.preset)
    manifest = probe_manifest("text", a.root, a.work / f"{a.tag}-manifests")
    row: dict = {"tag": a.tag, "preset": a.preset, "steps": a.steps, "overrides": a.sets, "threads": a.threads,
                 "pretrain_command": pt["command"], "wall_seconds": pt["wall_seconds"], "last_metrics": pt["last_metrics"],
                 "load_average": os.getloadavg(), "probes": {}}
    for variant in a.probes or ["", "--layers targets"]:
        rep = probe(run, manifest, task["split_by"], variant, a.work / f"{a.tag}-probe.json")
        row["probes"][variant or "final"] = {"pretrained": rep["pretrained"]["accuracy"],
                                             "random_init": rep["random-init"]["accuracy"]}
        print(f"{a.tag} [{variant or 'final'}]: probe {rep['pretrained']['accuracy']:.4f}, "
              f"random init {rep['random-init']['accuracy']:.4f}", flush=True)
    row["total_seconds"] = time.time() - t0
    row["machine"] = machine_info()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
    print(f"{a.tag}: {pt['steps_done']} steps in {pt['wall_seconds']:.0f} s; last {pt['last_metrics']}")


if __name__ == "__main__":
    main()
