"""Process environment for the embedded Prefect and MLflow, all state inside the data root.

    from crawl2model.runtime import prepare_environment, prefect_api
    prepare_environment(root)      # call BEFORE importing prefect or mlflow
    with prefect_api():            # one local Prefect server for the whole run
        my_flow()

Defaults (a variable the user already set always wins):
  PREFECT_HOME=<root>/prefect, PREFECT_SERVER_ANALYTICS_ENABLED=false,
  MLFLOW_TRACKING_URI=sqlite:///<root>/mlflow.db (artifacts in <root>/mlartifacts),
  MLFLOW_DISABLE_TELEMETRY=true.
Prefect's local mode otherwise starts a temporary API server in every process that touches it:
with a process pool that is one server per worker (seconds each, and the run's state split over
several databases). `prefect_api` starts one and exports its URL, so the workers share it.

Credentials for servers with authentication (deploy/compose.yaml, `crawl2model ui --auth`) are
read from the environment by the clients themselves: MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD (MLflow's REST client), PREFECT_API_AUTH_STRING (Prefect's client); every
process crawl2model starts inherits them. `prefect_api` checks a user-set PREFECT_API_URL once
and turns a 401 into a clear error. The embedded default needs none and ignores them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def prepare_environment(root: Path) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    defaults = {
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_LOG_PRINTS": "false",
        "PREFECT_TASKS_REFRESH_CACHE": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no download bars in the pipeline's output
        "DO_NOT_TRACK": "1",
        "C2M_HOME": str(root),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def artifact_root(root: Path) -> str:
    return (Path(root) / "mlartifacts").resolve().as_uri()


@contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the Prefect API URL: the user's (PREFECT_API_URL), or one local server we start."""
    if os.environ.get("PREFECT_API_URL"):
        check_prefect_credentials(os.environ["PREFECT_API_URL"])
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by worker processes
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _drain_prefect_logs()  # else logs still queued at exit retry the stopped server for a minute
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


class CredentialsError(RuntimeError):
    """A server with authentication refuses this process's credentials (or their absence)."""


def check_prefect_credentials(api_url: str, timeout: float = 30.0) -> None:
    """Raise CredentialsError when the Prefect API answers 401 to a protected endpoint with this
    environment's PREFECT_API_AUTH_STRING; anything else (up, down, slow) is left to the run."""
    import base64
    import urllib.error
    import urllib.request

    auth_string = os.environ.get("PREFECT_API_AUTH_STRING", "")
    headers = {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()} if auth_string else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(api_url.rstrip("/") + "/admin/version", headers=headers),
                                    timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            return
    except (OSError, ValueError):
        return
    if auth_string:
        raise CredentialsError(f"the Prefect API at {api_url} refuses PREFECT_API_AUTH_STRING (HTTP 401): set it to "
                               "the server's PREFECT_SERVER_API_AUTH_STRING")
    raise CredentialsError(f"the Prefect API at {api_url} requires authentication (HTTP 401): set "
                           "PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING")


def _drain_prefect_logs() -> None:
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.drain_all(timeout=5)
    except Exception:  # noqa: BLE001 - losing a log line must not fail the run
        pass
