"""What the model sees per update: d2v's batching against fairseq's (issue 18).

Run:  .venv/bin/python benchmarks/batching.py            -> benchmarks/results/batching.json
      .venv/bin/python benchmarks/batching.py --quick    (a smoke run: 20,000 utterances, fewer masks)

Audio (no audio needed: lengths only). A synthetic corpus of clip lengths shaped like
LibriSpeech 960 h (281,241 utterances; 68% around 14.2 s, 30% spread over 1-14 s, 2% over
17-35 s; mean about 12.3 s). For ``audio/base`` and ``audio/v2-base``:

- ``audio.<preset>.*``: d2v's batching, ``d2v_core.data.batching.budget_batches`` with the
  preset's ``data.max_tokens`` and ``min/max_sample_size`` (what ``TrainLoader`` does for a list
  source), each batch cropped to its shortest clip;
- ``audio.<preset>.fairseq_*``: a transcription of fairseq (``RawAudioDataset.ordered_indices``:
  ``np.lexsort([perm, min(sizes, max)])[::-1]`` under ``numpy_seed``, the manifest's
  ``min_sample_size`` filter, ``batch_by_size_vec`` from ``tests/test_batching.py``, batches
  shuffled with ``seed + epoch``, ``collater``'s crop to ``min(min(sizes), max_sample_size)``);
- ``audio.<preset>.fixed_count_*``: d2v before issue 18: random groups of the old per-GPU count
  (304 / 16 = 19 clips for base, 40 / 8 = 5 for v2-base), cropped to the shortest;
  ``fixed_count_1gpu_*``: the whole old ``data.batch_size`` (304 / 40) on one GPU;
- ``audio.<preset>.streaming_*``: d2v on tar shards (``streaming_batches`` over the clips in
  random order, the default buffer of ``SHARD_WINDOW`` records; ``streaming_512_*``:
  ``data.bucket_window: 512``).

Figures: ``seconds_per_update`` (audio in one update over the reference's GPUs: 16 for base, 8
for v2-base), ``frames_per_row`` (conv frames of a cropped row, mean over rows),
``crop_loss`` (fraction of the audio, after the 20 s ``max_sample_size`` crop that all of them
make, that cropping a batch to its shortest clip discards), ``pad_fraction`` (padded samples:
0 with crop batching), ``masked_fraction`` (mean fraction of a row's frames the preset's masker
masks, on 300 random batches).

Text: ``text.<preset>.{rows_per_batch, expected_rows, pad_fraction}`` from ``TrainLoader`` (one
process, so a batch is the preset's whole ``data.batch_size``) with the demo tokenizer on the
shared corpus (``../shared/datasets/text/corpus.txt``) and, under ``text.<preset>.long_docs``,
on a synthetic corpus of long documents (each 150 shared lines, about 3,000 tokens); next to it
``old_rows_per_batch`` / ``old_pad_fraction``: the old per-batch packing of ``batch_size``
documents.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_common import SHARED, write_result  # noqa: E402

from d2v_core.data.loader import SHARD_WINDOW  # noqa: E402

RATE = 16000
GPUS = {"base": 16, "v2-base": 8}
OLD_PER_GPU = {"base": 304 // 16, "v2-base": 40 // 8}
OLD_ONE_GPU = {"base": 304, "v2-base": 40}  # the old data.batch_size on a single GPU


def librispeech_like(n: int, seed: int = 0) -> np.ndarray:
    """Clip lengths in samples: 68% N(14.2 s, 2 s), 30% U(1, 14 s), 2% U(17, 35 s), in [1, 35] s."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[0.68, 0.30, 0.02])
    sec = np.where(kind == 0, rng.normal(14.2, 2.0, n), np.where(kind == 1, rng.uniform(1, 14, n), rng.uniform(17, 35, n)))
    return (np.clip(sec, 1.0, 35.0) * RATE).astype(np.int64)


def fairseq_batches(sizes: np.ndarray, max_tokens: int, min_size: int, max_size: int, seed: int = 1, epoch: int = 1) -> list[np.ndarray]:
    from test_batching import fairseq_batch_by_size_vec

    keep = np.nonzero(sizes >= min_size)[0]  # FileAudioDataset skips short manifest lines
    kept = sizes[keep]
    state = np.random.get_state()
    np.random.seed(seed + epoch)  # fairseq numpy_seed(seed + epoch) around ordered_indices
    order = np.lexsort([np.random.permutation(len(kept)), np.minimum(kept, max_size)])[::-1]
    num_tokens = np.minimum(kept, max_size)[order]
    batches = fairseq_batch_by_size_vec(order, num_tokens, max_tokens, -1, 1)
    np.random.seed(seed + epoch)
    np.random.shuffle(batches)  # EpochBatchIterator.shuffle_batches(seed + epoch)
    np.random.set_state(state)
    return [keep[np.asarray(b, dtype=np.int64)] for b in batches]


def d2v_batches(sizes: np.ndarray, max_tokens: int, min_size: int, max_size: int, window: int = 0) -> list[list[int]]:
    from d2v_core.data.batching import budget_batches

    return budget_batches(torch.from_numpy(sizes), max_tokens, generator=torch.Generator().manual_seed(0),
                          min_len=min_size, max_len=max_size, window=window)


def streamed_batches(sizes: np.ndarray, max_tokens: int, min_size: int, max_size: int, window: int) -> list[list[int]]:
    """d2v on tar shards: records in shuffled order through ``streaming_batches`` (one worker)."""
    import random

    from d2v_core.data.batching import streaming_batches

    keep = np.nonzero(sizes >= min_size)[0]
    order = np.random.default_rng(2).permutation(keep)
    items = ((int(i), int(min(sizes[i], max_size))) for i in order)
    return list(streaming_batches(items, max_tokens, window, lambda b, chunk: random.Random(chunk).shuffle(b)))


def fixed_count_batches(sizes: np.ndarray, per_gpu: int, min_size: int) -> list[np.ndarray]:
    keep = np.nonzero(sizes >= min_size)[0]
    perm = np.random.default_rng(0).permutation(keep)
    return [perm[s : s + per_gpu] for s in range(0, len(perm) - per_gpu + 1, per_gpu)]


def figures(batches, sizes: np.ndarray, max_size: int, gpus: int, masker, conv_layers, n_mask: int) -> dict:
    from d2v_core.interfaces import MaskRequest

    from d2v_plugin_audio.conv_feature_extractor import conv_output_lengths

    kept = cropped = rows = frames_sum = 0
    per_batch = []
    for b in batches:
        clipped = np.minimum(sizes[np.asarray(b)], max_size)
        target = int(clipped.min())
        kept += int(clipped.sum())
        cropped += target * len(b)
        per_batch.append(target * len(b))
        rows += len(b)
        frames_sum += len(b) * conv_output_lengths(target, conv_layers)
    g = torch.Generator().manual_seed(0)
    picks = np.random.default_rng(1).choice(len(batches), size=min(n_mask, len(batches)), replace=False)
    masked = []
    for j in picks:
        b = batches[int(j)]
        frames = int(conv_output_lengths(int(np.minimum(sizes[np.asarray(b)], max_size).min()), conv_layers))
        mask = masker(MaskRequest(len(b), frames), g)
        masked += mask.float().mean(1).tolist()
    return {"seconds_per_update": float(np.mean(per_batch)) * gpus / RATE, "seconds_per_batch_per_gpu": float(np.mean(per_batch)) / RATE,
            "rows_per_batch_per_gpu": rows / len(batches), "frames_per_row": frames_sum / rows, "crop_loss": 1 - cropped / kept,
            "pad_fraction": 0.0, "masked_fraction": float(np.mean(masked)), "batches_per_epoch_per_gpu": len(batches) / gpus}


def audio_section(n: int, n_mask: int) -> dict:
    from d2v_plugin_audio.block1d_masker import Block1dMasker
    from d2v_plugin_audio.options import AudioEncoderOptions, Block1dMaskerOptions, SpanMaskerOptions
    from d2v_plugin_audio.presets import PRESETS
    from d2v_plugin_audio.span_masker import SpanMasker

    sizes = librispeech_like(n)
    out: dict = {"corpus": {"utterances": n, "mean_seconds": float(sizes.mean() / RATE), "median_seconds": float(np.median(sizes) / RATE),
                            "min_seconds": float(sizes.min() / RATE), "max_seconds": float(sizes.max() / RATE),
                            "hours": float(sizes.sum() / RATE / 3600)}}
    for preset in ("base", "v2-base"):
        cfg = PRESETS[preset]
        opts = cfg["data"]["options"]
        lo, hi, budget = opts["min_sample_size"], opts["max_sample_size"], cfg["data"]["max_tokens"]
        mopts = cfg["masking"]["options"]
        masker = SpanMasker(SpanMaskerOptions(**mopts)) if cfg["masking"]["name"] == "span" else Block1dMasker(Block1dMaskerOptions(**mopts))
        conv = [(k, s) for _, k, s in AudioEncoderOptions(**{k: v for k, v in cfg["encoder"].items() if k.startswith("conv")}).conv_layers()]
        gpus = GPUS[preset]
        ours = figures(d2v_batches(sizes, budget, lo, hi), sizes, hi, gpus, masker, conv, n_mask)
        ref = figures(fairseq_batches(sizes, budget, lo, hi), sizes, hi, gpus, masker, conv, n_mask)
        old = figures(fixed_count_batches(sizes, OLD_PER_GPU[preset], lo), sizes, hi, gpus, masker, conv, n_mask)
        old_one = figures(fixed_count_batches(sizes, OLD_ONE_GPU[preset], lo), sizes, hi, 1, masker, conv, n_mask)
        stream = figures(streamed_batches(sizes, budget, lo, hi, window=SHARD_WINDOW), sizes, hi, gpus, masker, conv, n_mask)
        stream_512 = figures(streamed_batches(sizes, budget, lo, hi, window=512), sizes, hi, gpus, masker, conv, n_mask)
        row = {**ours, "max_tokens": budget, "gpus": gpus}
        row.update({f"fairseq_{k}": v for k, v in ref.items()})
        row.update({f"fixed_count_{k}": v for k, v in old.items()})
        row.update({f"fixed_count_1gpu_{k}": v for k, v in old_one.items()})
        row.update({f"streaming_{k}": v for k, v in stream.items()})
        row.update({f"streaming_512_{k}": v for k, v in stream_512.items()})
        row["goals"] = {
            "seconds_per_update_within_5pct": abs(ours["seconds_per_update"] / ref["seconds_per_update"] - 1) <= 0.05,
            "crop_loss_at_most_2_points_above": ours["crop_loss"] - ref["crop_loss"] <= 0.02,
            "masked_fraction_within_0.02": abs(ours["masked_fraction"] - ref["masked_fraction"]) <= 0.02,
        }
        out[preset] = row
    return out


def text_rows(source_spec: str, preset: str, epochs: int = 1) -> dict:
    from d2v_core.data.loader import TrainLoader
    from d2v_core.data.sources import resolve_source

    from d2v_plugin_text.data import TextRecordDecoder
    from d2v_plugin_text.presets import PRESETS
    from d2v_plugin_text.tokenizer import load_tokenizer

    cfg = PRESETS[preset]["data"]
    opts = cfg["options"]
    dec = TextRecordDecoder(load_tokenizer(None), opts["block_size"], opts["break_mode"], opts.get("drop_partial_row", False))
    src = resolve_source(source_spec, ("txt",))
    loader = TrainLoader(src, dec, batch_size=cfg["batch_size"], seed=0)
    rows, pads, cells, n = [], 0, 0, 0
    for e in range(epochs):
        for b in loader.iter_epoch(e):
            rows.append(b["tokens"].shape[0])
            pads += int(b["padding_mask"].sum())
            cells += b["tokens"].numel()
    # the old batching: batch_size documents per batch, packed inside the batch
    old_rows, old_pads, old_cells = [], 0, 0
    order = np.random.default_rng(0).permutation(len(src.entries))
    for s in range(0, len(order) - cfg["batch_size"] + 1, cfg["batch_size"]):
        samples = []
        for i in order[s : s + cfg["batch_size"]]:
            try:
                samples.append(dec.decode(src.read(src.entries[int(i)])))
            except Exception:  # noqa: BLE001 - skipped as the loader skips it
                continue
        b = dec.collate(samples)
        old_rows.append(b["tokens"].shape[0])
        old_pads += int(b["padding_mask"].sum())
        old_cells += b["tokens"].numel()
        n += 1
        if n >= 50:
            break
    return {"rows_per_batch": float(np.mean(rows)) if rows else 0.0, "min_rows": min(rows, default=0), "max_rows": max(rows, default=0),
            "batches": len(rows), "expected_rows": cfg["batch_size"], "pad_fraction": pads / max(cells, 1),
            # None: the corpus has fewer documents than one old batch
            "old_rows_per_batch": float(np.mean(old_rows)) if old_rows else None,
            "old_pad_fraction": old_pads / old_cells if old_cells else None}


def text_section(quick: bool, root: Path) -> dict:
    corpus = root / "text" / "corpus.txt"
    lines = [line.strip() for line in corpus.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        long_docs = Path(tmp) / "long_docs.jsonl"
        with open(long_docs, "w", encoding="utf-8") as f:
            per_doc = min(150, max(1, len(lines) // 8))  # a small --root corpus still gives a few documents
            for s in range(0, len(lines) - per_doc + 1, per_doc):
                f.write(json.dumps({"text": " ".join(lines[s : s + per_doc])}) + "\n")
        for preset in ("base", "v2-base"):
            row = text_rows(str(corpus), preset)
            row["long_docs"] = text_rows(str(long_docs), preset, epochs=1 if quick else 3)
            row["goals"] = {"exact_rows": row["min_rows"] == row["max_rows"] == row["expected_rows"]
                            and row["long_docs"]["min_rows"] == row["long_docs"]["max_rows"] == row["expected_rows"]}
            out[preset] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--root", type=Path, default=SHARED, help="datasets folder holding text/corpus.txt (default: the shared one)")
    args = parser.parse_args()
    n = 20_000 if args.quick else 281_241
    result = {"audio": audio_section(n, 30 if args.quick else 300), "text": text_section(args.quick, args.root)}
    path = write_result("batching_quick" if args.quick else "batching", result, args.out)
    for preset in ("base", "v2-base"):
        a = result["audio"][preset]
        print(f"audio/{preset}: {a['seconds_per_update']:.0f} s/update (fairseq {a['fairseq_seconds_per_update']:.0f}, "
              f"old {a['fixed_count_seconds_per_update']:.0f}); crop loss {a['crop_loss']:.3f} (fairseq {a['fairseq_crop_loss']:.3f}, "
              f"old {a['fixed_count_crop_loss']:.3f}); masked {a['masked_fraction']:.3f} (fairseq {a['fairseq_masked_fraction']:.3f}, "
              f"old {a['fixed_count_masked_fraction']:.3f}); frames/row {a['frames_per_row']:.0f}")
        t = result["text"][preset]
        print(f"text/{preset}: {t['rows_per_batch']:.1f} rows (expected {t['expected_rows']}, old {t['old_rows_per_batch']}), "
              f"pad {t['pad_fraction']:.3f}; long docs {t['long_docs']['rows_per_batch']:.1f} rows (old {t['long_docs']['old_rows_per_batch']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
