"""CLI start-up time: `d2v --help`, `d2v --version`, `d2v list-plugins` (goal: under 0.5 s).

Run: .venv/bin/python benchmarks/cli_startup.py  -> benchmarks/results/cli_startup.json
Each command runs in a fresh process, interleaved, REPEATS times; median and spread are reported.
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPEATS = 15
COMMANDS = {"--help": ["--help"], "--version": ["--version"], "list-plugins": ["list-plugins"]}


def main() -> None:
    d2v = shutil.which("d2v", path=str(Path(sys.executable).parent)) or "d2v"
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(REPEATS):
        for name, args in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run([d2v, *args], check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "repeats": REPEATS,
        "seconds": {n: {"median": statistics.median(v), "min": min(v), "max": max(v)} for n, v in times.items()},
        "goal_seconds": 0.5,
    }
    out = Path(__file__).parent / "results" / "cli_startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for n, v in result["seconds"].items():
        print(f"d2v {n:<13} median {v['median']:.3f} s (min {v['min']:.3f}, max {v['max']:.3f})")


if __name__ == "__main__":
    main()
