"""What the plugin provides: the ``mlflow`` logger. Imports nothing heavy (no mlflow, no torch),
so ``d2v list-plugins`` stays fast; MLflow is imported when a run opens the logger."""

from d2v_core import ComponentSpec, hookimpl

D2V_PLUGIN_API_VERSION = "1.0"


@hookimpl
def d2v_register(registry):  # type: ignore[no-untyped-def]
    registry.add_component(ComponentSpec(
        kind="logger",
        name="mlflow",
        factory="d2v_plugin_mlflow.mlflow_logger:build_mlflow_logger",
        options="d2v_plugin_mlflow.options:MlflowOptions",
        description="MLflow: the resolved config as params, every log step's metrics, config.yaml and the run's "
                    "paths (store: sqlite:///<run>/mlflow.db unless tracking_uri or MLFLOW_TRACKING_URI)",
    ))
