"""The example plugin passes the conformance kit, and installing it for real makes it listed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from d2v_core import testing
from d2v_core.config_resolve import resolve_config
from d2v_core.plugin_loader import plugin_context
from d2v_core.train.build import build_context

from d2v_plugin_example import plugin
from d2v_plugin_example.data import build_record_decoder
from d2v_plugin_example.encoder import build_encoder
from d2v_plugin_example.masking import RandomMasker

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def test_conformance_kit():
    with plugin_context(plugin) as loaded:
        reg = loaded.registry
        testing.check_modality(reg.modality("vectors"), reg)
        cfg = resolve_config(reg, "vectors", "tiny")
    ratio = testing.check_masker(RandomMasker(), length=100)
    assert ratio == pytest.approx(0.5, abs=0.01)
    ctx = build_context(cfg)
    decoder = build_record_decoder(cfg.data.options, cfg.encoder, ctx)
    demo = sorted((PLUGIN_DIR / "d2v_plugin_example" / "demo").glob("*.npy"))[:3]
    batch = testing.check_record_decoder(decoder, [{"__key__": p.stem, "npy": p.read_bytes()} for p in demo])
    assert batch["vectors"].shape[0] == 3 and batch["padding_mask"] is not None
    testing.check_feature_encoder(build_encoder(cfg.encoder, ctx), batch)


def test_random_mask_counts_are_exact_per_row():
    pad = torch.arange(10)[None, :] >= torch.tensor([[10], [6]])
    from d2v_core.interfaces import MaskRequest

    m = RandomMasker()(MaskRequest(2, 10, pad), torch.Generator().manual_seed(0))
    assert m.sum(-1).tolist() == [5, 3]  # round(0.5 * 10), round(0.5 * 6)
    assert not (m & pad).any()
    left = torch.arange(10)[None, :] < 4  # padding at the start of the row
    m = RandomMasker()(MaskRequest(1, 10, left), torch.Generator().manual_seed(0))
    assert m.sum() == 3 and not (m & left).any()


def _listed(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "d2v_cli.app", "list-plugins", "--json"], env=env,
                         capture_output=True, text=True, check=True)
    return {r["name"]: r for r in json.loads(out.stdout)}


@pytest.mark.slow
def test_real_install_lists_the_plugin(tmp_path):
    assert "example" not in _listed(dict(os.environ))  # not installed by default
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(PLUGIN_DIR)], check=True, capture_output=True)
    rows = _listed({**os.environ, "PYTHONPATH": str(target)})
    assert rows["example"]["status"] == "ok"
    assert rows["example"]["distribution"] == "d2v-plugin-example"
    assert "modality:vectors" in rows["example"]["provides"]
