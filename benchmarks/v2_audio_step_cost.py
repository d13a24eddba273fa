"""Seconds per training step of audio presets and overrides on one fixed batch (issue 20 sweep).

Run:  .venv/bin/python benchmarks/v2_audio_step_cost.py --threads 1 --length 24000 \
          --variant "tiny" --variant "v2-tiny" --variant "v2-tiny masking.clone_batch=4"
Each variant is "PRESET [KEY=VALUE ...]"; all are interleaved round by round (a drifting load
hits them alike); prints the median CPU seconds per step of each (``time.process_time``: with one
thread on an oversubscribed machine the process's CPU time is far steadier than its wall time)
and the median wall seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_step import FixedBatches  # noqa: E402


def build(preset: str, overrides: list[str], batch: dict):  # noqa: ANN201
    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import get_registry
    from d2v_core.train.build import build_model
    from d2v_core.train.distributed import DistInfo
    from d2v_core.train.trainer import Trainer

    cfg = resolve_config(get_registry(), "audio", preset, None, ["runtime.out_dir=/nonexistent-d2v-benchmark", *overrides])
    torch.manual_seed(0)
    return Trainer(cfg, build_model(cfg, get_registry()), FixedBatches(batch), torch.device("cpu"), DistInfo())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=24000, help="samples per clip (the tiny presets crop to 1-2 s)")
    p.add_argument("--rounds", type=int, default=8)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(1234)
    wav = torch.randn(a.batch, a.length, generator=g)
    batch = {"source": torch.nn.functional.layer_norm(wav, wav.shape[-1:]), "padding_mask": None,
             "keys": [str(i) for i in range(a.batch)]}
    trainers = []
    for v in a.variant:
        preset, *ov = v.split()
        trainers.append(build(preset, [*ov, f"data.batch_size={a.batch}"], batch))
    times: list[list[float]] = [[] for _ in trainers]
    walls: list[list[float]] = [[] for _ in trainers]
    for r in range(a.rounds + 1):
        for i, tr in enumerate(trainers):
            t0, c0 = time.perf_counter(), time.process_time()
            tr.train_step()
            if r:  # round 0 warms up
                times[i].append(time.process_time() - c0)
                walls[i].append(time.perf_counter() - t0)
    base = statistics.median(times[0])
    for v, t, w in zip(a.variant, times, walls, strict=True):
        m = statistics.median(t)
        print(f"{m:.3f} CPU s/step ({m / base:.2f}x) [{min(t):.3f}-{max(t):.3f}], wall {statistics.median(w):.3f} s  {v}")


if __name__ == "__main__":
    main()
