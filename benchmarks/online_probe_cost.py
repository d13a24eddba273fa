"""What the online probe (``eval``, ``--probe``) costs at the tiny presets' defaults (issue 20).

Run:  .venv/bin/python benchmarks/online_probe_cost.py --modality audio image text
      -> benchmarks/results/online_probe_cost.json (run dirs under runs/bench/online_probe_cost/)

For each modality the script runs ``d2v pretrain --preset tiny --probe MANIFEST`` for ``--steps``
steps (default 40) with ``eval.every`` = half of them, so that the run makes two probes: the
first decodes the manifest's records (the default ``eval.max_records`` of them) once and caches
them, the second is what every later probe costs (forward passes and the fit). It reads the
probes' ``probe_seconds`` and the training step time (``samples / samples_per_s`` per logged
interval, which leaves the probe out; the median after the first interval) from
``metrics.jsonl`` and projects them onto a run of the tiny preset's own ``runtime.max_steps``
with the default ``eval.every``:

    cost = (first + (n - 1) * later) / (max_steps * step_s + first + (n - 1) * later)

where n is the number of probes such a run makes (every ``eval.every`` steps and the last).

It then splits a probe of the final checkpoint into its parts, in this process
(``parts``): decoding the records, the student's forward passes, and the fit, the fit
``--fit-repeats`` times interleaved with one BLAS thread (what the probe does,
``fit_blas_threads``) and with the BLAS library's own thread count (what it did before).
The probe manifests are the benchmarks' own (``pretrain_probe.py``): spoken digits split by
speaker, image digits and the 8 text categories on a random quarter.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import ROOT, SHARED, machine_info, write_result  # noqa: E402
from pretrain_probe import TASKS, pretrain, probe_manifest, read_metrics  # noqa: E402


def step_seconds(rows: list[dict]) -> float:
    """Median seconds per training step over the logged intervals after the first (warm-up);
    ``samples_per_s`` is measured without the probe's time."""
    per_step = []
    for prev, row in zip(rows, rows[1:], strict=False):
        if row.get("samples_per_s"):
            per_step.append(row["samples"] / row["samples_per_s"] / (row["step"] - prev["step"]))
    if not per_step:
        raise RuntimeError("fewer than 2 logged rows: pass more --steps")
    return statistics.median(per_step)


def probes_in(max_steps: int, every: int) -> int:
    """How many probes a run of ``max_steps`` makes: every ``every`` steps and at the last."""
    return max_steps // every + (1 if max_steps % every else 0)


def probe_parts(run: Path, manifest: Path, split_by: str | None, repeats: int) -> dict:
    """Seconds of each part of a probe of ``run``'s final checkpoint, as the online probe makes it."""
    import time

    import torch
    from threadpoolctl import threadpool_info

    from d2v_core.config import EvalConfig
    from d2v_core.data.sources import resolve_source
    from d2v_core.inference.embed import decode_source, embed_decoded
    from d2v_core.inference.pretrained import load_pretrained
    from d2v_core.inference.probe import fit_and_score, make_split
    from d2v_core.plugin_loader import get_registry

    ev = EvalConfig()
    pre = load_pretrained(run, get_registry())
    source = resolve_source(str(manifest), pre.record_decoder.extensions)
    t0 = time.perf_counter()
    decoded = decode_source(source, pre.record_decoder, batch_size=ev.batch_size, max_records=ev.max_records, seed=0)
    t1 = time.perf_counter()
    pre.model.eval()
    with torch.no_grad():
        emb = embed_decoded(pre.model, decoded, torch.device("cpu"))
    t2 = time.perf_counter()
    split = make_split(emb, None, ev.label_column, split_by, ev.test_fraction, 0)
    library = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
    fits: dict[str, list[float]] = {"one_thread": [], "library_threads": []}
    accuracy: dict[str, float] = {}
    for _ in range(repeats):  # interleaved, so that a change of load falls on both
        for name, threads in (("one_thread", "auto"), ("library_threads", library)):
            t = time.perf_counter()
            accuracy[name] = fit_and_score(split, 0, blas_threads=threads)["accuracy"]
            fits[name].append(time.perf_counter() - t)
    return {"decode_s": t1 - t0, "embed_s": t2 - t1, "torch_threads": torch.get_num_threads(), "library_blas_threads": library,
            "fit_s": {k: statistics.median(v) for k, v in fits.items()}, "fit_runs_s": fits, "fit_accuracy": accuracy}


def measure(modality: str, a: argparse.Namespace) -> dict:
    from d2v_core.config import EvalConfig
    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import get_registry

    task = TASKS[modality]
    preset = resolve_config(get_registry(), modality, "tiny", None, [])
    defaults = EvalConfig()
    manifest = probe_manifest(modality, a.root, a.work / "manifests")
    split = [] if modality != "audio" else ["--set", f"eval.split_by={task['split_by']}"]
    extra = ["--probe", str(manifest), "--set", f"eval.every={a.steps // 2}", "--set", f"runtime.log_every={max(1, a.steps // 8)}",
             *split, *[x for s in a.sets for x in ("--set", s)]]
    run = a.work / modality
    info = pretrain(modality, str(a.root / task["data"]), run, a.steps, None, extra)
    rows = read_metrics(run)
    probes = [r for r in rows if "probe_acc" in r]
    if len(probes) != 2:
        raise RuntimeError(f"expected 2 probes in {run}/metrics.jsonl, got {len(probes)}; see {info['log']}")
    first, later = probes[0]["probe_seconds"], probes[1]["probe_seconds"]
    step_s = step_seconds([r for r in rows if "samples_per_s" in r])
    max_steps, every = preset.runtime.max_steps, defaults.every
    n = probes_in(max_steps, every)
    probe_total = first + (n - 1) * later
    train_total = max_steps * step_s
    return {
        "command": info["command"], "preset": "tiny", "max_steps": max_steps, "eval_every": every,
        "eval_max_records": defaults.max_records, "probe_train_size": probes[-1]["probe_train_size"],
        "probe_test_size": probes[-1]["probe_test_size"], "first_probe_s": first, "later_probe_s": later,
        "step_s": step_s, "probes_per_run": n, "projected_train_s": train_total, "projected_probe_s": probe_total,
        "cost_fraction": probe_total / (train_total + probe_total),
        "parts": probe_parts(run, manifest, task["split_by"] if modality == "audio" else None, a.fit_repeats),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modality", nargs="+", default=["audio", "image", "text"], choices=sorted(TASKS))
    p.add_argument("--steps", type=int, default=40, help="steps of each measuring run (two probes: at half and at the end)")
    p.add_argument("--fit-repeats", type=int, default=3, help="fits of each kind in the probe's breakdown (interleaved)")
    p.add_argument("--root", type=Path, default=SHARED)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "online_probe_cost")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for d2v pretrain (smoke tests)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    if a.steps < 4:
        p.error("--steps must be at least 4 (two probes and a logged interval between them)")
    result: dict = {"machine": machine_info(), "modalities": {}, "command": "benchmarks/online_probe_cost.py " + " ".join(argv or sys.argv[1:])}
    for modality in a.modality:
        result["modalities"][modality] = r = measure(modality, a)
        print(f"{modality}: step {r['step_s']:.3f} s, probe first {r['first_probe_s']:.1f} s / later {r['later_probe_s']:.1f} s "
              f"({r['probe_train_size']:.0f}+{r['probe_test_size']:.0f} records); {r['probes_per_run']} probes in "
              f"{r['max_steps']} steps: {100 * r['cost_fraction']:.1f}% of the run")
        parts = r["parts"]
        print(f"  a probe of the final checkpoint: decode {parts['decode_s']:.2f} s, embed {parts['embed_s']:.2f} s, fit "
              f"{parts['fit_s']['one_thread']:.2f} s on one BLAS thread / {parts['fit_s']['library_threads']:.2f} s on "
              f"{parts['library_blas_threads']}")
    print(f"wrote {write_result('online_probe_cost', result, a.out)}")


if __name__ == "__main__":
    main()
