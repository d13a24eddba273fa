"""Metrics loggers, the ``logger`` component kind: the core's ``jsonl`` and ``tensorboard``, a
plugin's logger named by ``runtime.loggers``, and a logger that fails (reported once, dropped,
training goes on)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import PositiveInt

from d2v_core import ComponentSpec, LoggerContext, MetricsLogger, Options, hookimpl
from d2v_core.config_resolve import resolve_config, run_loggers
from d2v_core.train.metrics import MetricsWriter, read_metrics

BASE = ["pretrain", "--modality", "vectors", "--set", "runtime.progress=false", "--set", "data.batch_size=8",
        "--set", "runtime.log_every=2", "--max-steps", "6"]


def vectors(folder: Path, n: int = 16) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(folder / f"seq_{i:03d}.npy", rng.standard_normal((int(rng.integers(30, 50)), 16)).astype(np.float32))
    return folder


class RecorderOptions(Options):
    every: PositiveInt = 1


class Recorder(MetricsLogger):
    """Writes every call it gets to ``<run>/recorder.json`` when closed (a test sink)."""

    def __init__(self, options: RecorderOptions, ctx: LoggerContext) -> None:
        self.ctx, self.options, self.calls = ctx, options, {"config": None, "log": [], "close": None}

    def log_config(self, config):
        self.calls["config"] = config

    def log(self, step, scalars):
        self.calls["log"].append([step, dict(scalars)])

    def close(self, status="finished"):
        self.calls["close"] = status
        ctx = {"start_step": self.ctx.start_step, "max_steps": self.ctx.max_steps, "modality": self.ctx.modality,
               "every": self.options.every}
        (self.ctx.run_dir / "recorder.json").write_text(json.dumps({**self.calls, "ctx": ctx}))


class Flaky(MetricsLogger):
    """Raises in the method its options name (at the second log step for ``log``)."""

    def __init__(self, fail_in: str, ctx: LoggerContext) -> None:
        if fail_in == "open":
            raise RuntimeError("cannot reach the tracker\nsecond line of a long message")
        self.fail_in, self.logged = fail_in, 0

    def log_config(self, config):
        if self.fail_in == "log_config":
            raise ValueError("bad param")

    def log(self, step, scalars):
        self.logged += 1
        if self.fail_in == "log" and self.logged == 2:
            raise OSError(28, "No space left on device")

    def close(self, status="finished"):
        if self.fail_in == "close":
            raise RuntimeError("already closed")


class FlakyOptions(Options):
    fail_in: str = "log"


def build_flaky(options: FlakyOptions, ctx: LoggerContext) -> Flaky:
    return Flaky(options.fail_in, ctx)


def _loggers_plugin() -> SimpleNamespace:
    @hookimpl
    def d2v_register(registry):
        registry.add_component(ComponentSpec("logger", "recorder", Recorder, options=RecorderOptions, description="test sink"))
        registry.add_component(ComponentSpec("logger", "flaky", build_flaky, options=FlakyOptions))
        registry.add_component(ComponentSpec("logger", "not-a-logger", lambda options, ctx: object()))

    return SimpleNamespace(__name__="test_loggers", D2V_PLUGIN_API_VERSION="1.0", d2v_register=d2v_register)


@pytest.fixture
def loggers_plugins():
    from d2v_core.plugin_loader import plugin_context

    from d2v_plugin_example import plugin

    with plugin_context(plugin, _loggers_plugin()) as loaded:
        yield loaded


def test_the_core_registers_jsonl_and_tensorboard_as_loggers(example_plugins):
    from d2v_cli.plugins_cmd import plugin_rows

    reg = example_plugins.registry
    assert reg.names("logger") == ["jsonl", "tensorboard"]
    assert {reg.component("logger", n).plugin for n in reg.names("logger")} == {"core"}
    (core,) = [r for r in plugin_rows(example_plugins) if r["name"] == "core"]
    assert {(c["kind"], c["name"]) for c in core["components"]} >= {("logger", "jsonl"), ("logger", "tensorboard")}
    assert {"logger:jsonl", "logger:tensorboard"} <= set(core["provides"])


def _installed_loggers() -> list[str]:
    from d2v_core.plugin_loader import get_registry

    return get_registry().names("logger")


@pytest.mark.parametrize("name", _installed_loggers())
def test_every_installed_logger_takes_the_trainers_calls(name, tmp_path):
    from d2v_core import testing
    from d2v_core.plugin_loader import get_registry

    testing.check_logger(get_registry().component("logger", name), tmp_path / "run")


def test_the_logger_check_fails_for_a_logger_that_raises(tmp_path, loggers_plugins):
    from d2v_core import testing

    with pytest.raises(OSError, match="No space left"):
        testing.check_logger(loggers_plugins.registry.component("logger", "flaky"), tmp_path / "run")
    with pytest.raises(AssertionError, match="not a MetricsLogger"):
        testing.check_logger(loggers_plugins.registry.component("logger", "not-a-logger"), tmp_path / "run")


def test_jsonl_is_always_on_and_tensorboard_follows_its_switch(example_plugins):
    reg = example_plugins.registry
    assert run_loggers(resolve_config(reg, "vectors")) == ["jsonl", "tensorboard"]
    cfg = resolve_config(reg, "vectors", overrides=["runtime.tensorboard=false", "runtime.loggers=[tensorboard, jsonl]"])
    assert run_loggers(cfg) == ["jsonl", "tensorboard"]  # named again: used once, in the core's order
    assert run_loggers(resolve_config(reg, "vectors", overrides=["runtime.tensorboard=false"])) == ["jsonl"]


def test_a_plugin_logger_gets_the_config_once_and_every_log_step_jsonl_gets(tmp_path, loggers_plugins, cli):
    run = tmp_path / "run"
    code, out, err = cli([*BASE, "--data", str(vectors(tmp_path / "d")), "--out", str(run),
                          "--set", "runtime.loggers=[recorder]", "--set", "runtime.logger_options.recorder.every=3"])
    assert code == 0, err
    rec = json.loads((run / "recorder.json").read_text())
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert rec["log"] == [[r["step"], {k: v for k, v in r.items() if k not in ("step", "time")}] for r in rows]
    assert {"loss", "rel_loss", "lr", "tau", "target_var", "samples_per_s"} <= set(rec["log"][0][1])
    assert rec["config"]["modality"] == "vectors" and rec["config"]["runtime"]["loggers"] == ["recorder"]
    assert rec["config"]["runtime"]["logger_options"] == {"recorder": {"every": 3}}  # resolved, as config.yaml has it
    assert rec["ctx"] == {"start_step": 0, "max_steps": 6, "modality": "vectors", "every": 3}
    assert rec["close"] == "finished"
    assert "logger" not in err


def test_tensorboard_writes_the_values_jsonl_has(tmp_path, example_plugins, cli):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    code, out, err = cli([*BASE, "--data", str(vectors(tmp_path / "d")), "--out", str(run)])
    assert code == 0, err
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = read_metrics(run)
    for key in ("loss", "rel_loss", "lr", "target_var"):
        got = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert [s for s, _ in got] == [r["step"] for r in rows]
        assert np.allclose([v for _, v in got], [r[key] for r in rows], rtol=1e-6), key  # stored as float32


@pytest.mark.parametrize("fail_in", ["open", "log_config", "log", "close"])
def test_a_failing_logger_is_reported_once_and_training_goes_on(tmp_path, loggers_plugins, cli, fail_in):
    run = tmp_path / "run"
    code, out, err = cli([*BASE, "--data", str(vectors(tmp_path / "d")), "--out", str(run),
                          "--set", "runtime.loggers=[flaky, recorder]", "--set", f"runtime.logger_options.flaky.fail_in={fail_in}"])
    assert code == 0, err
    reports = [line for line in err.splitlines() if "logger 'flaky' failed" in line]
    what = {"open": "open", "log_config": "log_config", "log": "log at step 4", "close": "close"}[fail_in]
    assert len(reports) == 1 and f"failed ({what}):" in reports[0] and "off for the rest of this run" in reports[0], err
    assert "second line" not in err  # one line of the error, not its whole message
    assert [r["step"] for r in read_metrics(run)] == [2, 4, 6]  # the others go on
    assert len(json.loads((run / "recorder.json").read_text())["log"]) == 3
    assert (run / "checkpoints" / "step_00000006").is_dir()


def test_a_factory_that_returns_no_logger_is_reported(tmp_path, loggers_plugins):
    err = _Stream()
    writer = MetricsWriter(LoggerContext(tmp_path, 4), [("not-a-logger", _factory(loggers_plugins, "not-a-logger"))], errors=err,
                           stream=_Stream())
    writer.log(1, {"loss": 1.0})
    writer.close()
    assert writer.failed == {"not-a-logger": "TypeError: the factory returned object, not a d2v MetricsLogger"}
    assert err.getvalue().count("\n") == 1


def test_close_says_whether_the_run_failed(tmp_path, loggers_plugins):
    writer = MetricsWriter(LoggerContext(tmp_path, 4), [("recorder", _factory(loggers_plugins, "recorder"))], stream=_Stream())
    try:
        raise RuntimeError("training failed")
    except RuntimeError:
        writer.close()  # as in the trainer's finally: while the error propagates
    assert json.loads((tmp_path / "recorder.json").read_text())["close"] == "failed"


@pytest.mark.parametrize("sets, message", [
    (["runtime.loggers=[nope]"], "unknown logger 'nope' (installed: flaky, jsonl, not-a-logger, recorder, tensorboard)"),
    (["runtime.logger_options.recorder.every=2"], "runtime.logger_options.recorder: 'recorder' is not one of this run's loggers"),
    (["runtime.loggers=[recorder]", "runtime.logger_options.recorder.every=0"], "runtime.logger_options.recorder.every:"),
    (["runtime.logger_options.jsonl.x=1"], "runtime.logger_options.jsonl: takes no options"),
])
def test_a_bad_logger_setting_is_a_one_line_error_before_the_run_folder(tmp_path, loggers_plugins, cli, sets, message):
    run = tmp_path / "run"
    code, out, err = cli([*BASE, "--data", str(vectors(tmp_path / "d")), "--out", str(run),
                          *[a for s in sets for a in ("--set", s)]])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()


def test_loggers_may_change_on_resume(loggers_plugins):
    from d2v_core.config_resolve import config_to_yaml
    from d2v_core.train.resume import check_resume_config

    reg = loggers_plugins.registry
    stored = config_to_yaml(resolve_config(reg, "vectors"))
    cfg = resolve_config(reg, "vectors", overrides=["runtime.loggers=[recorder]", "runtime.logger_options.recorder.every=2"])
    changes = check_resume_config(stored, cfg)
    assert changes["runtime.loggers"] == ([], ["recorder"]) and changes["runtime.logger_options.recorder.every"] == (None, 2)


# -- helpers ---------------------------------------------------------------------------------------


class _Stream:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        self.parts.append(s)
        return len(s)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return "".join(self.parts)


def _factory(loaded, name):
    from d2v_core.train.build import logger_factories

    cfg = resolve_config(loaded.registry, "vectors", overrides=[f"runtime.loggers=[{name}]"])
    return dict(logger_factories(cfg, loaded.registry))[name]


def test_jsonl_keeps_a_non_finite_value_as_it_was_logged(tmp_path):
    from d2v_core.train.metrics import JsonlLogger

    logger = JsonlLogger(LoggerContext(tmp_path, 4))
    logger.log(1, {"loss": float("nan"), "lr": 1e-3})
    logger.close()
    (row,) = read_metrics(tmp_path)
    assert math.isnan(row["loss"]) and row["lr"] == 1e-3 and row["step"] == 1
