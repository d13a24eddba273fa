"""A picture of a run: loss, lr, tau, target/pred variance and throughput over steps (PNG + HTML)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from d2v_core.errors import DataError
from d2v_core.train.metrics import read_metrics

PANELS = [("loss", ["loss"]), ("loss / loss of predicting the mean target", ["rel_loss"]), ("learning rate", ["lr"]), ("EMA tau", ["tau"]),
          ("variance (fairseq compute_var)", ["target_var", "pred_var"]), ("samples / s", ["samples_per_s"])]


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.png`` and ``report.html`` into ``run_dir`` from its ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    rows = read_metrics(run)
    if not rows:
        raise DataError(f"{run} has no metrics.jsonl rows to report on (is it a d2v run directory?)")
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(8, 2.2 * len(PANELS)), sharex=True)
    for ax, (title, keys) in zip(axes, PANELS, strict=True):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=key)
        ax.set_title(title, fontsize=9)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    axes[-1].set_xlabel("update")
    fig.tight_layout()
    png = run / "report.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    last = rows[-1]
    summary = run / "summary.json"
    extra = json.loads(summary.read_text()) if summary.exists() else {}
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(f'{v:.5g}' if isinstance(v, float) else str(v))}</td></tr>"
                    for k, v in last.items())
    bad = extra.get("bad_records", {}).get("counts", {})
    page = run / "report.html"
    page.write_text(
        f"<!doctype html><meta charset=utf-8><title>d2v run {html.escape(run.name)}</title>"
        f"<h1>d2v run {html.escape(str(run))}</h1><h2>last logged step</h2><table>{cells}</table>"
        f"<h2>skipped records</h2><p>{html.escape(json.dumps(bad) if bad else 'none')}</p>"
        f"<img src='report.png' alt='training curves'>",
        encoding="utf-8",
    )
    return png, page
