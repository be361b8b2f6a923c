"""MLflow tracking by explicit run id: a parent run per pipeline run, a nested run per stage.

    from flows.tracking import Tracking
    tracking = Tracking(root, "crawl2model")
    parent = tracking.start_run("pipeline", tags={"prefect.flow_run_id": "..."})
    with tracking.run("curate", parent_id=parent) as run:   # FAILED if the block raises
        tracking.log_metrics(run, {"curate/docs_out": 10})

MLflow's "active run" is per thread, so nothing here uses it: every call names its run id and
works the same from the flow, a worker thread or another process. Metric names are
`stage/metric`. Artifacts of an embedded store go to `<root>/mlartifacts`. A tracking server with
authentication gets MLFLOW_TRACKING_USERNAME/_PASSWORD from the environment (MLflow's client reads
them); one that refuses them fails the first call with a CredentialsError that says which.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from crawl2model.runtime import CredentialsError, artifact_root

_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: nested config as MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def credentials_error(exc: MlflowException, tracking_uri: str) -> CredentialsError | None:
    """A clear error for a server with authentication that refuses this process (None for other errors)."""
    if exc.error_code == "UNAUTHENTICATED":
        who = (f"user {os.environ['MLFLOW_TRACKING_USERNAME']!r} with MLFLOW_TRACKING_PASSWORD"
               if os.environ.get("MLFLOW_TRACKING_USERNAME") else "requests without credentials")
        return CredentialsError(f"the MLflow server at {tracking_uri} refuses {who} (HTTP 401): set "
                                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of its basic-auth app")
    if exc.error_code == "PERMISSION_DENIED":
        return CredentialsError(f"the MLflow server at {tracking_uri} denies user "
                                f"{os.environ.get('MLFLOW_TRACKING_USERNAME')!r} (HTTP 403): {exc.message}")
    return None


class Tracking:
    def __init__(self, root: Path, experiment: str):
        self.client = MlflowClient()
        try:  # the first request: a server with authentication says here whether it accepts us
            found = self.client.get_experiment_by_name(experiment)
        except MlflowException as exc:
            error = credentials_error(exc, self.client.tracking_uri)
            if error is None:
                raise
            raise error from None
        if found is not None:
            self.experiment_id = found.experiment_id
        elif self.client.tracking_uri.startswith(("http://", "https://", "databricks")):
            self.experiment_id = self.client.create_experiment(experiment)  # the server decides where artifacts go
        else:  # embedded: artifacts inside the data root
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_root(root))

    def start_run(self, name: str, parent_id: str | None = None, tags: dict[str, str] | None = None) -> str:
        tags = dict(tags or {})
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    @contextmanager
    def run(self, name: str, parent_id: str | None = None, tags: dict[str, str] | None = None) -> Iterator[str]:
        """A run that ends FINISHED when the block completes and FAILED when it raises."""
        run_id = self.start_run(name, parent_id, tags)
        try:
            yield run_id
        except BaseException:
            self.end_run(run_id, failed=True)
            raise
        self.end_run(run_id)

    def end_run(self, run_id: str, failed: bool = False) -> None:
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's limit per batch for params
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + _BATCH])

    def log_files(self, run_id: str, files: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        """Log a matplotlib figure as a PNG artifact and close it (no file is left behind)."""
        import matplotlib.pyplot as plt

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            figure.savefig(path, dpi=100)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(run_id, str(path), None if parent == "." else parent)
        plt.close(figure)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(text, encoding="utf-8")
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(run_id, str(path), None if parent == "." else parent)
