"""data2vec 1.0 against 2.0 at the same encoder size, side by side in one run (issue 11).

Run:  .venv/bin/python benchmarks/v1_vs_v2.py --modality audio --minutes 10
      -> benchmarks/results/v1_vs_v2_<modality>_<minutes>min.json (runs under runs/bench/v1_vs_v2/)

For each preset (default ``tiny`` and ``v2-tiny``: the same Transformer, the same data) the
script calibrates the step time, pretrains for ``--minutes`` of wall clock with checkpoints at
``--checkpoints`` evenly spaced steps, and linear-probes every checkpoint (``d2v probe``, as in
``pretrain_probe.py``). It reports

- throughput: original samples per second (the teacher sees each once) and student sequences
  per second (samples x ``masking.clone_batch``), the median over the logged intervals;
- the probe accuracy of every checkpoint against its training wall time (time inside the
  training loop, from ``metrics.jsonl``); with ``--probe-targets`` also on data2vec's own target
  representation (``d2v probe --layers targets``, or ``--layers top-k`` for instance-normed
  targets), beside the final layer;
- time to accuracy: for a target (``--target``, default the lower of the two final accuracies),
  the first checkpoint of each preset that reaches it, and the ratio of those times, in wall
  seconds and in CPU seconds of the pretrain process (each checkpoint's share of the run's CPU
  time, pro rata by step: a busy machine inflates the wall time of whichever preset ran under
  more load, its CPU time far less);
- the same architecture at random init (from each probe) and the classical baseline of
  ``classical_baselines.py`` on the same split, so the v1 run also answers what pretraining buys.

The two runs run one after the other on the same machine, so a busy machine distorts both.
``--set`` overrides both runs, ``--v1-set`` / ``--v2-set`` one of them (a candidate preset
measured before it becomes one; give such a run its own ``--work`` and ``--out``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import ROOT, SHARED, machine_info, write_result  # noqa: E402
from pretrain_probe import TASKS, calibrate, pretrain, probe, probe_manifest, read_metrics, whole_clip_view  # noqa: E402


def clone_batch(run: Path) -> int:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    return int(cfg["masking"].get("clone_batch", 1))


def target_layers_variant(run: Path) -> str:
    """The ``d2v probe`` flag for the run's target representation: ``--layers targets``, or
    ``--layers top-k`` (the same layers, not normalised) when its targets are instance-normed
    over time, which makes their mean over a record zero."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    instance = "instance" in (cfg["targets"]["per_layer_norm"], cfg["targets"].get("post_norm"))
    return "--layers top-k" if instance else "--layers targets"


def throughput(metrics: list[dict], clones: int) -> dict:
    """Median samples/s over the logged intervals (the first one includes warm-up)."""
    rates = [m["samples_per_s"] for m in metrics[1:] if "samples_per_s" in m] or [m["samples_per_s"] for m in metrics]
    med = statistics.median(rates) if rates else 0.0
    return {"samples_per_s": med, "student_sequences_per_s": med * clones, "clone_batch": clones, "intervals": len(rates)}


def time_at(step: int, metrics: list[dict]) -> float:
    """Training-loop seconds at ``step``, interpolated between the logged rows around it (the
    checkpoint steps are not always logged ones)."""
    rows = sorted((m["step"], m["time"]) for m in metrics)
    if not rows:
        return float("nan")
    before = [r for r in rows if r[0] <= step] or rows[:1]
    after = [r for r in rows if r[0] >= step] or rows[-1:]
    (s0, t0), (s1, t1) = before[-1], after[0]
    if s1 == s0:
        if len(rows) < 2:
            return t0
        (sa, ta), (sb, tb) = rows[-2:] if s0 == rows[-1][0] else rows[:2]
        return t0 + (step - s0) * (tb - ta) / max(sb - sa, 1)
    return t0 + (step - s0) * (t1 - t0) / (s1 - s0)


def run_preset(modality: str, preset: str, a: argparse.Namespace, manifest: Path, own_sets: list[str]) -> dict:
    from d2v_core.train.checkpoint import list_checkpoints

    task = TASKS[modality]
    data = str(a.root / task["data"])
    tag = f"{modality}-{preset}-{a.minutes:g}min"
    run = a.work / tag
    extra = [x for s in a.sets + own_sets for x in ("--set", s)]
    out: dict = {"preset": preset, "overrides": own_sets}
    if a.reuse and list_checkpoints(run) and read_metrics(run):
        metrics = read_metrics(run)
        out["pretrain"] = {"reused": str(run), "steps_done": metrics[-1]["step"], "last_metrics": metrics[-1]}
        print(f"{preset}: reusing {run} ({metrics[-1]['step']} steps)")
    else:
        steps = a.steps
        if steps is None:
            cal = pretrain(modality, data, a.work / f"{tag}-calibration", task["calibrate"], None, extra, preset=preset)
            sps, overhead = calibrate(read_metrics(a.work / f"{tag}-calibration"), cal["wall_seconds"])
            steps = max(1, int((a.minutes * 60.0 - overhead) / sps * 0.95))
            out["calibration"] = {"seconds_per_step": sps, "overhead_seconds": overhead}
        every = max(1, steps // a.checkpoints)
        extra += ["--set", f"runtime.save_every={every}", "--set", f"runtime.keep_last={a.checkpoints + 2}",
                  "--set", f"runtime.log_every={max(1, min(every, 10))}"]
        out["pretrain"] = pretrain(modality, data, run, steps, a.minutes * 60.0, extra, preset=preset)
        metrics = read_metrics(run)
    out["throughput"] = throughput(metrics, clone_batch(run))
    cpu_total, steps_done = out["pretrain"].get("cpu_seconds"), metrics[-1]["step"] if metrics else None
    out["checkpoints"] = []
    for ck in list_checkpoints(run):
        target = whole_clip_view(run, a.work / f"{tag}-view", ck.path) if modality == "audio" else ck.path
        row = {"step": ck.step, "train_seconds": time_at(ck.step, metrics)}
        if cpu_total is not None and steps_done:  # start-up included, spread over the steps
            row["cpu_seconds"] = cpu_total * min(ck.step, steps_done) / steps_done
        try:
            rep = probe(target, manifest, task["split_by"], "", a.work / f"{tag}-probe.json")
        except RuntimeError as exc:  # recorded; the other checkpoints and the summary still come out
            out["checkpoints"].append({**row, "error": str(exc)[-2000:]})
            print(f"{preset} step {ck.step}: PROBE FAILED: {exc}")
            continue
        row.update(accuracy=rep["pretrained"]["accuracy"], random_init_accuracy=rep["random-init"]["accuracy"])
        if a.probe_targets:  # data2vec's own target representation beside the final layer (issue 20)
            variant = target_layers_variant(run)
            try:
                rep = probe(target, manifest, task["split_by"], variant, a.work / f"{tag}-probe.json")
                row.update(targets_variant=variant, targets_accuracy=rep["pretrained"]["accuracy"],
                           targets_random_init_accuracy=rep["random-init"]["accuracy"])
            except RuntimeError as exc:
                row.update(targets_variant=variant, targets_error=str(exc)[-2000:])
        out["checkpoints"].append(row)
        print(f"{preset} step {ck.step} ({row['train_seconds']:.0f} s, {row.get('cpu_seconds', float('nan')):.0f} CPU s): probe {row['accuracy']:.4f} "
              f"(random init {row['random_init_accuracy']:.4f})"
              + (f"; {row['targets_variant']}: {row['targets_accuracy']:.4f} (random init {row['targets_random_init_accuracy']:.4f})"
                 if "targets_accuracy" in row else ""))
    return out


def time_to(rows: list[dict], target: float, key: str = "train_seconds") -> float | None:
    return next((r.get(key) for r in rows if r.get("accuracy", -1.0) >= target), None)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", default="audio", choices=list(TASKS))
    p.add_argument("--presets", nargs=2, default=["tiny", "v2-tiny"], metavar=("V1", "V2"))
    p.add_argument("--minutes", type=float, default=10.0, help="pretraining budget of each preset (wall clock)")
    p.add_argument("--steps", type=int, help="--max-steps of both runs (default: calibrated to the budget)")
    p.add_argument("--checkpoints", type=int, default=4, help="checkpoints to probe per run")
    p.add_argument("--target", type=float, help="probe accuracy for the time-to-accuracy comparison")
    p.add_argument("--set", action="append", default=[], dest="sets", help="override passed to both runs (repeatable)")
    p.add_argument("--v1-set", action="append", default=[], dest="v1_sets", help="override of the V1 run only (repeatable)")
    p.add_argument("--v2-set", action="append", default=[], dest="v2_sets", help="override of the V2 run only (repeatable)")
    p.add_argument("--root", type=Path, default=SHARED)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "v1_vs_v2",
                   help="run directories (a run with other overrides replaces the same preset's run here: give it its own)")
    p.add_argument("--reuse", action="store_true", help="probe existing run directories instead of pretraining again")
    p.add_argument("--probe-targets", action="store_true",
                   help="also probe every checkpoint on its target representation (d2v probe --layers targets / top-k)")
    p.add_argument("--no-classical", action="store_true", help="skip the classical baseline (MFCC / pixels / bag of words)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    manifest = probe_manifest(a.modality, a.root, a.work / f"{a.modality}-manifests")
    runs = [run_preset(a.modality, preset, a, manifest, own) for preset, own in zip(a.presets, (a.v1_sets, a.v2_sets), strict=True)]
    finals = [[c for c in r["checkpoints"] if "accuracy" in c][-1]["accuracy"] for r in runs
              if any("accuracy" in c for c in r["checkpoints"])]
    target = a.target if a.target is not None else (min(finals) if finals else None)
    v1, v2 = runs
    t1, t2 = (time_to(r["checkpoints"], target) if target is not None else None for r in runs)
    c1, c2 = (time_to(r["checkpoints"], target, "cpu_seconds") if target is not None else None for r in runs)
    summary = {
        "target_accuracy": target,
        "time_to_target_s": {v1["preset"]: t1, v2["preset"]: t2},
        "time_ratio_v1_over_v2": (t1 / t2) if t1 and t2 else None,
        "cpu_seconds_to_target": {v1["preset"]: c1, v2["preset"]: c2},
        "cpu_ratio_v1_over_v2": (c1 / c2) if c1 and c2 else None,
        "samples_per_s_ratio_v2_over_v1": v2["throughput"]["samples_per_s"] / max(v1["throughput"]["samples_per_s"], 1e-12),
        "student_sequences_per_s_ratio_v2_over_v1":
            v2["throughput"]["student_sequences_per_s"] / max(v1["throughput"]["student_sequences_per_s"], 1e-12),
    }
    result = {"benchmark": "v1_vs_v2", "modality": a.modality, "minutes": a.minutes, "overrides": a.sets,
              "machine": machine_info(), "runs": runs, "summary": summary}
    if not a.no_classical:
        from classical_baselines import classical_probe

        result["classical"] = classical_probe(a.modality, manifest, "label", TASKS[a.modality]["split_by"])
        print(f"classical baseline ({result['classical']['features']}): {result['classical']['accuracy']:.4f}")
    print(f"summary: {summary}")
    print(f"wrote {write_result(f'v1_vs_v2_{a.modality}_{a.minutes:g}min', result, a.out)}")


if __name__ == "__main__":
    main()
