"""The run report's content (``d2v report``): reference lines, caption, time axis and the probe
curve, read from the data the picture is drawn from and from the HTML page."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from d2v_core.inference.report import report_data, write_report


def run_folder(tmp_path: Path, rows: list[dict], config: dict) -> Path:
    run = tmp_path / "audio-v2-run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


CONFIG = {"modality": "audio", "preset": "v2-tiny", "masking": {"name": "block-1d", "clone_batch": 8},
          "decoder": {"name": "conv1d"}, "optim": {"lr": 0.00075}, "data": {"batch_size": 8, "max_tokens": None},
          "runtime": {"max_steps": 400, "min_target_var": 0.1, "min_pred_var": 0.0, "health_after_step": 100}}


def rows(steps: list[int], times: list[float], probe: dict[int, float] | None = None) -> list[dict]:
    out = []
    for step, t in zip(steps, times, strict=True):
        r = {"step": step, "time": t, "loss": 1.0 / step, "rel_loss": 0.5, "lr": 1e-3, "tau": 0.99,
             "target_var": 0.5, "pred_var": 0.4, "samples": 80, "samples_per_s": 3.0}
        if probe and step in probe:
            r["probe_acc"] = probe[step]
        out.append(r)
    return out


def panel(data, title_start: str):
    return next(p for p in data.panels if p.title.startswith(title_start))


def test_reference_lines_caption_and_probe_curve(tmp_path):
    run = run_folder(tmp_path, rows([10, 20, 30], [100.0, 200.0, 300.0], probe={20: 0.5, 30: 0.625}), CONFIG)
    data = report_data(run)
    assert data.caption == ("run audio-v2-run · audio/v2-tiny · 400 steps · batch 8 · lr 0.00075 · masker block-1d x8 · "
                            "decoder conv1d (data2vec 2.0)")
    assert [(r.value, r.label) for r in panel(data, "loss /").refs] == [(1.0, "1 = predicting the mean target")]
    # min_pred_var 0 is off: no line for it
    assert [(r.value, r.label) for r in panel(data, "variance").refs] == [(0.1, "min_target_var 0.1 (collapse limit, checked after step 100)")]
    (tmp_path / "s").mkdir()
    shortcut = run_folder(tmp_path / "s", rows([10], [1.0]), {**CONFIG, "runtime": {**CONFIG["runtime"], "warn_rel_loss": 0.05}})
    assert [(r.value, r.label) for r in panel(report_data(shortcut), "loss /").refs] == [
        (1.0, "1 = predicting the mean target"), (0.05, "warn_rel_loss 0.05 (a shortcut: see docs/configuration.md)")]
    probe = panel(data, "online probe")
    assert [(s.key, s.points) for s in probe.series] == [("probe_acc", [(20, 0.5), (30, 0.625)])]
    assert data.time_label == "training time (min)" and data.time_points == [(10, 100 / 60), (20, 200 / 60), (30, 5.0)]
    assert panel(data, "throughput").ylabel == "samples / s" and data.xlabel == "update (optimiser step)"
    png, page = write_report(run)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert data.caption in text
    assert "<tr><td>20</td><td>0.5000</td></tr><tr><td>30</td><td>0.6250</td></tr>" in text


def test_no_probe_panel_without_probe_values_and_a_resumed_clock(tmp_path):
    cfg = {**CONFIG, "preset": "tiny", "decoder": {"name": None}, "masking": {"name": None, "clone_batch": 1},
           "data": {"batch_size": 8, "max_tokens": 1000000}}
    # a resumed run's logger clock restarts at 0: the time axis adds the parts
    run = run_folder(tmp_path, rows([10, 20, 30, 40], [5.0, 10.0, 4.0, 8.0]), cfg)
    data = report_data(run)
    assert not any(p.title.startswith("online probe") for p in data.panels)
    assert data.caption.endswith("batch 1000000 tokens/rank · lr 0.00075 · masker modality default · data2vec 1.0")
    assert data.time_label == "training time (s)" and data.time_points == [(10, 5.0), (20, 10.0), (30, 14.0), (40, 18.0)]
    assert [r.value for r in panel(data, "variance").refs] == [0.1]
