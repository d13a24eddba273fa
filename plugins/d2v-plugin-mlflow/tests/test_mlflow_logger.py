"""The ``mlflow`` logger against MLflow itself: a real tiny ``d2v pretrain`` writes a real
MLflow run (SQLite store in the run folder), read back with ``MlflowClient``."""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from d2v_cli.testing import run_cli
from d2v_core import LoggerContext
from d2v_core.plugin_loader import module_source, plugin_context
from d2v_core.train.metrics import read_metrics

from d2v_plugin_mlflow import plugin as mlflow_plugin
from d2v_plugin_mlflow.mlflow_logger import build_mlflow_logger, flatten_params
from d2v_plugin_mlflow.options import MlflowOptions

# the repository's example modality ('vectors', with demo data), registered in-process
EXAMPLE = Path(__file__).resolve().parents[2] / "d2v-plugin-example"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))
from d2v_plugin_example import plugin as example_plugin  # noqa: E402

PRETRAIN = ["pretrain", "--modality", "vectors", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
            "--set", "runtime.log_every=2", "--set", "data.batch_size=8"]


@pytest.fixture(autouse=True)
def _no_tracking_server(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def d2v():
    """``d2v ARGS`` in-process with the example modality and this plugin: (exit code, stdout, stderr)."""

    def run(args):
        with plugin_context(module_source(example_plugin, name="example"), module_source(mlflow_plugin, name="mlflow")):
            return run_cli(args)

    return run


def _store(run_dir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")


def test_flatten_params():
    config = {"modality": "audio", "optim": {"lr": 5e-4, "betas": [0.9, 0.98], "schedule": {"name": "cosine", "options": {}}},
              "preset": None, "runtime": {"compile": False, "max_steps": 10}}
    assert flatten_params(config) == {
        "modality": "audio", "optim.lr": "0.0005", "optim.betas": "[0.9, 0.98]", "optim.schedule.name": "cosine",
        "optim.schedule.options": "{}", "preset": "null", "runtime.compile": "false", "runtime.max_steps": "10"}
    assert len(flatten_params({"a": "x" * 7000})["a"]) == 6000  # MLflow's limit on a param value


@pytest.mark.slow
def test_a_tiny_pretrain_writes_an_mlflow_run_with_the_history_of_metrics_jsonl(tmp_path, monkeypatch, d2v):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run_dir = tmp_path / "run"
    code, out, err = d2v([*PRETRAIN, "--max-steps", "6", "--out", str(run_dir), "--set", "runtime.loggers=[mlflow]",
                          "--set", "runtime.logger_options.mlflow.tags={team: speech}"])
    assert code == 0, err
    assert "logger 'mlflow' failed" not in err
    assert list(cwd.iterdir()) == []  # nothing outside the run folder (no ./mlruns)

    client = _store(run_dir)
    experiment = client.get_experiment_by_name("d2v")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags["team"] == "speech" and run.data.tags["d2v.modality"] == "vectors"
    assert run.data.tags["d2v.run_dir"] == str(run_dir.resolve()) and "d2v.resumed_from_step" not in run.data.tags
    assert run.data.tags["d2v.checkpoints"] == str((run_dir / "checkpoints").resolve())

    # params: every leaf of the run's own config.yaml, at its dotted path
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    params = run.data.params
    assert params["modality"] == "vectors" and params["runtime.max_steps"] == "6" and params["runtime.loggers"] == '["mlflow"]'
    assert params["optim.lr"] == json.dumps(stored["optim"]["lr"]) and params["runtime.logger_options.mlflow.experiment"] == "d2v"

    def leaves(tree):
        return sum(leaves(v) if isinstance(v, dict) and v else 1 for v in tree.values())

    assert len(params) == leaves(stored)

    # metrics: each key's history equals metrics.jsonl's column, step for step
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [2, 4, 6]
    keys = {k for r in rows for k in r} - {"step", "time"}
    assert {"loss", "rel_loss", "lr", "tau", "target_var", "samples_per_s"} <= keys
    for key in keys:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == [(r["step"], float(r[key])) for r in rows], key
    assert set(run.data.metrics) == keys

    # the run's files: config.yaml, copied under the run folder's artifact store
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]
    local = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path)))
    assert local.read_text() == (run_dir / "config.yaml").read_text()
    assert (run_dir / "mlartifacts").is_dir()

    # a resumed run is a new MLflow run in the same store: its history is what it logged
    code, out, err = d2v([*PRETRAIN, "--max-steps", "8", "--out", str(run_dir), "--resume", "--set", "runtime.loggers=[mlflow]",
                          "--set", "runtime.logger_options.mlflow.tags={team: speech}"])
    assert code == 0, err
    runs = {r.data.tags.get("d2v.resumed_from_step"): r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {None, "6"} and runs["6"].info.status == "FINISHED"
    resumed = [(m.step, m.value) for m in client.get_metric_history(runs["6"].info.run_id, "loss")]
    assert resumed == [(8, next(r["loss"] for r in read_metrics(run_dir) if r["step"] == 8))]


@pytest.mark.slow
def test_a_tracker_that_cannot_be_opened_does_not_stop_training(tmp_path, d2v):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run_dir = tmp_path / "run"
    code, out, err = d2v([*PRETRAIN, "--max-steps", "4", "--out", str(run_dir), "--set", "runtime.loggers=[mlflow]",
                          "--set", f"runtime.logger_options.mlflow.tracking_uri=sqlite:///{blocker}/mlflow.db"])
    assert code == 0, err
    (line,) = [x for x in err.splitlines() if "logger 'mlflow' failed" in x]
    assert "(open)" in line and "off for the rest of this run" in line
    assert [r["step"] for r in read_metrics(run_dir)] == [2, 4] and (run_dir / "checkpoints" / "step_00000004").is_dir()


def test_bad_options_are_a_one_line_error(tmp_path, d2v):
    code, out, err = d2v([*PRETRAIN, "--max-steps", "4", "--out", str(tmp_path / "run"), "--set", "runtime.loggers=[mlflow]",
                          "--set", "runtime.logger_options.mlflow.experiment="])
    assert code == 2 and "runtime.logger_options.mlflow.experiment" in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_mlflow_tracking_uri_names_the_store_when_no_option_does(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    logger = build_mlflow_logger(MlflowOptions(experiment="e", artifact_location=(tmp_path / "files").as_uri()),
                                 LoggerContext(tmp_path / "run", max_steps=3, start_step=1))
    config = {f"section{i}": {f"field{j}": i * j for j in range(10)} for i in range(25)}  # 250 params: 3 batches
    logger.log_config(config)
    logger.log(2, {"loss": 0.5, "name": "not a number", "flag": True})
    logger.close("failed")
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert len(run.data.params) == 250 and run.data.params["section24.field9"] == "216"
    assert run.info.status == "FAILED" and run.data.tags["d2v.resumed_from_step"] == "1"
    assert run.data.metrics == {"loss": 0.5}  # numbers only
    assert not (tmp_path / "run" / "mlflow.db").exists()


def test_the_entry_point_is_declared():
    eps = {ep.name: ep for ep in md.entry_points(group="d2v")}
    assert "mlflow" in eps, "d2v-plugin-mlflow is not installed: pip install -e plugins/d2v-plugin-mlflow"
    assert eps["mlflow"].value == "d2v_plugin_mlflow.plugin"
    assert eps["mlflow"].dist.metadata["Name"] == "d2v-plugin-mlflow"
