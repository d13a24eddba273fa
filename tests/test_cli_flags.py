"""Command-line flags are typed overrides in one layer with the --set values: never re-parsed as
YAML, each config path given once, and `d2v config show` prints what `d2v pretrain` stores."""

from __future__ import annotations

import pytest
import yaml

from d2v_core.config_resolve import resolve_config
from d2v_core.errors import ConfigError


def show(cli, *args: str) -> dict:
    code, out, err = cli(["config", "show", "--modality", "vectors", *args])
    assert code == 0, err
    return yaml.safe_load(out)


def test_data_flag_keeps_a_hash_and_spaces(example_plugins, cli):
    # '#' started a YAML comment when flags were turned back into --set text: 'shards/x'
    assert show(cli, "--data", "shards/x #1.tar")["data"]["train"] == "shards/x #1.tar"
    assert show(cli, "--out", "runs/a #2")["runtime"]["out_dir"] == "runs/a #2"


def test_set_value_keeps_a_hash_unless_quoted(example_plugins, cli):
    from d2v_core.config_resolve import parse_value

    assert show(cli, "--set", "data.train=shards/x #1.tar")["data"]["train"] == "shards/x #1.tar"
    assert show(cli, "--set", "data.train='a b'")["data"]["train"] == "a b"
    assert parse_value("1e-4") == 1e-4 and parse_value("[0.9, 0.98]") == [0.9, 0.98] and parse_value("false") is False
    assert parse_value("x #1") == "x #1" and parse_value("") is None


def test_typed_flags_are_not_parsed_as_yaml(example_plugins):
    from d2v_core.config_resolve import Override

    # a masker literally named "1e-4" stays a string: an unknown masker, not a float that fails type checks
    with pytest.raises(Exception, match="unknown masker '1e-4'"):
        resolve_config(example_plugins.registry, "vectors", overrides=[Override("masking.name", "1e-4", "--masker")])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data", "a", "--data", "b"], "--data given 2 times (a, b); give it once"),
        (["--max-steps", "3", "--max-steps", "3"], "--max-steps given 2 times"),
        (["--set", "runtime.max_steps=5", "--max-steps", "7"], "--set runtime.max_steps=5 and --max-steps both set runtime.max_steps"),
        (["--max-steps", "7", "--set", "runtime.max_steps=5"], "--set runtime.max_steps=5 and --max-steps both set runtime.max_steps"),
        (["--set", "masking.name=random", "--masker", "random"], "both set masking.name"),
        (["--set", "masking={name: random}", "--set", "masking.options.mask_prob=0.3"], "both set masking"),
        (["--set", "optim.lr=1", "--set", "optim.lr=2"], "both set optim.lr"),
    ],
)
def test_a_value_given_twice_is_an_error(example_plugins, cli, args, needle):
    for command in (["config", "show"], ["pretrain"]):
        code, _, err = cli([*command, "--modality", "vectors", *args])
        assert code == 2 and needle in err and err.count("\n") == 1, err


def test_masker_flag_keeps_earlier_set_options(example_plugins, cli):
    # --masker used to be applied after the --set values and dropped masking.options
    got = show(cli, "--set", "masking.options.mask_prob=0.3", "--masker", "random")["masking"]
    assert got["name"] == "random" and got["options"]["mask_prob"] == 0.3
    code, _, err = cli(["config", "show", "--modality", "vectors", "--set", "masking.options.mask_prb=0.3", "--masker", "random"])
    assert code == 2 and "masking.options.mask_prb: unknown field" in err


def test_naming_the_default_masker_keeps_the_preset_options(example_plugins, tmp_path):
    from d2v_core.config_resolve import Override

    preset = resolve_config(example_plugins.registry, "vectors").masking
    named = resolve_config(example_plugins.registry, "vectors", overrides=[Override("masking.name", "random", "--masker")]).masking
    assert preset.options == named.options and named.name == "random"


def test_config_show_prints_what_pretrain_stores(example_plugins, cli, tmp_path, monkeypatch):
    """Same flags: `config show` output == the run's config.yaml (the trainer is replaced by a stub
    that records the config it is given, exactly what run.py writes)."""
    import d2v_core.train.run as run_mod
    from d2v_core.config_resolve import config_to_yaml

    stored = {}

    class Stop(Exception):
        pass

    def fake_pretrain(cfg, registry, **kw):
        stored["yaml"] = config_to_yaml(cfg)
        raise Stop

    monkeypatch.setattr(run_mod, "pretrain", fake_pretrain)
    args = ["--modality", "vectors", "--max-steps", "3", "--out", str(tmp_path / "r #1"), "--masker", "random",
            "--set", "masking.options.mask_prob=0.4", "--max-bad-fraction", "0.25", "--set", "optim.lr=0.01"]
    code, shown, err = cli(["config", "show", *args])
    assert code == 0, err
    code, _, err = cli(["pretrain", *args])
    assert "Stop" in err  # reached the trainer
    assert shown == stored["yaml"]
    data = yaml.safe_load(shown)
    assert data["runtime"]["max_steps"] == 3 and data["data"]["max_bad_fraction"] == 0.25
    assert data["data"]["train"]  # the demo data, as pretrain fills it in
    assert data["masking"]["options"]["mask_prob"] == 0.4


def test_config_show_accepts_every_config_flag_of_pretrain():
    """Every pretrain option that changes the config is an option of config show too."""
    import typer.main

    from d2v_cli.app import app

    group = typer.main.get_command(app)
    opts = {name: {o for p in cmd.params for o in p.opts} for name, cmd in [("pretrain", group.commands["pretrain"]),
                                                                            ("show", group.commands["config"].commands["show"])]}
    not_config = {"--resume", "--allow-pipe-urls", "--allow-config-change", "--help"}
    assert opts["pretrain"] - not_config <= opts["show"], opts["pretrain"] - not_config - opts["show"]


def test_init_from_config_comes_from_the_checkpoint(example_plugins, cli, tmp_path):
    ck = tmp_path / "run" / "checkpoints" / "step_00000001"
    ck.mkdir(parents=True)
    base = show(cli, "--set", "model.depth=3")
    (ck / "config.yaml").write_text(yaml.safe_dump(base))
    (ck / "meta.json").write_text("{}")
    got = show(cli, "--init-from", str(tmp_path / "run"))
    assert got["model"]["depth"] == 3
    with pytest.raises(ConfigError):
        from d2v_cli.run_flags import flag_overrides

        flag_overrides({"--out": ["a", "b"]})


def test_init_from_a_checkpoint_written_before_the_per_layer_norm_rename(example_plugins, cli, tmp_path):
    ck = tmp_path / "run" / "checkpoints" / "step_00000001"
    ck.mkdir(parents=True)
    old = show(cli, "--set", "targets.per_layer_norm=layer")
    old["targets"]["layer_norm"] = old["targets"].pop("per_layer_norm")
    (ck / "config.yaml").write_text(yaml.safe_dump(old))
    (ck / "meta.json").write_text("{}")
    assert show(cli, "--init-from", str(tmp_path / "run"))["targets"]["per_layer_norm"] == "layer"
