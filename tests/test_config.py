"""Config resolution (preset, YAML, --set) and its one-line errors, through the API and the CLI."""

from __future__ import annotations

import pytest
import yaml

from d2v_core.config_resolve import parse_override, resolve_config
from d2v_core.errors import ConfigError, UnknownComponentError


def test_precedence_preset_then_yaml_then_overrides(example_plugins, tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("optim:\n  lr: 0.002\n  weight_decay: 0.5\nmodel:\n  depth: 3\n")
    cfg = resolve_config(example_plugins.registry, "vectors", "tiny", f, ["optim.lr=1e-4", "masking.options.mask_prob=0.3"])
    assert cfg.optim.lr == 1e-4  # override beats YAML
    assert cfg.optim.weight_decay == 0.5  # YAML beats preset
    assert cfg.model.depth == 3
    assert cfg.model.dim == 32  # from the preset
    assert cfg.masking.name == "random" and cfg.masking.options.model_dump() == {"mask_prob": 0.3}
    assert cfg.preset == "tiny" and cfg.modality == "vectors"


def test_parse_override_types():
    assert parse_override("optim.lr=1e-4") == {"optim": {"lr": 1e-4}}
    assert parse_override("runtime.progress=false") == {"runtime": {"progress": False}}
    assert parse_override("optim.betas=[0.9, 0.98]") == {"optim": {"betas": [0.9, 0.98]}}
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("lr")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "optim.lrr: unknown field"),
        (["optim.lr=fast"], "optim.lr: Input should be a valid number"),
        (["optim.lr=-1"], "optim.lr: Input should be greater than 0"),
        (["model.heads=5"], "must be divisible by model.heads"),
        (["encoder.input_dim=zero"], "encoder.input_dim"),
        (["masking.options.mask_prob=2"], "masking.options.mask_prob"),
        (["targets.per_layer_norm=bogus"], "unknown normalizer 'bogus'"),
        (["targets.layer_norm=instance"], "targets: layer_norm was renamed per_layer_norm"),
        (["encoder=3"], "encoder: must be a mapping of the component's options, not int"),
    ],
)
def test_bad_values_name_the_dotted_path(example_plugins, overrides, message):
    with pytest.raises((ConfigError, UnknownComponentError)) as err:
        resolve_config(example_plugins.registry, "vectors", "tiny", None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_preset_lists_available(example_plugins):
    with pytest.raises(UnknownComponentError, match=r"unknown preset vectors/huge \(available: vectors/tiny\)"):
        resolve_config(example_plugins.registry, "vectors", "huge")


def test_cli_config_show_prints_resolved_yaml(example_plugins, cli):
    code, out, err = cli(["config", "show", "--modality", "vectors", "--set", "optim.lr=0.01"])
    assert code == 0, err
    data = yaml.safe_load(out)
    assert data["optim"]["lr"] == 0.01 and data["modality"] == "vectors"


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["config", "show", "--modality", "nosuch"], 2, "unknown modality 'nosuch'"),
        (["config", "show", "--modality", "vectors", "--preset", "huge"], 2, "unknown preset vectors/huge"),
        (["config", "show", "--modality", "vectors", "--set", "optim.bogus=1"], 2, "optim.bogus: unknown field"),
        (["config", "show", "--modality", "vectors", "--set", "optim.lr=abc"], 2, "optim.lr"),
        (["pretrain", "--modality", "vectors", "--masker", "nosuch"], 2, "unknown masker 'nosuch'"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code(example_plugins, cli, args, code, needle):
    got, out, err = cli(args)
    assert got == code
    assert needle in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "Traceback" not in err


def test_cli_malformed_yaml(example_plugins, cli, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  lr: 1\n bad: [\n")
    code, _, err = cli(["config", "show", "--modality", "vectors", "--config", str(f)])
    assert code == 2 and "cannot parse YAML" in err and "line" in err and err.count("\n") == 1
    code, _, err = cli(["config", "show", "--modality", "vectors", "--config", str(tmp_path / "missing.yaml")])
    assert code == 2 and "does not exist" in err


def test_cli_debug_shows_traceback(example_plugins, cli):
    code, _, err = cli(["--debug", "config", "show", "--modality", "nosuch"])
    assert code == 2 and "Traceback" in err


def test_cli_version(cli):
    from d2v_core import __version__

    code, out, _ = cli(["--version"])
    assert code == 0 and out.strip() == f"d2v {__version__}"
