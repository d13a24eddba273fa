"""Data pipeline: decode + collate samples/s per worker, against what training consumes (issue 9, item 3).

Run:  .venv/bin/python benchmarks/data_pipeline.py            -> benchmarks/results/data_pipeline.json
      .venv/bin/python benchmarks/data_pipeline.py --quick    (a smoke run: fewer batches and steps)

For each modality, the preset's (default ``tiny``) record decoder reads the shared data through
``d2v_core.data.loader.TrainLoader`` exactly as ``d2v pretrain`` does (folder / text-lines source,
seeded shuffle, the plugin's ``decode`` and ``collate``):

- ``per_worker``: ``num_workers=0``, so decoding runs in this process on one core: the rate one
  DataLoader worker sustains (samples = records: clips, images, documents).
- ``workers_1``: ``num_workers=1``, the same through a DataLoader worker process (adds pickling
  and inter-process transfer of the batches).
- ``training``: samples/s that the preset's full training step consumes (the core Trainer on
  batches from the same loader, measured after warm-up; all threads).

``loader_headroom`` = per-worker rate / training rate: above 1, one worker keeps up with
training; the number of workers a run needs is about ``ceil(1 / headroom)`` (plus margin).
On 2 cores, workers and the training step compete for the same CPUs; the rates are measured
one at a time, so they show capacity, not a run's steady state.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_common import SHARED, machine_info, summarize, write_result  # noqa: E402

DATA = {"audio": "audio/speech", "image": "image/digits", "text": "text/corpus.txt"}


def loader_rate(cfg, registry, data: str, num_workers: int, batches: int, repeats: int) -> dict:  # noqa: ANN001
    """Samples/s of ``batches`` batches from a fresh epoch (repeated; the first batch of each
    epoch is excluded, so worker start-up does not count)."""
    from d2v_core.data.loader import TrainLoader
    from d2v_core.train.build import build_record_decoder

    loader = TrainLoader(data, build_record_decoder(cfg, registry), batch_size=cfg.data.batch_size,
                         num_workers=num_workers, shuffle_buffer=cfg.data.shuffle_buffer, seed=0)
    rates, token_rates = [], []
    for epoch in range(repeats):
        it = iter(loader.iter_epoch(epoch))
        next(it)
        t0, n, tokens = time.perf_counter(), 0, 0
        for _ in range(batches):
            try:
                batch = next(it)
            except StopIteration:
                break
            n += cfg.data.batch_size  # full batches only (drop_last): records, whatever the rows
            if "tokens" in batch:
                tokens += int((~batch["padding_mask"]).sum())
        dt = time.perf_counter() - t0
        rates.append(n / dt)
        token_rates.append(tokens / dt)
        del it
    out = {"samples_per_s": summarize(rates), "batch_size": cfg.data.batch_size, "batches": batches,
           "bad_records": loader.stats.state_dict()}
    if cfg.modality == "text":
        out["tokens_per_s"] = summarize(token_rates)
    return out


def training_rate(cfg, registry, data: str, steps: int, warmup: int) -> dict:  # noqa: ANN001
    """Samples/s of the core Trainer's step on real batches (the loader pre-read, not timed)."""
    from d2v_core.data.loader import TrainLoader
    from d2v_core.train.build import build_model, build_record_decoder
    from d2v_core.train.distributed import DistInfo
    from d2v_core.train.trainer import Trainer

    loader = TrainLoader(data, build_record_decoder(cfg, registry), batch_size=cfg.data.batch_size, seed=0)
    batches: list[dict] = []
    epoch = 0
    while len(batches) < warmup + steps:  # a small corpus packed into rows may hold few batches per epoch
        it = iter(loader.iter_epoch(epoch))
        batches += islice(it, warmup + steps - len(batches))
        del it
        epoch += 1

    class Replay:
        stats = loader.stats

        def iter_epoch(self, epoch: int, skip_batches: int = 0):  # noqa: ANN202, ARG002
            while True:
                yield from (dict(b) for b in batches)

    torch.manual_seed(0)
    trainer = Trainer(cfg, build_model(cfg, registry), Replay(), torch.device("cpu"), DistInfo())
    for _ in range(warmup):
        trainer.train_step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"seconds_per_step": summarize(times), "samples_per_s": cfg.data.batch_size / med, "batch_size": cfg.data.batch_size}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", action="append", choices=list(DATA), help="repeatable; default: all three")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--root", type=Path, default=SHARED, help="datasets folder (default ../shared/datasets)")
    p.add_argument("--batches", type=int, help="batches per loader measurement (default 20; --quick 3)")
    p.add_argument("--repeats", type=int, help="epochs measured per loader setting (default 3; --quick 1)")
    p.add_argument("--steps", type=int, help="timed training steps (default 10; --quick 2)")
    p.add_argument("--quick", action="store_true", help="3 batches, 1 repeat, 2 steps: a smoke run")
    p.add_argument("--set", action="append", default=[], dest="sets", help="config override, e.g. data.batch_size=16 (repeatable)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    for name, full, quick in (("batches", 20, 3), ("repeats", 3, 1), ("steps", 10, 2)):
        if getattr(a, name) is None:
            setattr(a, name, quick if a.quick else full)
    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import get_registry

    registry = get_registry()
    result: dict = {"benchmark": "data_pipeline", "preset": a.preset, "overrides": a.sets, "quick": a.quick,
                    "machine": machine_info(), "modalities": {}}
    for modality in a.modality or list(DATA):
        data = str(a.root / DATA[modality])
        overrides = ["runtime.device=cpu", "runtime.out_dir=/nonexistent-d2v-benchmark", *a.sets]
        cfg = resolve_config(registry, modality, a.preset, None, overrides)
        row = {"data": data, "per_worker": loader_rate(cfg, registry, data, 0, a.batches, a.repeats)}
        row["workers_1"] = loader_rate(cfg, registry, data, 1, a.batches, a.repeats)
        row["training"] = training_rate(cfg, registry, data, a.steps, 1)
        row["loader_headroom"] = row["per_worker"]["samples_per_s"]["median"] / row["training"]["samples_per_s"]
        result["modalities"][modality] = row
        print(f"{modality:<6} decode+collate {row['per_worker']['samples_per_s']['median']:8.1f} samples/s per worker "
              f"(1 worker process: {row['workers_1']['samples_per_s']['median']:.1f}); "
              f"training consumes {row['training']['samples_per_s']:.1f} samples/s; headroom {row['loader_headroom']:.1f}x")
    print(f"wrote {write_result('data_pipeline' + ('_quick' if a.quick else ''), result, a.out)}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
