"""d2v's full training step against a transformers reference doing the same math (issue 9, item 1-2).

Run (one modality and precision per call; results in benchmarks/results/train_step_<modality>_<preset>_<dtype>.json):

    .venv/bin/python benchmarks/train_step.py --modality audio --dtype fp32
    .venv/bin/python benchmarks/train_step.py --modality audio --dtype bf16
    (same for image and text; --quick for a fast smoke run, --check for the equivalence check;
    --compile and --activation-checkpointing switch those on for the d2v side, the reference stays eager;
    --ac-vs-plain: d2v with activation checkpointing against d2v without, at any batch, with --no-time for
    the peak memory alone)

d2v side: ``build_model`` + the core ``Trainer.train_step`` (student forward on the masked input,
teacher forward, targets, loss, backward, gradient normalisation, clipping, AdamW, schedule, EMA
update), fed a fixed batch. Reference side: ``hf_reference.py``. Same synthetic batch, same masks
(same masker and generator), same sizes (the preset's model; batch and length from the flags).
Time: both sides in one process, interleaved (alternating which goes first), after warm-up
steps; median and spread. Peak memory: each side in its own fresh processes (``--memory-child``, ``--memory-repeats``),
peak RSS (CPU; ``VmHWM`` reset after imports; large blocks mmap-ed so that freed tensors leave the
RSS, see ``MMAP_THRESHOLD``) or ``torch.cuda.max_memory_allocated`` (GPU), minus the level before
the model was built. FLOPs: ``FlopCounterMode`` over one step of each side;
"MFU" is the step's model FLOP/s divided by a large same-dtype matmul's FLOP/s on the same threads.
EMA: the teacher updates alone, interleaved, as a fraction of the median step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_common import (  # noqa: E402
    flop_counter,
    machine_info,
    matmul_flops_per_s,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    summarize,
    timed,
    write_result,
)

CPU_DEFAULTS = {"audio": {"batch": 4, "length": 32000}, "image": {"batch": 4}, "text": {"batch": 1}}
GPU_DEFAULTS = {"audio": {"batch": 16, "length": 250000}, "image": {"batch": 64}, "text": {"batch": 16}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", required=True, choices=["audio", "image", "text"])
    p.add_argument("--preset", default="base")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, help="samples per step (default: a ~1-5 s step on 2 CPU cores)")
    p.add_argument("--length", type=int,
                   help="audio samples per clip (default 32000 = 2 s) or text tokens per row (default: the preset's block_size)")
    p.add_argument("--repeats", type=int, help="timed repeats per side (default 10; --quick 3)")
    p.add_argument("--warmup", type=int, help="untimed steps per side first (default 2; --quick 1)")
    p.add_argument("--memory-steps", type=int, help="steps each memory child runs after one warm-up (default 3; --quick 1)")
    p.add_argument("--memory-repeats", type=int, help="fresh processes per side for peak memory (default 2; --quick 1)")
    p.add_argument("--malloc-default", action="store_true", help="measure CPU memory with glibc's default mmap threshold")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up, 1 memory step: a smoke run, not a measurement")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument("--compile", action="store_true", help="d2v side with runtime.compile=true (the reference stays eager)")
    p.add_argument("--activation-checkpointing", action="store_true", help="d2v side with model.activation_checkpointing=true")
    p.add_argument("--activation-memory", action="store_true",
                   help="only measure the bytes the d2v student keeps for backward, with and without activation checkpointing")
    p.add_argument("--ac-vs-plain", action="store_true",
                   help="d2v with model.activation_checkpointing against d2v without (no reference): step time and peak memory")
    p.add_argument("--no-time", action="store_true", help="peak memory only (for batches too slow to time)")
    p.add_argument("--check", action="store_true", help="dropout off, d2v weights copied into the reference: losses must agree")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    p.add_argument("--memory-child", choices=["d2v", "reference"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for name, full, quick in (("repeats", 10, 3), ("warmup", 2, 1), ("memory_steps", 3, 1), ("memory_repeats", 2, 1)):
        if getattr(a, name) is None:
            setattr(a, name, quick if a.quick else full)
    defaults = (GPU_DEFAULTS if a.device == "cuda" else CPU_DEFAULTS)[a.modality]
    a.batch = a.batch or defaults["batch"]
    a.length = a.length or defaults.get("length")
    return a


# -- building --------------------------------------------------------------------------------

def build_config(a: argparse.Namespace, extra: list[str] = ()):  # noqa: ANN201
    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import get_registry

    overrides = [f"runtime.precision={a.dtype}", f"runtime.device={a.device}", f"data.batch_size={a.batch}",
                 "runtime.out_dir=/nonexistent-d2v-benchmark", *extra]
    if getattr(a, "compile", False):
        overrides.append("runtime.compile=true")
    if getattr(a, "activation_checkpointing", False):
        overrides.append("model.activation_checkpointing=true")
    if a.check:
        overrides += ["model.dropout=0.0", "model.attention_dropout=0.0", "model.activation_dropout=0.0",
                      "model.layerdrop=0.0", "model.drop_path=0.0"]
    return resolve_config(get_registry(), a.modality, a.preset, None, overrides)


def make_batch(cfg, a: argparse.Namespace, tokenizer=None) -> dict:  # noqa: ANN001
    """A synthetic batch shaped like the modality's collated batches (values do not change the cost)."""
    g = torch.Generator().manual_seed(1234)
    B = a.batch
    if a.modality == "audio":
        wav = torch.randn(B, a.length, generator=g)
        return {"source": torch.nn.functional.layer_norm(wav, wav.shape[-1:]), "padding_mask": None, "keys": [str(i) for i in range(B)]}
    if a.modality == "image":
        s = cfg.encoder.image_size
        return {"image": torch.randn(B, 3, s, s, generator=g), "keys": [str(i) for i in range(B)]}
    T = a.length or cfg.data.options.block_size
    special = set(tokenizer.special_ids)
    normal = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in special])
    tokens = normal[torch.randint(normal.numel(), (B, T), generator=g)]
    tokens[:, 0], tokens[:, -1] = tokenizer.bos_id, tokenizer.eos_id
    tail = max(1, T // 10)  # packed rows: the last row of a batch is usually not full
    tokens[-1, T - tail - 1] = tokenizer.eos_id
    tokens[-1, T - tail:] = tokenizer.pad_id
    return {"tokens": tokens, "padding_mask": tokens.eq(tokenizer.pad_id), "keys": [str(i) for i in range(B)]}


class FixedBatches:
    """A stand-in for ``TrainLoader``: the same batch every step (data loading is benchmarked
    separately by data_pipeline.py)."""

    def __init__(self, batch: dict) -> None:
        from d2v_core.data.bad_records import BadRecordStats

        self.batch, self.stats = batch, BadRecordStats()

    def iter_epoch(self, epoch: int, skip_batches: int = 0):  # noqa: ANN201, ARG002
        while True:
            yield dict(self.batch)


def build_d2v(cfg, batch: dict, device: torch.device):  # noqa: ANN001, ANN201
    from d2v_core.plugin_loader import get_registry
    from d2v_core.train.build import build_model
    from d2v_core.train.distributed import DistInfo
    from d2v_core.train.trainer import Trainer

    torch.manual_seed(0)
    model = build_model(cfg, get_registry())
    return Trainer(cfg, model, FixedBatches(batch), device, DistInfo())


def build_reference(cfg, device: torch.device, tokenizer=None):  # noqa: ANN001, ANN201
    from hf_reference import build_reference as build

    from d2v_core.plugin_loader import get_registry
    from d2v_core.train.build import build_masker

    torch.manual_seed(0)
    return build(cfg, build_masker(cfg, get_registry()), device, tokenizer)


def text_tokenizer(cfg):  # noqa: ANN001, ANN201
    if cfg.modality != "text":
        return None
    from d2v_core.plugin_loader import get_registry
    from d2v_core.train.build import build_record_decoder

    return build_record_decoder(cfg, get_registry()).tokenizer


# -- measuring --------------------------------------------------------------------------------

def memory_child(a: argparse.Namespace) -> dict:
    """Peak memory of one side, in this (fresh) process; printed as JSON for the parent."""
    import transformers.models.data2vec.modeling_data2vec_audio  # noqa: F401 - both sides import the same code
    import transformers.models.data2vec.modeling_data2vec_text  # noqa: F401
    import transformers.models.data2vec.modeling_data2vec_vision  # noqa: F401

    device = torch.device(a.device)
    cfg = build_config(a)
    tok = text_tokenizer(cfg)
    batch = make_batch(cfg, a, tok)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
        reset = reset_peak_rss()
    if a.memory_child == "d2v":
        trainer = build_d2v(cfg, batch, device)
        step = trainer.train_step
    else:
        ref = build_reference(cfg, device, tok)
        step = lambda: ref.step(batch)  # noqa: E731
    step()  # the warm-up step (with --compile: the compilation too, whose host memory a CPU's RSS shows)
    if device.type == "cuda":
        torch.cuda.synchronize()
        warmup_peak = torch.cuda.max_memory_allocated() - base
        torch.cuda.reset_peak_memory_stats()
    else:
        warmup_peak = peak_rss_bytes() - base
        reset_peak_rss()
    for _ in range(a.memory_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        steady = torch.cuda.max_memory_allocated() - base
        return {"peak_bytes": max(warmup_peak, steady), "steady_peak_bytes": steady,
                "how": "cuda max_memory_allocated - allocated before build"}
    steady = peak_rss_bytes() - base
    # steady_peak_bytes: the steps after the warm-up only (what compiled code keeps is still counted)
    return {"peak_bytes": max(warmup_peak, steady), "steady_peak_bytes": steady, "baseline_rss_bytes": base, "peak_reset": reset,
            "how": "peak RSS (VmHWM, reset after imports) - RSS before build"}


#: glibc serves allocations of at least this size with mmap and unmaps them when freed, so RSS
#: follows the live tensors instead of keeping freed heap memory (the default threshold adapts
#: up to 32 MiB, and then the peak depends on fragmentation as much as on what is alive)
MMAP_THRESHOLD = "65536"


def run_memory(a: argparse.Namespace, sides: dict[str, tuple[str, bool]] | None = None) -> dict:
    """Peak memory of each side, each in fresh processes, ``--memory-repeats`` times in
    alternating order; the median per side. ``sides``: name -> (memory child, activation
    checkpointing); default d2v (as the flags say) and the reference."""
    sides = sides or {"d2v": ("d2v", a.activation_checkpointing), "reference": ("reference", a.activation_checkpointing)}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if a.device == "cpu" and not a.malloc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(a.memory_repeats):
        for side in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            child, ac = sides[side]
            args = [sys.executable, __file__, f"--modality={a.modality}", f"--preset={a.preset}", f"--dtype={a.dtype}",
                    f"--device={a.device}", f"--batch={a.batch}", f"--memory-steps={a.memory_steps}", f"--memory-child={child}"]
            if a.length:
                args.append(f"--length={a.length}")
            if a.threads:
                args.append(f"--threads={a.threads}")
            args += ["--compile"] * a.compile + ["--activation-checkpointing"] * ac
            proc = subprocess.run(args, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"memory child {side} failed:\n{proc.stderr[-3000:]}")
            runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out: dict = {"allocator": "default glibc" if "MALLOC_MMAP_THRESHOLD_" not in env else f"glibc, MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}"}
    for side, rows in runs.items():
        peaks = [row["peak_bytes"] for row in rows]
        steady = [row["steady_peak_bytes"] for row in rows]
        out[side] = {**rows[0], "peak_bytes": statistics.median(peaks), "peak_bytes_runs": peaks,
                     "steady_peak_bytes": statistics.median(steady), "steady_peak_bytes_runs": steady}
    first, second = list(sides)
    out[f"ratio_{first}_over_{second}"] = out[first]["peak_bytes"] / max(out[second]["peak_bytes"], 1)
    out[f"steady_ratio_{first}_over_{second}"] = out[first]["steady_peak_bytes"] / max(out[second]["steady_peak_bytes"], 1)
    return out


def check_equivalence(trainer, ref, batch: dict, steps: int = 3) -> list[dict]:  # noqa: ANN001
    from reference_weights import load_d2v_weights

    load_d2v_weights(ref, trainer.model)
    rows = []
    for _ in range(steps):
        trainer.train_step()
        d = trainer.reduce_metrics()["loss"]
        r = ref.step(batch)
        rows.append({"d2v_loss": d, "reference_loss": r, "rel_diff": abs(d - r) / max(abs(r), 1e-12)})
    return rows


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.memory_child:
        print(json.dumps(memory_child(a)))
        return
    device = torch.device(a.device)
    cfg = build_config(a)
    tok = text_tokenizer(cfg)
    batch = make_batch(cfg, a, tok)
    if a.ac_vs_plain:
        ac_vs_plain(a, batch)
        return
    trainer = build_d2v(cfg, batch, device)
    if a.activation_memory:
        result = {"benchmark": "activation_memory", "modality": a.modality, "preset": a.preset, "dtype": a.dtype,
                  "device": a.device, "batch": a.batch, "length": a.length, "machine": machine_info(),
                  "saved_for_backward_bytes": saved_for_backward_bytes(trainer, batch)}
        sb = result["saved_for_backward_bytes"]
        sb["reduction"] = 1 - sb["with_ac"] / sb["without_ac"]
        print(f"{a.modality}/{a.preset} {a.dtype} batch {a.batch}: kept for backward {sb['without_ac'] / 2**20:.0f} MiB, "
              f"with activation checkpointing {sb['with_ac'] / 2**20:.0f} MiB ({sb['reduction']:.0%} less)")
        print(f"wrote {write_result(f'activation_memory_{a.modality}_{a.preset}_{a.dtype}', result, a.out)}")
        return
    ref = build_reference(cfg, device, tok)
    suffix = (("_cuda" if a.device == "cuda" else "") + ("_compile" if a.compile else "") + ("_ac" if a.activation_checkpointing else "")
              + ("_check" if a.check else "") + ("_quick" if a.quick else ""))
    name = f"train_step_{a.modality}_{a.preset}_{a.dtype}{suffix}"
    result: dict = {"benchmark": "train_step", "modality": a.modality, "preset": a.preset, "dtype": a.dtype, "device": a.device,
                    "batch": a.batch, "length": a.length, "quick": a.quick, "machine": machine_info(),
                    "compile": a.compile, "activation_checkpointing": a.activation_checkpointing,
                    "model": cfg.model.model_dump(), "reference_ema": "per-parameter loop: t.lerp_(s, 1 - tau)"}
    result["params"] = {"d2v_student": sum(p.numel() for p in trainer.model.parameters()),
                        "reference_student": sum(p.numel() for p in ref.model.parameters()) + sum(p.numel() for p in ref.head.parameters())}
    if a.check:
        rows = check_equivalence(trainer, ref, batch)
        result["check"] = rows
        tol = 1e-4 if a.dtype == "fp32" else 3e-2
        result["check_passed"] = all(r["rel_diff"] < tol for r in rows)
        for r in rows:
            print(f"loss d2v {r['d2v_loss']:.6f}  reference {r['reference_loss']:.6f}  rel diff {r['rel_diff']:.2e}")
        print(f"check {'passed' if result['check_passed'] else 'FAILED'} (tolerance {tol})")
        print(f"wrote {write_result(name, result, a.out)}")
        sys.exit(0 if result["check_passed"] else 1)
    if a.no_time:
        name += "_memory"
        del trainer, ref  # the memory children measure in fresh processes
    else:
        measure_speed(a, trainer, ref, batch, result)
    if not a.no_memory:
        result["peak_memory"] = run_memory(a)
        result.setdefault("summary", {})["peak_memory_ratio_d2v_over_reference"] = result["peak_memory"]["ratio_d2v_over_reference"]
    path = write_result(name, result, a.out)
    print_summary(a, result)
    print(f"wrote {path}")


def ac_vs_plain(a: argparse.Namespace, batch: dict) -> None:
    """d2v with activation checkpointing against d2v without, both d2v: steps timed interleaved
    (unless ``--no-time``) and the peak memory of each in fresh processes."""
    device = torch.device(a.device)
    name = (f"ac_vs_plain_{a.modality}_{a.preset}_{a.dtype}_b{a.batch}" + (f"_l{a.length}" if a.length else "")
            + ("_compile" if a.compile else "") + ("_quick" if a.quick else ""))
    result: dict = {"benchmark": "ac_vs_plain", "modality": a.modality, "preset": a.preset, "dtype": a.dtype, "device": a.device,
                    "batch": a.batch, "length": a.length, "quick": a.quick, "compile": a.compile, "machine": machine_info()}
    if not a.no_time:
        trainers = {side: build_d2v(build_config(argparse.Namespace(**{**vars(a), "activation_checkpointing": side == "ac"})), batch, device)
                    for side in ("ac", "plain")}
        sides = {side: t.train_step for side, t in trainers.items()}
        for _ in range(a.warmup):
            for fn in sides.values():
                fn()
        times: dict[str, list[float]] = {s: [] for s in sides}
        for r in range(a.repeats):
            for side in (list(sides) if r % 2 == 0 else list(reversed(sides))):
                times[side].append(timed(sides[side], a.device))
        result["seconds_per_step"] = {s: summarize(v) for s, v in times.items()}
        med = {s: result["seconds_per_step"][s]["median"] for s in sides}
        result["summary"] = {"time_ratio_ac_over_plain": med["ac"] / med["plain"]}
        del trainers, sides  # the memory children measure in fresh processes
    if not a.no_memory:
        result["peak_memory"] = run_memory(a, {"ac": ("d2v", True), "plain": ("d2v", False)})
        pm = result["peak_memory"]
        result.setdefault("summary", {})["peak_memory_reduction"] = 1 - pm["ratio_ac_over_plain"]
    path = write_result(name, result, a.out)
    print(f"{a.modality}/{a.preset} {a.dtype} batch {a.batch}  (load avg {result['machine']['load_average'][0]:.1f})")
    if "seconds_per_step" in result:
        st = result["seconds_per_step"]
        print(f"  step median: with checkpointing {st['ac']['median']:.3f} s, without {st['plain']['median']:.3f} s, "
              f"ratio {result['summary']['time_ratio_ac_over_plain']:.3f}")
    if "peak_memory" in result:
        pm = result["peak_memory"]
        print(f"  peak memory: with checkpointing {pm['ac']['peak_bytes'] / 2**20:.0f} MiB, without {pm['plain']['peak_bytes'] / 2**20:.0f} MiB, "
              f"{result['summary']['peak_memory_reduction']:.0%} lower")
    print(f"wrote {path}")


def saved_for_backward_bytes(trainer, batch: dict) -> dict[str, int]:  # noqa: ANN001
    """Bytes of the distinct storages (parameters left out) that autograd keeps from the forward
    pass for the backward pass of one d2v step, without and with activation checkpointing: the
    activation memory at the end of the forward pass, independent of the allocator and the load."""
    from d2v_core.train.trainer import mask_generator

    tcfg = trainer.model.transformer.cfg
    # the encoder's own stacks (audio's conv feature extractor) follow model.activation_checkpointing too
    encoder_parts = [m for m in trainer.model.encoder.modules() if isinstance(getattr(m, "activation_checkpointing", None), bool)]
    params = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
    before, out = tcfg.activation_checkpointing, {}
    try:
        for ac in (False, True):
            tcfg.activation_checkpointing = ac
            for m in encoder_parts:
                m.activation_checkpointing = ac
            kept: dict[int, int] = {}

            def pack(t: torch.Tensor, kept: dict[int, int] = kept) -> torch.Tensor:  # this round's dict
                storage = t.untyped_storage()
                if storage.data_ptr() not in params:
                    kept[storage.data_ptr()] = storage.nbytes()
                return t

            trainer.model.train()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), trainer._autocast():
                res = trainer.model(batch, mask_generator(0, 0, 0, 0), trainer.teacher.model)
            res.loss_sum.backward()
            trainer.optimizer.zero_grad(set_to_none=True)
            out["with_ac" if ac else "without_ac"] = sum(kept.values())
    finally:
        tcfg.activation_checkpointing = before
        for m in encoder_parts:
            m.activation_checkpointing = before
    return out


def count_flops(trainer, ref, sides: dict) -> dict[str, int]:  # noqa: ANN001
    """FLOPs of one step of each side, with LayerDrop off while counting (it skips a random
    number of layers per step, differently on the two sides): the work of the full model."""
    model_cfg = trainer.model.transformer.cfg
    saved = (model_cfg.layerdrop, getattr(ref.model.config, "layerdrop", None))
    model_cfg.layerdrop = 0.0
    if saved[1] is not None:
        ref.model.config.layerdrop = 0.0
    try:
        flops = {}
        for side, fn in sides.items():  # compiled code counted eagerly: the same math, countable ops
            with torch.compiler.set_stance("force_eager"), flop_counter() as fc:
                fn()
            flops[side] = fc.get_total_flops()
        return flops
    finally:
        model_cfg.layerdrop = saved[0]
        if saved[1] is not None:
            ref.model.config.layerdrop = saved[1]


def measure_speed(a: argparse.Namespace, trainer, ref, batch: dict, result: dict) -> None:  # noqa: ANN001
    """Warm-up, FLOP count, interleaved timing of steps and EMA updates, matmul ceiling."""
    sides = {"d2v": trainer.train_step, "reference": lambda: ref.step(batch)}
    for _ in range(a.warmup):
        for fn in sides.values():
            fn()
    flops = count_flops(trainer, ref, sides)
    times: dict[str, list[float]] = {s: [] for s in sides}
    ema: dict[str, list[float]] = {s: [] for s in sides}
    scope = trainer.model.teacher_scope()
    ema_fns = {"d2v": lambda: trainer.teacher.update(scope, trainer.step), "reference": lambda: ref.ema_update(ref.step_count)}
    for r in range(a.repeats):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for side in order:
            times[side].append(timed(sides[side], a.device))
        for side in order:
            ema[side].append(timed(ema_fns[side], a.device))
    mm = matmul_flops_per_s(a.dtype, a.device)
    result["seconds_per_step"] = {s: summarize(v) for s, v in times.items()}
    result["ema_seconds"] = {s: summarize(v) for s, v in ema.items()}
    result["flops_per_step"] = flops
    result["matmul"] = mm
    med = {s: result["seconds_per_step"][s]["median"] for s in sides}
    result["summary"] = {
        "time_ratio_d2v_over_reference": med["d2v"] / med["reference"],
        "speedup_d2v_vs_reference": med["reference"] / med["d2v"],
        "samples_per_s": {s: a.batch / med[s] for s in sides},
        "model_flops_per_s": {s: flops[s] / med[s] for s in sides},
        "fraction_of_matmul_peak": {s: flops[s] / med[s] / mm["flops_per_s"] for s in sides},
        "ema_fraction_of_step": {s: result["ema_seconds"][s]["median"] / med[s] for s in sides},
    }


def print_summary(a: argparse.Namespace, result: dict) -> None:
    s, sides = result.get("summary", {}), ("d2v", "reference")
    print(f"{a.modality}/{a.preset} {a.dtype} batch {a.batch} on {a.device}  (load avg {result['machine']['load_average'][0]:.1f})")
    for side in sides if "seconds_per_step" in result else ():
        flops = result["flops_per_step"]
        st = result["seconds_per_step"][side]
        print(f"  {side:<9} step median {st['median']:.3f} s (min {st['min']:.3f}, max {st['max']:.3f}), "
              f"{flops[side] / 1e9:.1f} GFLOP, {s['fraction_of_matmul_peak'][side]:.0%} of matmul, "
              f"EMA {s['ema_fraction_of_step'][side]:.1%} of step")
    if "seconds_per_step" in result:
        print(f"  d2v/reference time {s['time_ratio_d2v_over_reference']:.3f} (speed-up {s['speedup_d2v_vs_reference']:.2f}x)")
    if "peak_memory" in result:
        pm = result["peak_memory"]
        print(f"  peak memory d2v {pm['d2v']['peak_bytes'] / 2**20:.0f} MiB, reference {pm['reference']['peak_bytes'] / 2**20:.0f} MiB, "
              f"ratio {pm['ratio_d2v_over_reference']:.3f}; after the warm-up step {pm['d2v']['steady_peak_bytes'] / 2**20:.0f} "
              f"against {pm['reference']['steady_peak_bytes'] / 2**20:.0f} MiB, ratio {pm['steady_ratio_d2v_over_reference']:.3f}")


if __name__ == "__main__":
    main()
