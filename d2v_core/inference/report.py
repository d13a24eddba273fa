"""A picture of a run: loss, rel_loss, lr, tau, target/pred variance, throughput and the online
probe over steps (PNG + HTML).

:func:`report_data` builds everything the picture shows (series, reference lines, caption, axis
labels) from the run folder's ``metrics.jsonl`` and ``config.yaml``; :func:`write_report` only
draws it, so what the report says is tested on the data, not on pixels."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d2v_core.errors import DataError
from d2v_core.train.metrics import read_metrics

#: (title, y label, metric keys) of the panels; the probe panel is added when the run has one
PANELS = [("loss", "loss", ["loss"]), ("loss / loss of predicting the mean target", "rel_loss", ["rel_loss"]),
          ("learning rate", "lr", ["lr"]), ("EMA tau", "tau", ["tau"]),
          ("variance (fairseq compute_var)", "variance", ["target_var", "pred_var"]),
          ("throughput", "samples / s", ["samples_per_s"])]
PROBE_PANEL = ("online probe (logistic regression, held-out records)", "accuracy", ["probe_acc", "probe_teacher_acc"])


@dataclass
class Series:
    key: str
    points: list[tuple[int, float]]


@dataclass
class RefLine:
    """A horizontal reference line at ``value``."""

    value: float
    label: str


@dataclass
class Panel:
    title: str
    ylabel: str
    series: list[Series]
    refs: list[RefLine] = field(default_factory=list)


@dataclass
class ReportData:
    """What the report shows: a ``caption`` (run, modality/preset, key settings), the panels
    against the update step, and the same steps in training time on a second axis
    (``time_label``, with its unit, and (step, time in that unit) points)."""

    caption: str
    panels: list[Panel]
    xlabel: str
    time_label: str
    time_points: list[tuple[int, float]]
    last: dict[str, Any]


def _run_config(run: Path) -> dict[str, Any]:
    path = run / "config.yaml"
    if not path.exists():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def caption(run: Path, cfg: dict[str, Any]) -> str:
    """``run NAME · modality/preset · N steps · batch B · lr X · masker M`` (what the config gives)."""
    parts = [f"run {run.name}"]
    if cfg.get("modality"):
        parts.append(f"{cfg['modality']}/{cfg.get('preset') or 'no preset'}")
    rt, data, optim, masking, decoder = (_section(cfg, n) for n in ("runtime", "data", "optim", "masking", "decoder"))
    if "max_steps" in rt:
        parts.append(f"{rt['max_steps']} steps")
    if data.get("max_tokens"):
        parts.append(f"batch {data['max_tokens']} tokens/rank")
    elif "batch_size" in data:
        parts.append(f"batch {data['batch_size']}")
    if "lr" in optim:
        parts.append(f"lr {optim['lr']:g}" if isinstance(optim["lr"], (int, float)) else f"lr {optim['lr']}")
    if masking:
        clones = f" x{masking['clone_batch']}" if masking.get("clone_batch", 1) != 1 else ""
        parts.append(f"masker {masking.get('name') or 'modality default'}{clones}")
    if cfg:
        parts.append(f"decoder {decoder['name']} (data2vec 2.0)" if decoder.get("name") else "data2vec 1.0")
    return " · ".join(parts)


def _section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    value = cfg.get(name)
    return value if isinstance(value, dict) else {}


def _refs(keys: list[str], cfg: dict[str, Any]) -> list[RefLine]:
    """rel_loss: 1 (the loss of predicting the mean target) and the shortcut warning's limit;
    variances: the collapse limits."""
    rt = _section(cfg, "runtime")
    if "rel_loss" in keys:
        warn = rt.get("warn_rel_loss")
        shortcut = [RefLine(float(warn), f"warn_rel_loss {warn:g} (a shortcut: see docs/configuration.md)")] \
            if isinstance(warn, (int, float)) and warn > 0 else []
        return [RefLine(1.0, "1 = predicting the mean target"), *shortcut]
    if "target_var" in keys:
        after = f", checked after step {rt['health_after_step']}" if "health_after_step" in rt else ""
        return [RefLine(float(rt[k]), f"{k} {rt[k]:g} (collapse limit{after})") for k in ("min_target_var", "min_pred_var")
                if isinstance(rt.get(k), (int, float)) and rt[k] > 0]
    return []


def training_seconds(rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, seconds of training) per row; a resumed run's clock restarts at 0, so each later
    part is added after the earlier ones (the pause between them is not counted)."""
    out: list[tuple[int, float]] = []
    offset, prev = 0.0, 0.0
    for r in rows:
        if not isinstance(r.get("time"), (int, float)) or not isinstance(r.get("step"), int):
            continue
        if r["time"] < prev:
            offset += prev
        prev = r["time"]
        out.append((r["step"], offset + r["time"]))
    return out


def report_data(run_dir: str | Path) -> ReportData:
    """The data of a run's report (raises :class:`DataError` for a folder without metrics)."""
    run = Path(run_dir)
    rows = read_metrics(run)
    if not rows:
        raise DataError(f"{run} has no metrics.jsonl rows to report on (is it a d2v run directory?)")
    cfg = _run_config(run)
    specs = PANELS + ([PROBE_PANEL] if any("probe_acc" in r for r in rows) else [])
    panels = []
    for title, ylabel, keys in specs:
        series = [Series(k, [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]) for k in keys]
        panels.append(Panel(title, ylabel, [s for s in series if s.points], _refs(keys, cfg)))
    seconds = training_seconds(rows)
    unit, scale = ("min", 60.0) if seconds and seconds[-1][1] > 180 else ("s", 1.0)
    return ReportData(caption(run, cfg), panels, "update (optimiser step)", f"training time ({unit})",
                      [(step, t / scale) for step, t in seconds], rows[-1])


def _draw(data: ReportData, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(data.panels), 1, figsize=(8, 2.2 * len(data.panels) + 0.6), sharex=True)
    for ax, panel in zip(axes, data.panels, strict=True):
        for s in panel.series:
            ax.plot(*zip(*s.points, strict=True), label=s.key, marker="o" if s.key.startswith("probe") else None, markersize=3)
        for ref in panel.refs:
            ax.axhline(ref.value, color="grey", linestyle="--", linewidth=0.8, label=ref.label)
        ax.set_title(panel.title, fontsize=9)
        ax.set_ylabel(panel.ylabel, fontsize=8)
        if len(panel.series) + len(panel.refs) > 1:
            ax.legend(fontsize=7)
    axes[-1].set_xlabel(data.xlabel)
    if len(data.time_points) >= 2:  # the same steps in training time on the top axis
        steps, times = (np.array(v, dtype=float) for v in zip(*data.time_points, strict=True))
        top = axes[0].secondary_xaxis("top", functions=(lambda x: np.interp(x, steps, times), lambda t: np.interp(t, times, steps)))
        top.set_xlabel(data.time_label, fontsize=8)
    fig.suptitle(data.caption, fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.png`` and ``report.html`` into ``run_dir`` from its ``metrics.jsonl``."""
    run = Path(run_dir)
    data = report_data(run)
    png = run / "report.png"
    _draw(data, png)
    summary = run / "summary.json"
    extra = json.loads(summary.read_text()) if summary.exists() else {}
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(f'{v:.5g}' if isinstance(v, float) else str(v))}</td></tr>"
                    for k, v in data.last.items())
    probe = [s for p in data.panels for s in p.series if s.key == "probe_acc"]
    probe_rows = "".join(f"<tr><td>{step}</td><td>{acc:.4f}</td></tr>" for step, acc in probe[0].points) if probe else ""
    probe_html = f"<h2>online probe</h2><table><tr><th>step</th><th>probe_acc</th></tr>{probe_rows}</table>" if probe else ""
    bad = extra.get("bad_records", {}).get("counts", {})
    page = run / "report.html"
    page.write_text(
        f"<!doctype html><meta charset=utf-8><title>d2v run {html.escape(run.name)}</title>"
        f"<h1>d2v run {html.escape(str(run))}</h1><p>{html.escape(data.caption)}</p>"
        f"<h2>last logged step</h2><table>{cells}</table>{probe_html}"
        f"<h2>skipped records</h2><p>{html.escape(json.dumps(bad) if bad else 'none')}</p>"
        f"<img src='report.png' alt='training curves'>",
        encoding="utf-8",
    )
    return png, page
