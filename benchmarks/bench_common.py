"""Shared helpers of the benchmark scripts: machine/version record, robust statistics, JSON output,
peak-memory probes and a FLOP counter that also sees PyTorch's CPU flash-attention kernels."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SHARED = ROOT.parent / "shared" / "datasets"


def summarize(values: Iterable[float]) -> dict[str, float]:
    """Median, min, max, interquartile range and count of a sample."""
    v = sorted(values)
    if not v:
        return {"n": 0}
    q = statistics.quantiles(v, n=4) if len(v) >= 2 else [v[0], v[0], v[0]]
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "q1": q[0], "q3": q[2], "n": len(v)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def machine_info() -> dict[str, Any]:
    """Where and with what a result was measured. ``load_average`` is taken now: a 1-minute load
    well above the core count means other processes competed for the CPU (numbers distorted)."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "versions": {"torch": torch.__version__},
        "git_commit": _git_commit(),
        "load_average": list(os.getloadavg()),
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for mod in ("transformers", "torchaudio", "sklearn", "d2v_core"):
        try:
            info["versions"][mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is recorded as absent
            info["versions"][mod] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(name: str, result: dict[str, Any], out_dir: Path | None = None) -> Path:
    out = (out_dir or RESULTS) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result.setdefault("machine", machine_info())
    result["machine"]["load_average_end"] = list(os.getloadavg())
    out.write_text(json.dumps(result, indent=2, default=str))
    return out


# -- memory ------------------------------------------------------------------------------------

def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since the last :func:`reset_peak_rss` (or process start)."""
    return _status_kb("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0);
    False where that is not allowed (then the peak is the process's lifetime peak)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (peak-RSS measurement needs Linux)")


# -- FLOPs -------------------------------------------------------------------------------------

def flop_counter():
    """``FlopCounterMode`` that also counts ``F.scaled_dot_product_attention``'s CPU flash kernels
    (PyTorch 2.11 registers formulas for the CUDA kernels only, so on CPU the attention of
    dropout-free calls, e.g. every teacher forward, would count as zero)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def fwd(q, k, v, *args, out_val=None, **kwargs):  # noqa: ANN001, ARG001
        return sdpa_flop_count(q, k, v)

    def bwd(grad_out, q, k, v, *args, out_val=None, **kwargs):  # noqa: ANN001, ARG001
        return sdpa_backward_flop_count(grad_out, q, k, v)

    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return FlopCounterMode(display=False, custom_mapping=mapping)


def matmul_flops_per_s(dtype_name: str, device: str = "cpu", n: int | None = None, repeats: int = 7) -> dict[str, float]:
    """Throughput of one large square matmul in ``dtype_name`` ("fp32" or "bf16") with the
    current thread count: the machine's practical dense-math ceiling for the MFU-style ratio."""
    import torch

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    n = n or (8192 if device == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"n": n, "seconds_median": t, "flops_per_s": 2.0 * n**3 / t}


def timed(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Wall time of one call (synchronising CUDA before and after)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0
