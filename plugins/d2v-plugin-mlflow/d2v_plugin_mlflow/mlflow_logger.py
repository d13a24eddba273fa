"""The ``mlflow`` logger: one MLflow run per d2v process, written with ``MlflowClient`` (no
global active run). A resumed d2v run opens a new MLflow run in the same store, tagged
``d2v.resumed_from_step``, so each MLflow run's history is exactly the rows its process logged."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from d2v_core import LoggerContext, MetricsLogger

from d2v_plugin_mlflow.options import MlflowOptions

#: MLflow's limits: params (and tags) per ``log_batch`` call, characters of one param value
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested run config as MLflow params: ``{"optim.lr": "0.0005", "runtime.loggers": '["mlflow"]'}``.
    Non-empty mappings are walked; every other value is one param (strings as they are, the
    rest as JSON), cut to MLflow's length limit."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = (value if isinstance(value, str) else json.dumps(value))[:MAX_PARAM_VALUE]
    return out


def default_tracking_uri(run_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store in the run folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class MlflowLogger(MetricsLogger):
    """Params (the resolved run config, flattened) once, each log step's numbers as metrics at
    that step, and at the end ``config.yaml`` as a file of the run and the run folder's paths as
    tags (``d2v.run_dir``, ``d2v.metrics``, ``d2v.checkpoints``)."""

    def __init__(self, options: MlflowOptions, ctx: LoggerContext) -> None:
        self.options, self.run_dir = options, ctx.run_dir
        own_store = options.tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI")
        self.tracking_uri = options.tracking_uri or default_tracking_uri(ctx.run_dir)
        self.client = MlflowClient(self.tracking_uri)
        experiment = self.client.get_experiment_by_name(options.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            location = options.artifact_location or ((ctx.run_dir / "mlartifacts").resolve().as_uri() if own_store else None)
            experiment_id = self.client.create_experiment(options.experiment, artifact_location=location)
        tags = {"d2v.run_dir": str(ctx.run_dir.resolve()), "d2v.modality": ctx.modality, "d2v.preset": ctx.preset or "",
                "d2v.max_steps": str(ctx.max_steps), **options.tags}
        if ctx.start_step:
            tags["d2v.resumed_from_step"] = str(ctx.start_step)
        run = self.client.create_run(experiment_id, run_name=options.run_name or ctx.run_dir.resolve().name, tags=tags)
        self.run_id = run.info.run_id

    def log_config(self, config: Mapping[str, Any]) -> None:
        params = [Param(k, v) for k, v in flatten_params(config).items()]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS_PER_BATCH])

    def log(self, step: int, scalars: Mapping[str, Any]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in ((k, _number(v)) for k, v in scalars.items()) if v is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str = "finished") -> None:
        try:
            config = self.run_dir / "config.yaml"
            if self.options.artifacts and config.is_file():
                self.client.log_artifact(self.run_id, str(config))
            for tag, name in (("d2v.metrics", "metrics.jsonl"), ("d2v.checkpoints", "checkpoints")):
                if (self.run_dir / name).exists():
                    self.client.set_tag(self.run_id, tag, str((self.run_dir / name).resolve()))
        finally:  # the run's status is set even if a file could not be copied
            self.client.set_terminated(self.run_id, STATUS.get(status, "FINISHED"))


def build_mlflow_logger(options: MlflowOptions | None, ctx: LoggerContext) -> MlflowLogger:
    return MlflowLogger(options or MlflowOptions(), ctx)
