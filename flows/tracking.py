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

A tracking server that stops answering in the middle of a stage (restarted, network blip) does
not stop the stage or lose a metric: metrics that cannot be sent stay in memory, in order, with
their original timestamps, and the stage goes on; a /health probe every 2 s (instead of MLflow's
own retries, ~4 minutes of backoff growing to 2 minutes between tries) sees the server back, and
they are sent at once (a batch sent twice is deduplicated by the server). Params, tags, artifacts
and the end of a run wait for a server known to be down, up to C2M_MLFLOW_OUTAGE_S (default 600)
seconds of outage; past that the unsent metrics go to `<root>/mlflow-pending/<run_id>.jsonl` and
the stage fails with a TrackingUnavailable that says so. The next Tracking over that data root
(any stage, or the pipeline's start: `crawl2model run` again) sends them to their run first.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.service_pb2 import LogBatch
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.rest_utils import http_request, verify_rest_response

from crawl2model.runtime import CredentialsError, artifact_root

_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
PROBE_EVERY_S = 2.0  # while the server is down: how often to look whether it is back
OUTAGE_ENV = "C2M_MLFLOW_OUTAGE_S"  # how long the end of a run waits for a server that is down


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable for longer than the configured outage bound."""


def unreachable(exc: BaseException) -> bool:
    """Whether an MLflow error means the server did not answer (refused, reset, timed out, 5xx)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                             requests.exceptions.RetryError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(exc, MlflowException) and exc.get_http_status_code() in (502, 503, 504)


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
        self.pending_dir = Path(root) / "mlflow-pending"
        self._remote = self.client.tracking_uri.startswith(("http://", "https://"))
        self._pending: list[tuple[str, Metric]] = []  # not yet sent, in the order they were logged
        self._down_since: float | None = None  # when the server stopped answering (None: it answers)
        self._next_probe = 0.0
        self._send_spooled()

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
        except TrackingUnavailable:
            raise  # the server is gone: marking the run FAILED would only wait for it again
        except BaseException:
            self.end_run(run_id, failed=True)
            raise
        self.end_run(run_id)

    def end_run(self, run_id: str, failed: bool = False) -> None:
        """Send what is pending (waiting out an outage, bounded), then mark the run ended."""
        self.flush(wait=True)
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.flush(wait=True)  # metrics first, in order; and a known outage is waited out here
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.flush(wait=True)  # metrics first, in order; and a known outage is waited out here
        items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's limit per batch for params
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Send the metrics now; while the server is down, keep them (in order) and go on."""
        now = int(time.time() * 1000)
        self._pending.extend((run_id, Metric(k, float(v), now, step)) for k, v in metrics.items())
        self.flush()

    def flush(self, wait: bool = False) -> None:
        """Send the pending metrics. While the server is down this returns at once (wait=False) or
        probes it until it answers, for at most C2M_MLFLOW_OUTAGE_S seconds of outage (wait=True);
        past that the metrics are spooled to disk and TrackingUnavailable says where."""
        while self._pending:
            if self._down_since is not None and not self._server_back(wait):
                if not wait:
                    return
                limit = float(os.environ.get(OUTAGE_ENV, "600"))
                if time.monotonic() - self._down_since > limit:
                    raise self._give_up(limit)
                continue
            run_id = self._pending[0][0]
            batch = [m for r, m in self._pending if r == run_id][:_BATCH]
            try:
                self._send(run_id, batch)
            except MlflowException as exc:
                if not unreachable(exc):
                    raise
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    self._next_probe = time.monotonic() + PROBE_EVERY_S
                continue
            self._down_since = None
            sent = {id(m) for m in batch}
            self._pending = [(r, m) for r, m in self._pending if id(m) not in sent]

    def _send(self, run_id: str, metrics: list[Metric]) -> None:
        if not self._remote:
            self.client.log_batch(run_id, metrics=metrics)
            return
        # MLflow's client retries an unreachable server for ~4 minutes with exponential backoff
        # inside each call; here one quick try, and this class does the waiting (see flush)
        body = json.loads(message_to_json(LogBatch(run_id=run_id, metrics=[m.to_proto() for m in metrics])))
        endpoint = "/api/2.0/mlflow/runs/log-batch"
        # the store's credentials (basic auth from the environment), as MLflow's own calls use them
        creds = self.client._tracking_client.store.get_host_creds()
        response = http_request(creds, endpoint, "POST", max_retries=0, backoff_factor=0, timeout=30, json=body)
        verify_rest_response(response, endpoint)

    def _server_back(self, wait: bool) -> bool:
        """A /health probe, at most every PROBE_EVERY_S seconds (False between probes)."""
        now = time.monotonic()
        if now < self._next_probe:
            if not wait:
                return False
            time.sleep(self._next_probe - now)
        self._next_probe = time.monotonic() + PROBE_EVERY_S
        if not self._remote:
            return True
        try:
            return requests.get(self.client.tracking_uri.rstrip("/") + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _give_up(self, limit: float) -> TrackingUnavailable:
        """Spool the pending metrics per run and say so."""
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        runs: dict[str, list[Metric]] = {}
        for run_id, metric in self._pending:
            runs.setdefault(run_id, []).append(metric)
        for run_id, metrics in runs.items():
            with (self.pending_dir / f"{run_id}.jsonl").open("a", encoding="utf-8") as f:
                for m in metrics:
                    f.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) + "\n")
        steps = sorted({m.step for _, m in self._pending})
        self._pending = []
        return TrackingUnavailable(
            f"the MLflow server at {self.client.tracking_uri} has not answered for {limit:.0f} s "
            f"({OUTAGE_ENV}); {sum(len(v) for v in runs.values())} metrics of run(s) {', '.join(runs)} "
            f"(steps {steps[0]}..{steps[-1]}) are kept in {self.pending_dir} and are sent by the next run "
            "over this data root: start the server and re-run")

    def _send_spooled(self) -> None:
        """Send the metrics an earlier run could not (see _give_up), then delete their files."""
        if not self.pending_dir.is_dir():
            return
        for path in sorted(self.pending_dir.glob("*.jsonl")):
            metrics = [Metric(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
            try:
                for i in range(0, len(metrics), _BATCH):  # a batch sent twice is deduplicated by the server
                    self._send(path.stem, metrics[i : i + _BATCH])
            except MlflowException as exc:
                if unreachable(exc):
                    return  # still down after all: the files wait for the next run
                # e.g. the run was deleted: keep the file aside, never block every later run on it
                path.rename(path.with_suffix(".unsendable"))
                logging.getLogger(__name__).warning("metrics in %s could not be sent (%s); kept as %s", path,
                                                    exc.message, path.with_suffix(".unsendable"))
                continue
            path.unlink()

    def log_files(self, run_id: str, files: Iterable[Path], artifact_path: str | None = None) -> None:
        self.flush(wait=True)  # metrics first, in order; and a known outage is waited out here
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        """Log a matplotlib figure as a PNG artifact and close it (no file is left behind)."""
        self.flush(wait=True)  # metrics first, in order; and a known outage is waited out here
        import matplotlib.pyplot as plt  # deferred: the caller drew the figure, so it is imported already

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            figure.savefig(path, dpi=100)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(run_id, str(path), None if parent == "." else parent)
        plt.close(figure)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.flush(wait=True)  # metrics first, in order; and a known outage is waited out here
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(text, encoding="utf-8")
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(run_id, str(path), None if parent == "." else parent)
