"""Print the results in benchmarks/results/*.json as the markdown tables of docs/benchmarks.md.

Run: .venv/bin/python benchmarks/summarize.py [--include-quick]
Quick (smoke) and check results are left out unless asked for; every table names its files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import RESULTS  # noqa: E402


def _load(pattern: str, include_quick: bool) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(RESULTS.glob(pattern)):
        if not include_quick and (path.stem.endswith("_quick") or path.stem.endswith("_check")):
            continue
        out.append((path.name, json.loads(path.read_text())))
    return out


def _mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


def train_step_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| modality/preset | dtype | batch | d2v s/step (median [min-max]) | reference s/step | d2v/ref time | "
             "d2v MFU | ref MFU | EMA % of step (d2v) | peak MiB d2v / ref (ratio) | load avg | file |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        if "seconds_per_step" not in r:  # a --no-time run (train_step_*_memory.json): memory only
            continue
        s, t = r["summary"], r["seconds_per_step"]
        mem = "n/a"
        if "peak_memory" in r:
            pm = r["peak_memory"]
            mem = f"{_mib(pm['d2v']['peak_bytes'])} / {_mib(pm['reference']['peak_bytes'])} ({pm['ratio_d2v_over_reference']:.2f})"
        cell = lambda x: f"{x['median']:.3f} [{x['min']:.3f}-{x['max']:.3f}]"  # noqa: E731
        variant = " +compile" * bool(r.get("compile")) + " +AC" * bool(r.get("activation_checkpointing"))
        lines.append(
            f"| {r['modality']}/{r['preset']}{variant} | {r['dtype']} | {r['batch']} | {cell(t['d2v'])} | {cell(t['reference'])} | "
            f"{s['time_ratio_d2v_over_reference']:.3f} | {s['fraction_of_matmul_peak']['d2v']:.0%} | "
            f"{s['fraction_of_matmul_peak']['reference']:.0%} | {s['ema_fraction_of_step']['d2v']:.2%} | {mem} | "
            f"{r['machine']['load_average'][0]:.1f} | {name} |")
    return "\n".join(lines)


def ac_vs_plain_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| modality/preset | dtype | batch | length | peak MiB with / without AC (reduction) | s/step with / without AC (ratio) | "
             "load avg | file |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        s, mem, time = r.get("summary", {}), "not measured", "not measured"
        if "peak_memory" in r:
            pm = r["peak_memory"]
            mem = f"{_mib(pm['ac']['peak_bytes'])} / {_mib(pm['plain']['peak_bytes'])} ({s['peak_memory_reduction']:.0%} lower)"
        if "seconds_per_step" in r:
            t = r["seconds_per_step"]
            time = f"{t['ac']['median']:.3f} / {t['plain']['median']:.3f} ({s['time_ratio_ac_over_plain']:.2f})"
        lines.append(f"| {r['modality']}/{r['preset']}{' +compile' * bool(r.get('compile'))} | {r['dtype']} | {r['batch']} | "
                     f"{r.get('length') or 'preset'} | {mem} | {time} | {r['machine']['load_average'][0]:.1f} | {name} |")
    return "\n".join(lines)


def data_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| modality | decode+collate samples/s per worker | via 1 worker process | training consumes samples/s | headroom | file |",
             "|---|---|---|---|---|---|"]
    for name, r in rows:
        for m, row in r["modalities"].items():
            lines.append(f"| {m} | {row['per_worker']['samples_per_s']['median']:.1f} | {row['workers_1']['samples_per_s']['median']:.1f} | "
                         f"{row['training']['samples_per_s']:.1f} | {row['loader_headroom']:.1f}x | {name} |")
    return "\n".join(lines)


def probe_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| modality | budget | steps | last loss | target_var / pred_var | probe | pretrained | random-init | gain (points) | "
             "classical | majority | records used | file |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        last = r["pretrain"]["last_metrics"] or {}
        cls = r.get("classical", {}).get("accuracy")
        for p in r["probes"]:
            if "error" in p:
                lines.append(f"| {r['modality']} | {r['minutes']:g} min | {r['pretrain']['steps_done']} | | | {p['variant']} | "
                             f"probe failed: {p['error'].splitlines()[-1][:80]} | | | | | | {name} |")
                continue
            lines.append(
                f"| {r['modality']} | {r['minutes']:g} min | {r['pretrain']['steps_done']} of {r['pretrain']['max_steps']} | "
                f"{last.get('loss', float('nan')):.3f} | {last.get('target_var', float('nan')):.3f} / {last.get('pred_var', float('nan')):.3f} | "
                f"{p['variant']} | {p['pretrained']['accuracy']:.3f} | {p['random-init']['accuracy']:.3f} | {p['gain_points']:+.1f} | "
                f"{'n/a' if cls is None else f'{cls:.3f}'} | {p['majority_class_accuracy']:.3f} | {p.get('coverage', float('nan')):.0%} | {name} |")
    return "\n".join(lines)


def v1_vs_v2_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| modality | budget | preset | steps | samples/s | student seqs/s | probe at each checkpoint (train s: acc) | "
             "random init | time to target | pretrain CPU s | CPU s to target | classical | file |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        s = r["summary"]
        cls = r.get("classical", {}).get("accuracy")
        for run in r["runs"]:
            ck = [c for c in run["checkpoints"] if "accuracy" in c]
            if not ck:
                lines.append(f"| {r['modality']} | {r['minutes']:g} min | {run['preset']} | | | | every probe failed | | | | | | {name} |")
                continue
            curve = ", ".join(f"{c['train_seconds']:.0f}: {c['accuracy']:.3f}" for c in ck)
            t = s["time_to_target_s"].get(run["preset"])
            # CPU seconds exist only for runs trained since they were recorded (not for --reuse)
            cpu, ct = run["pretrain"].get("cpu_seconds"), s.get("cpu_seconds_to_target", {}).get(run["preset"])
            lines.append(
                f"| {r['modality']} | {r['minutes']:g} min | {run['preset']} | {run['pretrain']['steps_done']} | "
                f"{run['throughput']['samples_per_s']:.1f} | {run['throughput']['student_sequences_per_s']:.1f} | {curve} | "
                f"{ck[-1]['random_init_accuracy']:.3f} | {'not reached' if t is None else f'{t:.0f} s'} (target {s['target_accuracy']:.3f}) | "
                f"{'n/a' if cpu is None else f'{cpu:.0f}'} | {'n/a' if ct is None else f'{ct:.0f}'} | "
                f"{'n/a' if cls is None else f'{cls:.3f}'} | {name} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--include-quick", action="store_true")
    a = p.parse_args()
    print("### Training step\n\n" + train_step_table(_load("train_step_*.json", a.include_quick)))
    print("\n### Activation checkpointing against the plain step\n\n" + ac_vs_plain_table(_load("ac_vs_plain_*.json", a.include_quick)))
    print("\n### Data pipeline\n\n" + data_table(_load("data_pipeline*.json", a.include_quick)))
    print("\n### What pretraining buys\n\n" + probe_table(_load("pretrain_probe_*.json", a.include_quick)))
    print("\n### data2vec 1.0 against 2.0\n\n" + v1_vs_v2_table(_load("v1_vs_v2_*.json", a.include_quick)))
    cli = RESULTS / "cli_startup.json"
    if cli.is_file():
        r = json.loads(cli.read_text())
        print("\n### CLI start-up\n\n| command | median s | min | max |\n|---|---|---|---|")
        for n, v in r["seconds"].items():
            print(f"| d2v {n} | {v['median']:.3f} | {v['min']:.3f} | {v['max']:.3f} |")


if __name__ == "__main__":
    main()
