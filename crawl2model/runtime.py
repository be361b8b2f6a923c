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

A new data root starts with a copy of an empty, migrated Prefect database, made once per install
(`python -m crawl2model.runtime`, which `make` runs after installing): migrating a new one takes
~15 s of every fresh data root's first run (make demo, a new experiment) on 2 cores.

Credentials for servers with authentication (deploy/compose.yaml, `crawl2model ui --auth`) are
read from the environment by the clients themselves: MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD (MLflow's REST client), PREFECT_API_AUTH_STRING (Prefect's client); every
process crawl2model starts inherits them. `prefect_api` checks a user-set PREFECT_API_URL once
and turns a 401 into a clear error. The embedded default needs none and ignores them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Iterator

from crawl2model.layout import DataRoot

PREFECT_DATABASE_SETTINGS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


@cache  # looking the version up takes ~60 ms: not at import, where every command (--help too) would pay it
def prefect_template() -> Path:
    """An empty Prefect database at the installed Prefect's newest migration (in the virtual environment)."""
    return Path(sys.prefix) / "share" / "crawl2model" / f"prefect-{version('prefect')}.db"


def prepare_environment(root: Path) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    layout = DataRoot(root)
    defaults = {
        "PREFECT_HOME": str(layout.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_LOG_PRINTS": "false",
        "PREFECT_TASKS_REFRESH_CACHE": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{layout.mlflow_db}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no download bars in the pipeline's output
        "DO_NOT_TRACK": "1",
        "C2M_HOME": str(root),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    seed_prefect_database(Path(os.environ["PREFECT_HOME"]))


def seed_prefect_database(home: Path, template: Path | None = None) -> bool:
    """Copy the empty migrated Prefect database into a PREFECT_HOME that has none (the embedded
    server's default location, no server or database configured); True when copied."""
    template = template or prefect_template()
    database = home / "prefect.db"
    configured = os.environ.get("PREFECT_API_URL") or any(os.environ.get(k) for k in PREFECT_DATABASE_SETTINGS)
    if configured or database.exists() or not template.exists():
        return False
    home.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f"prefect.db.tmp-{os.getpid()}")
    shutil.copyfile(template, partial)
    os.replace(partial, database)  # whole or absent: Prefect must never open half a file
    return True


def make_prefect_template(dest: Path | None = None) -> Path:
    """Migrate an empty Prefect database (`prefect server database upgrade`) and keep it as the template."""
    dest = dest or prefect_template()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if k not in PREFECT_DATABASE_SETTINGS + ("PREFECT_API_URL",)}
        subprocess.run([str(Path(sys.executable).with_name("prefect")), "server", "database", "upgrade", "-y"],
                       env={**env, "PREFECT_HOME": home}, check=True, capture_output=True, timeout=600)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        shutil.copyfile(Path(home) / "prefect.db", partial)
        os.replace(partial, dest)
    return dest


def artifact_root(root: Path) -> str:
    return DataRoot(root).mlflow_artifacts.resolve().as_uri()


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


if __name__ == "__main__":
    print(f"empty Prefect database for new data roots: {make_prefect_template()}")
