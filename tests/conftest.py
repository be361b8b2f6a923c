"""Shared fixtures: the real sample data in ../shared/data, and an isolated data root per test.

The Prefect API for the whole session is one real local server (started once; flows in every
test talk to it), and each test gets its own data root with its own DuckDB file and MLflow
SQLite store, so tests never see each other's state.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import duckdb
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Before anything imports prefect or mlflow: keep their state out of the user's home.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="c2m-test-"))
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("C2M_HOME", None)


def shared(*parts: str) -> Path:
    """A path in ../shared/data, or skip the test with the reason when the data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (it lives beside the repo in ../shared/data)")
    return path


def query(root: Path, sql: str, params=()):
    """Rows of a query on a data root's warehouse, read-only."""
    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="session")
def prefect_server():
    """One real Prefect API server on 127.0.0.1 for the session."""
    from crawl2model.runtime import prefect_api

    with prefect_api() as url:
        yield url


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "c2m-data"
    monkeypatch.setenv("C2M_HOME", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    return root


@pytest.fixture
def cfg(data_root):
    from crawl2model.config import load_config

    return load_config(overrides=["curate.workers=2"], data_root=data_root)
