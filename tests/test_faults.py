"""Faults survived, nothing lost: each fault injected into a real run, the outcome compared with
an undisturbed run of the same input.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_faults.py

- A Dask worker process SIGKILLed while curation shards run on it (`runner.kind=dask`): Dask's
  scheduler reruns its shards on a live worker, every shard's Prefect task run ends COMPLETED,
  and the warehouse holds the same tables, row for row, as a run nobody disturbed.
- The same on the default runner (Prefect's process pool), where one dead worker breaks the whole
  pool: the stage sends the shards it failed to a fresh pool (flows.snapshot_stage.results_in_order),
  marks the dead worker's task runs CRASHED, and ends with the same warehouse.
- The MLflow tracking server stopped in the middle of pretraining and started again on the same
  port and store: the stage goes on (flows.tracking keeps the metrics it could not send and sends
  them when the server answers again), finishes, and the store holds every step's metrics, equal
  to those of an undisturbed run.
- The server down for longer than C2M_MLFLOW_OUTAGE_S: a clear error naming the server, the
  bound and where the unsent metrics wait; the re-run sends them, so no step's metric is lost.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
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


def curate(pages: Path, root: Path, kind: str):
    """The curate stage of the pages into `root` (runner.kind `kind`, 2 workers, 2 pages a shard)."""
    from flows.curate import run_curate

    with pytest.MonkeyPatch.context() as env:
        env.setenv("C2M_HOME", str(root))
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        cfg = load_config(overrides=["curate.workers=2", "curate.ingest.html_batch_size=2", f"runner.kind={kind}"],
                          data_root=root)
        started = time.perf_counter()
        summary = run_curate([str(pages)], cfg, show_progress=False)
        return summary, time.perf_counter() - started


@pytest.fixture(scope="module")
def undisturbed(prefect_server, tmp_path_factory):
    """12 real articles (6 shards) curated by the default process pool with nothing disturbed
    (tests/test_dask_runner.py shows the Dask runner gives the same warehouse)."""
    pages = tmp_path_factory.mktemp("pages")
    for page in sorted(shared("html", "articles").glob("*.html.gz"))[:12]:
        shutil.copy(page, pages / page.name)
    root = tmp_path_factory.mktemp("undisturbed")
    summary, seconds = curate(pages, root, "process")
    return pages, root, summary, seconds


def shards_done(root: Path) -> int:
    shards = root / "parquet" / "shards"
    return sum(1 for p in shards.iterdir() if ".tmp-" not in p.name) if shards.is_dir() else 0


def kill_during(root: Path, find_worker, killed: list[dict]) -> threading.Thread:
    """A thread that SIGKILLs the worker process `find_worker()` returns as soon as one shard is done
    (and others remain: it records how many were done)."""
    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = shards_done(root)
            worker = find_worker() if done >= 1 else None
            if worker is not None:
                killed.append({"pid": worker.pid, "shards_done": done})
                worker.send_signal(signal.SIGKILL)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def busy_dask_worker() -> psutil.Process | None:
    """The process of a Dask worker that is running a shard task now, found through the
    LocalCluster's scheduler (it lives in this process)."""
    from distributed.scheduler import Scheduler

    for scheduler in list(Scheduler._instances):
        if scheduler.status.name != "running":
            continue
        for ws in list(scheduler.workers.values()):
            if ws.processing and ws.pid:
                return psutil.Process(ws.pid)
    return None


def process_pool_worker(existing: set[int]):
    """A finder for a worker process of Prefect's ProcessPoolTaskRunner (spawned children of this
    process that were not there before the stage)."""
    def find() -> psutil.Process | None:
        for child in psutil.Process().children():
            try:
                if child.pid not in existing and "spawn_main" in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        return None
    return find


def assert_same_warehouse(root: Path, summary, undisturbed) -> None:
    _, clean_root, clean, _ = undisturbed
    assert summary.shards_processed == summary.shards == clean.shards == 6
    assert summary.snapshot == clean.snapshot and summary.documents == clean.documents > 0
    clean_rows, rows = warehouse_rows(clean_root), warehouse_rows(root)
    assert set(rows) == set(clean_rows) >= {"documents", "rejections", "shard_stats", "shards", "snapshots"}
    for table in clean_rows:
        assert len(rows[table]) == len(clean_rows[table]), table
        assert rows[table] == clean_rows[table], table


def shard_task_runs(summary) -> list[tuple[str, str]]:
    """(name, state) of the stage's shard task runs in Prefect (the name holds the shard's label)."""
    flow_run_id = MlflowClient().get_run(summary.mlflow_run_id).data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [(r.name, r.state_type.value) for r in task_runs if r.task_key.startswith("process_shard-")]


def shard_task_states(summary) -> list[str]:
    return sorted(state for _, state in shard_task_runs(summary))


def test_dask_worker_killed_mid_curation_gives_the_same_warehouse(undisturbed, tmp_path, monkeypatch):
    pages, *_ = undisturbed
    root = tmp_path / "dask"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")  # for shard_task_states
    killed: list[dict] = []
    watcher = kill_during(root, busy_dask_worker, killed)
    summary, seconds = curate(pages, root, "dask")
    watcher.join(timeout=5)
    print(f"\nundisturbed {undisturbed[3]:.1f} s, Dask with a worker killed {seconds:.1f} s: {killed}")
    assert killed, "no worker was busy with a shard after the first one finished: nothing was killed"
    assert killed[0]["shards_done"] < summary.shards, "the kill came after all the work"
    assert_same_warehouse(root, summary, undisturbed)
    # Prefect saw every shard task end COMPLETED, one per shard: the dead worker's tasks were
    # neither lost nor doubled (Dask's scheduler reran them on a live worker)
    assert shard_task_states(summary) == ["COMPLETED"] * summary.shards


def test_process_pool_worker_killed_mid_curation_gives_the_same_warehouse(undisturbed, tmp_path, monkeypatch):
    """The default runner: a dead worker breaks Prefect's whole process pool; the stage submits the
    shards it failed to a fresh pool (flows.snapshot_stage.results_in_order) and completes."""
    pages, *_ = undisturbed
    root = tmp_path / "process"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    killed: list[dict] = []
    existing = {p.pid for p in psutil.Process().children(recursive=True)}
    watcher = kill_during(root, process_pool_worker(existing), killed)
    summary, seconds = curate(pages, root, "process")
    watcher.join(timeout=5)
    print(f"\nundisturbed {undisturbed[3]:.1f} s, process pool with a worker killed {seconds:.1f} s: {killed}")
    assert killed, "no pool worker was found after the first shard finished: nothing was killed"
    assert killed[0]["shards_done"] < summary.shards, "the kill came after all the work"
    assert_same_warehouse(root, summary, undisturbed)
    # every shard has a COMPLETED task run and none is left RUNNING: the dead worker's runs are
    # CRASHED. A shard can have two COMPLETED runs: one that finished in a worker whose result was
    # still in the pipe when the pool broke is submitted again (its rows are replaced, not doubled:
    # the tables above equal the undisturbed run's).
    runs = shard_task_runs(summary)
    print("shard task runs:", sorted(state for _, state in runs))
    completed = {name for name, state in runs if state == "COMPLETED"}
    assert completed == {name for name, _ in runs} and len(completed) == summary.shards
    assert {state for _, state in runs} <= {"COMPLETED", "CRASHED"}


# --- the MLflow server stopped in the middle of a stage ------------------------------------------

STEPS = 20
TIMING = {"train/tokens_per_s", "train/mfu", "train/seconds"}  # differ between any two runs


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    """A token shard set of real text (the near-duplicate corpus) under a 300-id BPE tokenizer."""
    import numpy as np

    from model.tokenizer import save_tokenizer
    from tasks.bpe import train_tokenizer
    from tasks.token_shards import write_manifest, write_shard
    from tests.test_dedup_flow import neardup_docs
    from warehouse.files import file_sha256

    out = tmp_path_factory.mktemp("shards")
    texts = [d["text"] for d in neardup_docs()]
    tokenizer = train_tokenizer([texts], vocab_size=300)
    folder = save_tokenizer(tokenizer, out / "tokenizer")
    ids = lambda docs: np.concatenate([tokenizer.encode(t).ids for t in docs])  # noqa: E731
    train, val = write_shard(out / "train-00000.bin", ids(texts[8:]), 300), write_shard(out / "val-00000.bin", ids(texts[:8]), 300)
    return write_manifest(out, {"vocab_size": 300, "tokenizer": str(folder / "tokenizer.json"),
                                "tokenizer_sha256": file_sha256(folder / "tokenizer.json"),
                                "splits": {"train": [train], "val": [val]}})


class MlflowServer:
    """`mlflow server` on 127.0.0.1 over a store folder, as flows/servers.py starts it (one worker,
    no job execution); stop() and start() again on the same port and store."""

    def __init__(self, root: Path):
        from flows.servers import port_free

        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        assert port_free(self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        from flows.servers import _commands, _server_env, _wait_healthy

        (self.root / "mlartifacts").mkdir(parents=True, exist_ok=True)
        log = self.root / "mlflow-server.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(_commands(self.root, 0, self.port)["mlflow"], cwd=self.root,
                                         env=_server_env(self.root, "http://127.0.0.1:9/api", "mlflow"),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        _wait_healthy({"mlflow": self.proc}, {"mlflow": self.url + "/health"}, {"mlflow": log}, timeout)

    def stop(self) -> None:
        from flows.servers import _stop, port_open

        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
        assert not port_open(self.port)


def pretrain_config(root: Path):
    return load_config(overrides=["pretrain.preset=tiny", f"pretrain.max_steps={STEPS}", "pretrain.micro_batch=4",
                                  "pretrain.tokens_per_step=512", "pretrain.eval_every=10", "pretrain.eval_batches=2",
                                  "pretrain.checkpoint_every=10", "pretrain.warmup_steps=2", "pretrain.device=cpu",
                                  "pretrain.sample_prompts=[The ]"], data_root=root)


def metric_history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-store"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_mlflow_server_stopped_mid_stage_loses_no_metric(prefect_server, mlflow_server, tiny_shards, tmp_path,
                                                         monkeypatch):
    from flows.pretrain import run_pretrain

    server = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    client = MlflowClient(server.url)
    started = time.perf_counter()
    clean = run_pretrain(pretrain_config(tmp_path / "clean"), tiny_shards)
    clean_s = time.perf_counter() - started
    experiment = client.get_run(clean.mlflow_run_id).info.experiment_id

    outage: dict = {}

    def stop_and_restart() -> None:
        """Stop the server once the disturbed run has logged a few steps; 3 s later start it again."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'")
            logged = [m.step for r in runs for m in client.get_metric_history(r.info.run_id, "train/loss")]
            if logged and max(logged) >= 3:
                outage.update(run_id=runs[0].info.run_id, after_step=max(logged), at=time.perf_counter())
                server.stop()
                outage["stopped_s"] = time.perf_counter() - outage["at"]
                time.sleep(3)
                server.start()
                outage["back"] = time.perf_counter()
                return
            time.sleep(0.1)

    chaos = threading.Thread(target=stop_and_restart, daemon=True)
    chaos.start()
    started = time.perf_counter()
    disturbed = run_pretrain(pretrain_config(tmp_path / "disturbed"), tiny_shards)
    ended = time.perf_counter()
    chaos.join(timeout=120)
    assert outage.get("back"), "the server was not stopped and started again during the stage"
    print(f"\nundisturbed {clean_s:.1f} s, disturbed {ended - started:.1f} s: server stopped after step "
          f"{outage['after_step']} (stopping took {outage['stopped_s']:.1f} s), answering again "
          f"{outage['back'] - outage['at']:.1f} s later; the stage ended {ended - outage['back']:.1f} s after that")
    assert outage["after_step"] < STEPS and outage["run_id"] == disturbed.mlflow_run_id
    assert ended > outage["back"], "the stage ended before the server was back: it did not log through the outage"

    # the stage finished every step, and the store holds every step's metrics as in the undisturbed run
    assert not disturbed.no_op and disturbed.metrics["step"] == STEPS
    assert client.get_run(disturbed.mlflow_run_id).info.status == "FINISHED"
    got, expected = metric_history(client, disturbed.mlflow_run_id), metric_history(client, clean.mlflow_run_id)
    assert [s for s, _ in got["train/loss"]] == list(range(1, STEPS + 1))
    assert set(got) == set(expected)
    for key in expected:
        assert [s for s, _ in got[key]] == [s for s, _ in expected[key]], key
        if key not in TIMING and not key.endswith("seconds"):
            assert [v for _, v in got[key]] == pytest.approx([v for _, v in expected[key]]), key
    assert got["train/loss"][-1][1] == disturbed.metrics["train/loss"]
    artifacts = {a.path for a in client.list_artifacts(disturbed.mlflow_run_id, "pretrain")}
    assert "pretrain/loss_curve.png" in artifacts


def test_mlflow_server_down_too_long_fails_clearly_and_the_rerun_sends_every_metric(mlflow_server, tmp_path,
                                                                                     monkeypatch):
    """Past C2M_MLFLOW_OUTAGE_S the run ends with a clear error; nothing it logged is lost: the
    unsent metrics wait on disk and the next Tracking over the data root (a re-run) sends them."""
    from flows.tracking import OUTAGE_ENV, Tracking, TrackingUnavailable

    server = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv(OUTAGE_ENV, "3")
    root = tmp_path / "c2m-data"
    tracking = Tracking(root, "faults")
    steps = range(1, 13)
    with pytest.raises(TrackingUnavailable) as failure:
        with tracking.run("stage") as run_id:
            for step in steps:
                if step == 5:
                    server.stop()
                started = time.perf_counter()
                tracking.log_metrics(run_id, {"train/loss": 10.0 - step / 2, "train/lr": 0.01}, step=step)
                assert time.perf_counter() - started < 5, "logging a metric blocked the stage while the server is down"
    message = str(failure.value)
    assert server.url in message and OUTAGE_ENV in message and "steps 5..12" in message
    assert "re-run" in message and str(root / "mlflow-pending") in message
    spooled = list((root / "mlflow-pending").glob("*.jsonl"))
    assert [p.stem for p in spooled] == [run_id] and len(spooled[0].read_text().splitlines()) == 2 * 8

    server.start()
    client = MlflowClient(server.url)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]
    Tracking(root, "faults")  # the re-run's first step: what waited on disk is sent
    assert not spooled[0].exists()
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    assert history == [(step, 10.0 - step / 2) for step in steps]
    assert [m.step for m in client.get_metric_history(run_id, "train/lr")] == list(steps)

