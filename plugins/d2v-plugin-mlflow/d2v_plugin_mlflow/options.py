"""The ``mlflow`` logger's options: ``runtime.logger_options.mlflow`` in a run config."""

from typing import Optional

from pydantic import Field

from d2v_core import Options


class MlflowOptions(Options):
    """``tracking_uri``: where runs are stored (``sqlite:///path.db``, ``http://host:5000``, ...);
    ``None``: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<run folder>/mlflow.db``.
    ``experiment``: the experiment's name (made if missing); ``artifact_location``: where a new
    experiment keeps its files (``None``: ``<run folder>/mlartifacts`` for the default store,
    the server's choice otherwise); ``run_name``: ``None`` for the run folder's name;
    ``tags``: more tags on the MLflow run; ``artifacts``: copy ``config.yaml`` to the run's files."""

    tracking_uri: Optional[str] = None
    experiment: str = Field("d2v", min_length=1)
    artifact_location: Optional[str] = None
    run_name: Optional[str] = None
    tags: dict[str, str] = Field(default_factory=dict)
    artifacts: bool = True
