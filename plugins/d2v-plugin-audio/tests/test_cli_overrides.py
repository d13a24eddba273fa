"""The issue's reproduction: `--masker` used to be applied after the `--set` values and drop them."""

from __future__ import annotations

import pytest
import yaml

from d2v_cli.testing import run_cli
from d2v_core.testing import plugin_context

import d2v_plugin_audio.plugin as audio_plugin


@pytest.fixture(autouse=True)
def audio_only():
    with plugin_context(audio_plugin) as loaded:
        yield loaded


@pytest.mark.parametrize("masker", ["span", "block-1d"])
@pytest.mark.parametrize("command", [["config", "show"], ["pretrain"]])
def test_a_typo_in_set_options_is_reported_with_any_masker(masker, command):
    code, _, err = run_cli([*command, "--modality", "audio", "--masker", masker, "--set", "masking.options.mask_prob=0.3",
                            "--set", "masking.options.mean_spn=3"])
    assert code == 2 and "masking.options.mean_spn: unknown field" in err, err


def test_masker_flag_keeps_the_set_options_for_it():
    code, out, err = run_cli(["config", "show", "--modality", "audio", "--masker", "block-1d",
                              "--set", "masking.options.mask_prob=0.3"])
    assert code == 0, err
    masking = yaml.safe_load(out)["masking"]
    assert masking["name"] == "block-1d" and masking["options"]["mask_prob"] == 0.3
    # the preset's span options (mask_length 10) do not leak into block-1d, whose default is 5
    assert masking["options"]["mask_length"] == 5
