"""``d2v embed``, ``d2v probe``, ``d2v export``, ``d2v import``, ``d2v report``: getting the
learned encoder out."""

from __future__ import annotations

import json
from typing import Any, List, Optional

import typer


def _source(spec: str, extensions):  # noqa: ANN001
    from d2v_core.data.sources import resolve_source

    return resolve_source(spec, tuple(extensions))


def embed(
    checkpoint: str = typer.Argument(..., help="Checkpoint or run directory."),
    inputs: List[str] = typer.Argument(..., help="Files (e.g. clip.flac), folders of them, or CSV/JSONL manifests."),
    out: str = typer.Option(..., "--out", "-o", help="Output .safetensors or .npy (plus OUT.keys.txt)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Output of layer N (1-based; 0: the Transformer input)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Mean of the last K layer outputs."),
    layers: Optional[str] = typer.Option(None, "--layers", help="targets: data2vec's target representation (the mean of the "
                                         "run's targets.top_k layers, normalised as its targets); top-k: the same, not normalised."),
    pool: str = typer.Option("mean", "--pool", help="mean | cls | none (one vector per step; .safetensors only)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Records per forward pass."),
) -> None:
    """Features of a pretrained encoder for files, folders or manifests (progress on stderr)."""
    from d2v_cli.progress import CountProgress
    from d2v_core.errors import ConfigError
    from d2v_core.inference.embed import Embeddings, embed_source, write_embeddings
    from d2v_core.inference.pretrained import load_pretrained
    from d2v_core.plugin_loader import get_registry

    if layer is not None and top_k is not None:
        raise ConfigError("pass --layer or --top-k, not both")
    if pool not in ("mean", "cls", "none"):
        raise ConfigError(f"--pool must be mean, cls or none, got {pool!r}")
    pre = load_pretrained(checkpoint, get_registry())
    total = Embeddings()
    sources = [_source(s, pre.record_decoder.extensions) for s in inputs]
    with CountProgress(sum(len(s) for s in sources), "embedded", "record") as bar:
        for src in sources:
            emb = embed_source(pre.model, pre.record_decoder, src, layer=layer, top_k=top_k, pool=pool, batch_size=batch_size,
                               progress=bar.advance, layers=layers)
            total.keys += emb.keys
            total.vectors += emb.vectors
            total.meta += emb.meta
            total.stats.merge(dict(emb.stats.counts), emb.stats.seen, emb.stats.examples)
    paths = write_embeddings(total, out, pool)
    typer.echo(f"embedded {len(total.keys)} record(s) -> {paths[0]} (keys: {paths[1]}); skipped: {total.stats.summary()}")


def probe(
    checkpoint: str = typer.Argument(..., help="Checkpoint or run directory."),
    train: Optional[str] = typer.Option(None, "--train", help="Manifest (CSV/JSONL) with paths and labels."),
    test: Optional[str] = typer.Option(None, "--test", help="Test manifest (neither this nor --split-by: a seeded random quarter is held out)."),
    split_by: Optional[str] = typer.Option(None, "--split-by", help="Hold out whole groups of this column (e.g. speaker)."),
    label_column: str = typer.Option("label", "--label-column", help="Manifest column with the class labels."),
    test_fraction: float = typer.Option(0.25, "--test-fraction", help="Without --test: the fraction of groups (--split-by) or of records held out (seeded)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="random-init: also probe the untrained architecture."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Features of layer N (1-based; 0: the Transformer input)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Features: the mean of the last K layer outputs."),
    layers: Optional[str] = typer.Option(None, "--layers", help="targets: data2vec's target representation (the mean of the "
                                         "run's targets.top_k layers, normalised as its targets); top-k: the same, not normalised."),
    pool: str = typer.Option("mean", "--pool", help="mean | cls: how a record's steps become one vector."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the probe, the random-init baseline and --max-records."),
    max_records: Optional[int] = typer.Option(None, "--max-records", min=1, help="At most N records of each manifest: a "
                                              "seeded random choice, in manifest order (the online probe's eval.max_records)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the full report (per class, skipped records) to this JSON file."),
) -> None:
    """Linear probe (logistic regression) on frozen, pooled features; prints the accuracies."""
    from d2v_core.errors import ConfigError
    from d2v_core.inference.embed import cap_records, embed_source
    from d2v_core.inference.pretrained import load_pretrained
    from d2v_core.inference.probe import check_probe_args, fit_and_score, majority_accuracy, make_split
    from d2v_core.plugin_loader import get_registry

    check_probe_args(train is not None, test is not None, split_by)
    assert train is not None  # check_probe_args: --train is required
    if baseline not in (None, "random-init"):
        raise ConfigError(f"--baseline must be random-init, got {baseline!r}")
    registry = get_registry()
    report: dict = {"checkpoint": checkpoint, "label_column": label_column, "split_by": split_by, "max_records": max_records}
    for name, random_init in [("pretrained", False)] + ([("random-init", True)] if baseline else []):
        pre = load_pretrained(checkpoint, registry, random_init=random_init, seed=seed)
        kw: dict[str, Any] = dict(layer=layer, top_k=top_k, pool=pool, layers=layers)
        exts = pre.record_decoder.extensions
        tr = embed_source(pre.model, pre.record_decoder, cap_records(_source(train, exts), max_records, seed), **kw)
        te = embed_source(pre.model, pre.record_decoder, cap_records(_source(test, exts), max_records, seed), **kw) if test else None
        split = make_split(tr, te, label_column, split_by, test_fraction, seed)
        report[name] = fit_and_score(split, seed)
        report[name]["skipped"] = tr.stats.summary()
        report["majority_class_accuracy"] = majority_accuracy(split.y_train, split.y_test)
        report["classes"] = len(set(split.y_train))
    rows = [(k, report[k]["accuracy"]) for k in ("pretrained", "random-init") if k in report]
    rows.append(("majority class", report["majority_class_accuracy"]))
    typer.echo(f"probe: {report['classes']} classes, {len(split.y_train)} train / {len(split.y_test)} test records; "
               f"skipped: {report['pretrained']['skipped']}")
    typer.echo("\n".join(f"{name:>15}: accuracy {acc:.4f}" for name, acc in rows))
    if json_out:
        from pathlib import Path

        Path(json_out).write_text(json.dumps(report, indent=2), encoding="utf-8")
        typer.echo(f"report: {json_out}")


def export(
    checkpoint: str = typer.Argument(..., help="Checkpoint or run directory."),
    fmt: str = typer.Option("hf", "--format", help="hf: a transformers model directory."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory (from_pretrained loads it)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
) -> None:
    """Export the encoder (e.g. to transformers' Data2Vec{Audio,Vision,Text}Model)."""
    from d2v_core.inference.exchange import export_checkpoint
    from d2v_core.plugin_loader import get_registry

    path = export_checkpoint(checkpoint, fmt, out, get_registry(), overwrite)
    typer.echo(f"exported {checkpoint} as {fmt} -> {path}")


def import_(
    from_hf: Optional[str] = typer.Option(None, "--from-hf", help="A transformers Data2Vec model directory."),
    from_fairseq: Optional[str] = typer.Option(None, "--from-fairseq", help="A fairseq data2vec checkpoint file (.pt), read without running code from it."),
    modality: Optional[str] = typer.Option(None, "--modality", "-m", help="Needed with --from-hf; read from the checkpoint with --from-fairseq."),
    out: str = typer.Option(..., "--out", "-o", help="Run directory to write the checkpoint into."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Preset supplying the training settings."),
    set_: List[str] = typer.Option([], "--set", help="Override, e.g. --set targets.top_k=2 (repeatable)."),
) -> None:
    """Make a d2v checkpoint from a transformers directory or a fairseq checkpoint (continue with d2v pretrain --init-from)."""
    from d2v_core.errors import ConfigError
    from d2v_core.plugin_loader import get_registry

    if (from_hf is None) == (from_fairseq is None):
        raise ConfigError("pass one of --from-hf DIR or --from-fairseq CKPT")
    if from_fairseq is not None:
        from d2v_core.interop.fairseq_import import import_fairseq

        result = import_fairseq(from_fairseq, out, get_registry(), modality=modality, preset=preset, overrides=set_)
        unused = f"{len(result.unused)} unused key(s): {', '.join(result.unused)}" if result.unused else "no unused keys"
        teacher = "teacher from its EMA" if result.teacher_from_ema else "teacher copied from the student (no EMA in the file)"
        fresh = f"; not in the file, freshly initialised: {', '.join(result.fresh_modules)}" if result.fresh_modules else ""
        typer.echo(f"imported {from_fairseq} ({result.family}) -> {result.path}; {teacher}; {unused}{fresh}")
        return
    if from_hf is None or modality is None:
        raise ConfigError("--from-hf needs --modality (audio, image or text)")
    from d2v_core.inference.exchange import import_checkpoint

    path = import_checkpoint(from_hf, modality, out, get_registry(), preset, overrides=set_)
    typer.echo(f"imported {from_hf} -> {path}")


def report(run_dir: str = typer.Argument(..., help="A run directory (with metrics.jsonl).")) -> None:
    """Plot a run's loss, rel_loss, lr, tau, target/pred variance, throughput and online probe (PNG and HTML)."""
    from d2v_core.inference.report import write_report

    png, page = write_report(run_dir)
    typer.echo(f"wrote {png} and {page}")
