"""Deployments and servers against real processes on 127.0.0.1 (free ports): `start_servers`
(flows/servers.py) starts a real Prefect server and MLflow server and stops them without
leftovers; `prefect deploy` registers deploy/prefect.yaml's two deployments with their cron
schedules; a process worker started outside the repo runs `nightly-curate` on a drop folder of
three real article pages into the data root the servers serve, and the run shows up in both.
"""

from __future__ import annotations

import html
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from unittest import mock

import pytest

from flows.servers import ServerError, port_open, start_servers
from tests.conftest import query, shared

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OVERRIDES = ["curate.workers=1", "dedup.workers=1", "pii.workers=1"]



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, data: dict | None = None) -> dict:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read() or b"{}")


def processes_using(root: Path) -> list[str]:
    """Live processes whose command line or environment names `root` (Linux /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            blob = cmdline + (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if str(root).encode() in blob and state != "Z":
            found.append(f"{proc.name}: {cmdline.replace(bytes(1), b' ')[:200]!r}")
    return found


def write_pages(folder: Path, texts: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        body = "".join(f"<p>{html.escape(p)}</p>\n" for p in text.split("\n") if p.strip())
        (folder / f"{name}.html").write_text(
            f"<html><head><meta charset='utf-8'><title>{html.escape(name)}</title></head>"
            f"<body><article>\n{body}</article></body></html>", encoding="utf-8")
    return folder


def articles(n: int) -> dict[str, str]:
    with shared("neardup", "docs.jsonl").open() as lines:
        originals = [d for d in map(json.loads, lines) if "-v" not in d["id"]]
    return {f"article-{d['id']}": d["text"] for d in originals[30:30 + n]}


def cli(*args: str, env: dict, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "prefect"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_drop_inputs_takes_warc_html_and_html_folders(tmp_path):
    from flows.scheduled import drop_inputs

    drop = tmp_path / "drop"
    (drop / "pages" / "sub").mkdir(parents=True)
    (drop / "pages" / "sub" / "a.html").write_text("<p>x</p>")
    (drop / "empty-dir").mkdir()
    (drop / ".incoming.warc.gz").write_bytes(b"partial")
    (drop / ".hidden-dir").mkdir()
    (drop / ".hidden-dir" / "b.html").write_text("<p>x</p>")
    for name in ("c.warc.gz", "d.warc", "e.html", "f.html.gz", "notes.txt"):
        (drop / name).write_bytes(b"x")
    inputs, ignored = drop_inputs(drop)
    assert [Path(i).name for i in inputs] == ["c.warc.gz", "d.warc", "e.html", "f.html.gz", "pages"]
    assert ignored == ["empty-dir", "notes.txt"]
    (tmp_path / "empty-drop").mkdir()
    assert drop_inputs(tmp_path / "empty-drop") == ([], [])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        drop_inputs(tmp_path / "missing")


def test_start_servers_answer_then_stop_without_leftovers(tmp_path):
    root = tmp_path / "c2m-data"
    prefect_port, mlflow_port = free_port(), free_port()
    with start_servers(root, prefect_port, mlflow_port) as (prefect_url, mlflow_url):
        assert prefect_url == f"http://127.0.0.1:{prefect_port}" and mlflow_url == f"http://127.0.0.1:{mlflow_port}"
        assert urllib.request.urlopen(prefect_url + "/api/health", timeout=10).status == 200
        assert urllib.request.urlopen(mlflow_url + "/health", timeout=10).status == 200
        assert processes_using(root)  # the check below would see them
        with pytest.raises(ServerError, match=f"port {prefect_port}"):  # a port in use is refused up front
            with start_servers(tmp_path / "other", prefect_port, free_port()):
                pass
    assert not port_open(prefect_port) and not port_open(mlflow_port)
    assert processes_using(root) == []
    assert (root / "prefect" / "prefect.db").exists() and (root / "mlflow.db").exists()  # the embedded stores


def test_deployments_registered_and_nightly_curate_runs_on_a_worker(tmp_path):
    root = (tmp_path / "c2m-data").resolve()
    drop = write_pages(tmp_path / "drop" / "batch-1", articles(3)).parent
    (drop / "README.txt").write_text("not an input")
    prefect_port, mlflow_port = free_port(), free_port()
    started = time.monotonic()
    with start_servers(root, prefect_port, mlflow_port) as (prefect_url, mlflow_url):
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "C2M_HOME")}
        env.update(PREFECT_API_URL=prefect_url + "/api", C2M_DROP_FOLDER=str(drop), PREFECT_LOGGING_LEVEL="INFO")
        cli("work-pool", "create", "crawl2model", "--type", "process", env=env)
        cli("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml", env=env)

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter,
                                                    LogFilterFlowRunId)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: prefect_url + "/api"}), get_client(sync_client=True) as client:
            deployments = {d.name: d for d in client.read_deployments()}
            assert set(deployments) == {"nightly-curate", "weekly-train-and-promote"}
            crons = {name: [s.schedule.cron for s in d.schedules if s.active] for name, d in deployments.items()}
            assert crons == {"nightly-curate": ["0 2 * * *"], "weekly-train-and-promote": ["0 4 * * 0"]}
            nightly = deployments["nightly-curate"]
            assert nightly.entrypoint == "flows/scheduled.py:nightly_curate" and nightly.work_pool_name == "crawl2model"
            assert nightly.parameters["drop_folder"] == str(drop)  # {{ $C2M_DROP_FOLDER }} at deploy time
            assert nightly.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]

            run = client.create_flow_run_from_deployment(nightly.id, parameters={"data_root": str(root),
                                                                                 "overrides": OVERRIDES})
            # a worker started outside the repo: the pull step takes the flow run to the code
            worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "crawl2model", "--run-once",
                                     "--limit", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                    timeout=240)
            run = client.read_flow_run(run.id)
            logs = "\n".join(log.message for log in client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))))
            assert run.state.is_completed(), (f"flow run {run.state}\nlogs:\n{logs}\nworker:\n{worker.stdout[-4000:]}"
                                              f"\n{worker.stderr[-4000:]}")
            assert "ignoring 1 entries that are not WARC or HTML: README.txt" in logs
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
            assert [c.state.is_completed() for c in children] == [True]  # crawl2model-pipeline, a subflow

        urls = sorted(url for (url,) in query(root, "select url from documents"))
        assert [Path(urllib.parse.urlparse(u).path).name for u in urls] == sorted(f"{n}.html" for n in articles(3))
        assert query(root, "select count(*) from kept_documents")[0][0] == 3
        assert query(root, "select count(*) from stage_runs where stage in ('dedup', 'pii')")[0][0] == 2

        # what the weekly run would train on: the newest snapshot's inputs (the bundled sample when none)
        from crawl2model.config import load_config
        from flows.scheduled import newest_inputs

        assert newest_inputs(load_config(data_root=root)) == [str(drop / "batch-1")]
        assert newest_inputs(load_config(data_root=tmp_path / "empty-root")) is None
        (drop / "batch-1").rename(drop / "moved")
        with pytest.raises(FileNotFoundError, match="are gone"):
            newest_inputs(load_config(data_root=root))

        # the run is in the MLflow store the server reads
        experiment = get_json(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=crawl2model")
        runs = get_json(f"{mlflow_url}/api/2.0/mlflow/runs/search",
                        {"experiment_ids": [experiment["experiment"]["experiment_id"]]})["runs"]
        names = sorted(r["info"]["run_name"] for r in runs)
        assert names == ["curate", "dedup", "pii", "pipeline"]
        assert all(r["info"]["status"] == "FINISHED" for r in runs)

        # in this process, against the same server: an empty drop folder is a clean no-op
        from prefect.logging.handlers import APILogWorker

        from flows.scheduled import nightly_curate

        (tmp_path / "empty-drop").mkdir()
        # patch.dict: the defaults prepare_environment sets (C2M_HOME, ...) are undone afterwards
        with mock.patch.dict(os.environ), temporary_settings({PREFECT_API_URL: prefect_url + "/api"}):
            state = nightly_curate(str(tmp_path / "empty-drop"), str(tmp_path / "other-root"), return_state=True)
            assert state.is_completed() and state.result() is None
            assert not (tmp_path / "other-root" / "warehouse.duckdb").exists()
            for unset in ("", "{{ $C2M_DROP_FOLDER }}"):  # what `prefect deploy` leaves when the variable is unset
                with pytest.raises(ValueError, match="set C2M_DROP_FOLDER"):
                    nightly_curate(unset, str(tmp_path / "other-root"))
            APILogWorker.drain_all(timeout=5)  # before the server stops
    print(f"servers, deploy, worker run: {time.monotonic() - started:.0f}s")
