"""The data stages on Dask (`runner.kind=dask`, prefect-dask's DaskTaskRunner on a LocalCluster)
decide exactly what the default process pool decides.

curate + dedup + pii of the same real pages (near-duplicate articles, their exact copies, pages
with labelled PII) run twice into two data roots, once per runner kind; the warehouses hold the
same documents, rejections by stage and reason, duplicates, funnel and PII counts, and the Dask
run's shard tasks are Prefect task runs that ended COMPLETED.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client

from crawl2model.config import load_config
from flows.pipeline import run_pipeline
from flows.snapshot_stage import data_stage_runner
from tests.conftest import query, shared
from tests.test_dedup_flow import neardup_docs, pii_pages, write_pages

pytestmark = pytest.mark.slow

PII = "sum(pii_email), sum(pii_ip), sum(pii_phone), sum(pii_card), sum(pii_iban)"
SAME = {
    "documents": "select count(*) from documents",
    "kept": "select count(*) from kept_documents",
    "rejections": "select stage, reason, count(*) from rejections group by all order by all",
    "duplicates": "select count(*) from documents where duplicate_of is not null",
    "decisions": "select doc_id, duplicate_of from documents order by all",
    "funnel": "select snapshot, stage, docs_in, docs_out, docs_dropped, docs_quarantined from stage_stats order by all",
    "pii_documents": f"select {PII} from kept_documents",
    "pii_stats": f"select {PII} from stage_stats where stage = 'pii'",
}


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    """44 pages: 5 articles with 5 near-duplicate versions each, 5 more with an exact copy each
    (punctuation and spacing changed), 4 with labelled PII records inserted."""
    docs = neardup_docs()
    originals = [d for d in docs if "-v" not in d["id"]]
    texts = {f"nd-{d['id']}": d["text"] for d in docs if d["id"].split("-")[0] in {o["id"] for o in originals[:5]}}
    for d in originals[5:10]:
        texts[f"or-{d['id']}"] = d["text"]
        texts[f"ex-{d['id']}"] = d["text"].replace(". ", "! ").replace(", ", " ,  ")
    with shared("pii", "presidio-synth.jsonl").open() as lines:
        records = [json.loads(line) for line in lines]
    pii_texts, _ = pii_pages(records, [d["text"] for d in originals[10:20]])
    texts |= dict(list(pii_texts.items())[:4])
    assert len(texts) == 44
    return write_pages(tmp_path_factory.mktemp("dask") / "pages", texts)


def config(root: Path, kind: str):
    return load_config(overrides=["curate.workers=2", "dedup.workers=2", "pii.workers=2",
                                  "curate.ingest.html_batch_size=8", f"runner.kind={kind}"], data_root=root)


def run(pages: Path, root: Path, kind: str, monkeypatch):
    monkeypatch.setenv("C2M_HOME", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    started = time.perf_counter()
    result = run_pipeline([str(pages)], config(root, kind), until="pii", show_progress=False)
    return result, time.perf_counter() - started


def test_runner_by_config():
    from prefect.task_runners import ProcessPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    process = data_stage_runner(load_config(overrides=["curate.workers=3"]), 3)
    assert isinstance(process, ProcessPoolTaskRunner) and process._max_workers == 3
    local = data_stage_runner(load_config(overrides=["runner.kind=dask"]), 2)
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                    "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    remote = data_stage_runner(load_config(overrides=["runner.kind=dask", "runner.dask_address=tcp://10.0.0.5:8786"]), 0)
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786" and not remote.cluster_kwargs


def test_dask_runner_gives_the_same_warehouse(pages, tmp_path, data_root, prefect_server, monkeypatch):
    process_root, dask_root = tmp_path / "process-data", data_root
    t0 = datetime.now(timezone.utc)
    process, process_s = run(pages, process_root, "process", monkeypatch)
    t1 = datetime.now(timezone.utc)
    dask, dask_s = run(pages, dask_root, "dask", monkeypatch)
    print(f"\ncurate+dedup+pii of {len(list(pages.iterdir()))} pages: process pool {process_s:.1f} s, "
          f"dask {dask_s:.1f} s")

    for name, sql in SAME.items():
        assert query(process_root, sql) == query(dask_root, sql), name
    assert dask.curate.snapshot == process.curate.snapshot
    assert dask.curate.shards_processed == dask.curate.shards >= 4 and dask.curate.documents > 30
    assert query(dask_root, SAME["duplicates"])[0][0] >= 5
    assert sum(query(dask_root, SAME["pii_documents"])[0]) > 0
    [dedup], [pii] = dask.dedup, dask.pii
    assert not dedup.no_op and not pii.no_op

    # the shard tasks ran on the Dask workers as Prefect task runs, as many as in the process pool,
    # and all completed (their results came back: the stages loaded them)
    with get_client(sync_client=True) as prefect:
        task_runs = [r for r in prefect.read_task_runs() if r.start_time and r.start_time >= t0]
    for key in ("process_shard-", "minhash_task-", "scrub_task-"):
        on_dask = [r.state_type.value for r in task_runs if r.task_key.startswith(key) and r.start_time >= t1]
        in_pool = [r.state_type.value for r in task_runs if r.task_key.startswith(key) and r.start_time < t1]
        assert on_dask == in_pool == ["COMPLETED"] * len(in_pool) and in_pool, key
    assert len([r for r in task_runs if r.task_key.startswith("process_shard-")]) == 2 * dask.curate.shards

    # the flows still log to MLflow: each stage's run under the pipeline's parent run
    client = MlflowClient(f"sqlite:///{dask_root / 'mlflow.db'}")
    for summary, stage in ((dask.curate, "curate"), (dedup, "dedup"), (pii, "pii")):
        mlflow_run = client.get_run(summary.mlflow_run_id)
        assert mlflow_run.info.run_name == stage and mlflow_run.info.status == "FINISHED"
        assert mlflow_run.data.tags["mlflow.parentRunId"] == dask.mlflow_run_id
        assert any(k.startswith(f"{stage}/") for k in mlflow_run.data.metrics), stage
    assert client.get_run(dask.curate.mlflow_run_id).data.metrics["curate/documents"] == dask.curate.documents
