"""The GPU step benchmark in one call (issue 19): d2v eager, d2v compiled and the transformers
reference (data2vec 1.0 presets only; there is no reference for 2.0) on one GPU, bf16, for audio,
image and text ``base`` and ``v2-base``; MFU against this GPU's measured bf16 matmul peak, peak
memory per side, host syncs per d2v step. Stops starting new cases when ``--budget-s`` (default
420 s) is spent, so the whole call stays under 8 minutes; writes the JSON after every case.

Run (on a machine with a CUDA GPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_step.py            # -> benchmarks/results/gpu_step.json
    .venv/bin/python benchmarks/gpu_step.py --cases image:base --repeats 3   # one case

Batches: ``train_step.GPU_DEFAULTS`` (audio 16 x 250k samples, image 64, text 16 x 512). MFU is
the step's model FLOPs (``FlopCounterMode``, compiled code counted eagerly) per second over a
8192^3 bf16 matmul's FLOP/s. Peak memory: ``torch.cuda.max_memory_allocated`` over 2 steps of one
side, minus what was allocated before them. Host syncs: ``torch.cuda.set_sync_debug_mode("warn")``
over one non-log d2v step (the warnings counted).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_common import machine_info, matmul_flops_per_s, summarize, timed, write_result  # noqa: E402

CASES = ["image:base", "text:base", "audio:base", "image:v2-base", "text:v2-base", "audio:v2-base"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="*", default=CASES, help="modality:preset pairs (default: all six)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side (compiled: + compilation)")
    p.add_argument("--budget-s", type=float, default=420.0, help="no new case starts after this many seconds")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # 'cpu' only for the smoke test
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bf16", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def case_args(a: argparse.Namespace, modality: str, preset: str, compile_: bool) -> argparse.Namespace:
    import train_step

    argv = [f"--modality={modality}", f"--preset={preset}", f"--dtype={a.dtype}", f"--device={a.device}"]
    argv += [f"--batch={a.batch}"] * bool(a.batch) + [f"--length={a.length}"] * bool(a.length) + ["--compile"] * compile_
    return train_step.parse_args(argv)


def peak_memory(step, device: str) -> int | None:  # noqa: ANN001
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    gc.collect()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def count_syncs(step, device: str) -> int | None:  # noqa: ANN001
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def run_case(a: argparse.Namespace, modality: str, preset: str, peak: float) -> dict:
    import train_step

    device = torch.device(a.device)
    ca = case_args(a, modality, preset, False)
    cfg = train_step.build_config(ca)
    tok = train_step.text_tokenizer(cfg)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in train_step.make_batch(cfg, ca, tok).items()}
    sides: dict = {}
    eager = train_step.build_d2v(cfg, batch, device)
    sides["d2v_eager"] = eager.train_step
    ref = None
    if cfg.decoder.name is None:  # the transformers reference is data2vec 1.0 only
        ref = train_step.build_reference(cfg, device, tok)
        sides["reference"] = lambda: ref.step(batch)
    compiled = train_step.build_d2v(train_step.build_config(case_args(a, modality, preset, True)), batch, device)
    sides["d2v_compiled"] = compiled.train_step
    out: dict = {"modality": modality, "preset": preset, "batch": ca.batch, "length": ca.length, "model": cfg.model.model_dump()}
    t0 = time.perf_counter()
    for name, fn in sides.items():
        for _ in range(a.warmup + (2 if name == "d2v_compiled" else 0)):
            fn()
    out["warmup_s"] = time.perf_counter() - t0
    with torch.compiler.set_stance("force_eager"):
        from bench_common import flop_counter

        with flop_counter() as fc:
            eager.train_step()
    flops = fc.get_total_flops()
    times: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(a.repeats):
        for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            times[name].append(timed(sides[name], a.device))
    out["flops_per_step_d2v"] = flops
    out["seconds_per_step"] = {s: summarize(v) for s, v in times.items()}
    out["mfu"] = {s: flops / out["seconds_per_step"][s]["median"] / peak for s in sides}
    out["samples_per_s"] = {s: ca.batch / out["seconds_per_step"][s]["median"] for s in sides}
    if ref is not None:
        med = {s: out["seconds_per_step"][s]["median"] for s in sides}
        out["speedup_vs_reference"] = {s: med["reference"] / med[s] for s in ("d2v_eager", "d2v_compiled")}
    out["peak_memory_bytes"] = {s: peak_memory(fn, a.device) for s, fn in sides.items()}
    out["host_syncs_per_d2v_step"] = {s: count_syncs(sides[s], a.device) for s in ("d2v_eager", "d2v_compiled")}
    eager.reduce_metrics()  # the sums of the steps above, so the accumulators stay bounded
    return out


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_step.py needs a CUDA GPU (none visible)")
    start = time.perf_counter()
    # the CPU smoke run only exercises the code path: a CPU without AVX512-BF16 multiplies bf16
    # 2048 x 2048 matrices so slowly that the budget was spent before the first case
    mm = matmul_flops_per_s("bf16", a.device, n=None if a.device == "cuda" else 256)
    result: dict = {"benchmark": "gpu_step", "machine": machine_info(), "matmul_bf16": mm, "cases": [], "skipped": []}
    for case in a.cases:
        modality, preset = case.split(":")
        if time.perf_counter() - start > a.budget_s:
            result["skipped"].append({"case": case, "why": f"time budget {a.budget_s:.0f} s spent"})
            continue
        try:
            row = run_case(a, modality, preset, mm["flops_per_s"])
        except Exception as exc:  # noqa: BLE001 - record it and go on with the next case
            row = {"modality": modality, "preset": preset, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        result["cases"].append(row)
        result["elapsed_s"] = time.perf_counter() - start
        write_result("gpu_step" + ("" if a.device == "cuda" else "_cpu_smoke"), result, a.out)
        print({k: row.get(k) for k in ("modality", "preset", "mfu", "speedup_vs_reference", "error")}, flush=True)
        gc.collect()
        if a.device == "cuda":
            torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    main()
