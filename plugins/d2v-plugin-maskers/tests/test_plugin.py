"""Registration of ``inverse-block`` in-process (with the image modality, and without it) and as
the installed distribution seen by the CLI (listed, blocked by name)."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys

import pytest
import torch

from d2v_core import testing
from d2v_core.config_resolve import resolve_config
from d2v_core.errors import UnknownComponentError
from d2v_core.interfaces import MaskRequest
from d2v_core.plugin_loader import module_source
from d2v_core.testing import check_masker, plugin_context

import d2v_plugin_image.plugin as image_plugin
import d2v_plugin_maskers.plugin as maskers_plugin
from d2v_plugin_maskers.inverse_block_masker import InverseBlockMasker

# plugin_context names a bare module after its last component ("plugin" for both), and plugin
# names must be unique, so give each its entry-point name
IMAGE = module_source(image_plugin, name="image", distribution="d2v-plugin-image")
MASKERS = module_source(maskers_plugin, name="maskers", distribution="d2v-plugin-maskers")


def test_the_registry_gives_inverse_block_for_images_only():
    with plugin_context(IMAGE, MASKERS) as loaded:
        assert not loaded.errors(), [p.error for p in loaded.errors()]
        assert {p.name: p for p in loaded.plugins}["maskers"].provides == ["masker:inverse-block"]
        spec = loaded.registry.component("masker", "inverse-block", modality="image")
        assert spec.modalities == ("image",)
        assert loaded.registry.names("masker", modality="image") == ["block", "inverse-block"]
        masker = spec.load_factory()(spec.load_options()())
        assert isinstance(masker, InverseBlockMasker)
        check_masker(masker, length=196, grid=(14, 14))
        with pytest.raises(UnknownComponentError, match="does not support modality 'audio'"):
            loaded.registry.component("masker", "inverse-block", modality="audio")


def test_the_plugin_registers_only_one_masker():
    with plugin_context(MASKERS) as loaded:
        row = {p.name: p for p in loaded.plugins}["maskers"]
        assert row.status == "ok" and row.provides == ["masker:inverse-block"]
        assert loaded.registry.modalities() == []
    assert maskers_plugin.D2V_PLUGIN_API_VERSION == "1.0"


def test_without_the_plugin_the_masker_is_unknown():
    with plugin_context(IMAGE) as loaded:
        with pytest.raises(UnknownComponentError, match=r"^unknown masker 'inverse-block' for modality 'image'"):
            loaded.registry.component("masker", "inverse-block", modality="image")


def test_it_masks_the_image_encoders_own_grid():
    with plugin_context(IMAGE, MASKERS) as loaded:
        cfg = resolve_config(loaded.registry, "image", "tiny")  # 32 px images, 4 px patches
        feats = testing.build_encoder(loaded.registry.modality("image"), cfg).embed({"image": torch.randn(3, 3, 32, 32)})
        spec = loaded.registry.component("masker", "inverse-block", modality="image")
        masker = spec.load_factory()(spec.load_options()())
    assert feats.grid == (8, 8)
    mask = masker(MaskRequest(3, feats.x.shape[1], feats.padding_mask, feats.grid), torch.Generator().manual_seed(0))
    assert mask.sum(-1).tolist() == [52, 52, 52]  # 64 - int(64 * 0.2)


def test_options_are_validated():
    from pydantic import ValidationError

    from d2v_plugin_maskers.options import InverseBlockMaskOptions

    assert InverseBlockMaskOptions(mask_prob=0.75, mask_prob_adjust=0.1).mask_length == 3
    for bad in ({"mask_prob": 1.0}, {"mask_length": 0}, {"mask_prob_adjust": -0.1}, {"mask_ratio": 0.8}):
        with pytest.raises(ValidationError):
            InverseBlockMaskOptions(**bad)


def test_registration_modules_do_not_import_torch():
    code = "import sys, d2v_plugin_maskers.plugin, d2v_plugin_maskers.options; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the installed distribution, through the CLI ---------------------------------------------------


def _d2v(args: list[str], disable: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("D2V_DISABLE_PLUGINS", None)
    env.pop("D2V_LOAD_PLUGINS", None)
    if disable is not None:
        env["D2V_DISABLE_PLUGINS"] = disable
    return subprocess.run([sys.executable, "-m", "d2v_cli.app", *args], capture_output=True, text=True, env=env, timeout=120)


def _rows(disable: str | None = None) -> dict:
    res = _d2v(["list-plugins", "--json"], disable)
    assert res.returncode == 0, res.stderr
    return {r["name"]: r for r in json.loads(res.stdout)}


def test_the_entry_point_is_declared():
    eps = {ep.name: ep for ep in md.entry_points(group="d2v")}
    assert "maskers" in eps, "d2v-plugin-maskers is not installed: pip install -e plugins/d2v-plugin-maskers"
    assert eps["maskers"].value == "d2v_plugin_maskers.plugin"
    assert eps["maskers"].dist.metadata["Name"] == "d2v-plugin-maskers"


@pytest.mark.slow
def test_list_plugins_shows_it_and_blocking_it_by_name_removes_the_masker():
    row = _rows()["maskers"]
    assert row["status"] == "ok" and row["distribution"] == "d2v-plugin-maskers"
    assert row["version"] == md.version("d2v-plugin-maskers") == "0.1.0"
    assert row["module"] == "d2v_plugin_maskers.plugin" and row["provides"] == ["masker:inverse-block"]

    # naming another masker drops the preset's `block` options: the new one gets its defaults
    enabled = _d2v(["config", "show", "--modality", "image", "--set", "masking.name=inverse-block"])
    assert enabled.returncode == 0, enabled.stderr
    assert "name: inverse-block" in enabled.stdout and "mask_prob: 0.8" in enabled.stdout and "mask_ratio" not in enabled.stdout

    row = _rows("maskers")["maskers"]
    assert row["status"] == "disabled" and row["provides"] == []
    res = _d2v(["config", "show", "--modality", "image", "--set", "masking.name=inverse-block"], "maskers")
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: unknown masker 'inverse-block'") and res.stderr.count("\n") == 1
