"""CPU seconds per training step of presets and overrides on one fixed batch (issue 20 sweeps).

Run:  .venv/bin/python benchmarks/step_cost.py --threads 1 --length 24000 \
          --variant "tiny" --variant "v2-tiny" --variant "v2-tiny masking.clone_batch=4"
      .venv/bin/python benchmarks/step_cost.py --modality text --batch 16 \
          --variant "v2-tiny" --variant "v2-tiny decoder.options.layers=3"
Each variant is "PRESET [KEY=VALUE ...]"; all are interleaved round by round (a drifting load
hits them alike); prints the median CPU seconds per step of each (``time.process_time``: with one
thread on an oversubscribed machine the process's CPU time is far steadier than its wall time)
and the median wall seconds. The batch is ``train_step.py``'s synthetic one of the modality
(audio: ``--length`` samples a clip; text: rows of the preset's block size).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_step import FixedBatches, make_batch, text_tokenizer  # noqa: E402


def build(a: argparse.Namespace, preset: str, overrides: list[str]):  # noqa: ANN201
    """A trainer of ``preset`` with ``overrides`` on the modality's synthetic batch."""
    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import get_registry
    from d2v_core.train.build import build_model
    from d2v_core.train.distributed import DistInfo
    from d2v_core.train.trainer import Trainer

    cfg = resolve_config(get_registry(), a.modality, preset, None,
                         ["runtime.out_dir=/nonexistent-d2v-benchmark", f"data.batch_size={a.batch}", *overrides])
    batch = make_batch(cfg, a, text_tokenizer(cfg))
    torch.manual_seed(0)
    return Trainer(cfg, build_model(cfg, get_registry()), FixedBatches(batch), torch.device("cpu"), DistInfo())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True)
    p.add_argument("--modality", choices=["audio", "image", "text"], default="audio")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, help="audio: samples per clip (default 24000; the tiny presets crop to 1-2 s); "
                                              "text: tokens per row (default: the preset's block size)")
    p.add_argument("--rounds", type=int, default=8)
    a = p.parse_args(argv)
    if a.length is None and a.modality == "audio":
        a.length = 24000
    torch.set_num_threads(a.threads)
    trainers = []
    for v in a.variant:
        preset, *overrides = v.split()
        trainers.append(build(a, preset, overrides))
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
