"""The curate flow end to end: real Prefect flow runs, a real DuckDB file, a real MLflow store.

Covers: every bad input ends as a rejection row with its reason and the run goes on; counts
reconcile per stage and chain from stage to stage; a re-run is a no-op; a SIGKILL mid-run then a
re-run gives exactly the tables of an undisturbed run; the MLflow run holds the metrics and
artifacts; a URL list is crawled from 127.0.0.1 with robots.txt honoured.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest
from mlflow import MlflowClient

from flows.pipeline import run_pipeline
from tests.conftest import query, shared

pytestmark = pytest.mark.slow

CHAIN = ["ingest", "url_filter", "extract", "language", "quality", "store"]


def tables(root: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        return {
            "documents": con.execute("select doc_id, url, source, title, text, lang, snapshot from documents order by doc_id").fetchall(),
            "rejections": con.execute("select coalesce(doc_id,''), coalesce(url,''), source, stage, reason, detail, quarantined, snapshot "
                                      "from rejections order by all").fetchall(),
            "stage_stats": con.execute("select snapshot, stage, docs_in, docs_out, docs_dropped, docs_quarantined, bytes "
                                       "from stage_stats order by all").fetchall(),
        }
    finally:
        con.close()


@pytest.fixture
def bad_inputs():
    return [str(shared("warc")), str(shared("html", "bad"))]


def test_every_bad_input_is_explained_and_counts_reconcile(prefect_server, cfg, bad_inputs):
    result = run_pipeline(bad_inputs, cfg, until="curate", show_progress=False)
    root = cfg.data_root
    summary = result.curate
    assert summary.documents > 0 and summary.shards_processed == summary.shards

    assert query(root, "select count(*) - count(distinct doc_id) from documents")[0][0] == 0
    reasons = {(stage, reason) for stage, reason in query(root, "select distinct stage, reason from rejections")}
    for expected in [("ingest", "truncated"), ("ingest", "malformed-record"), ("ingest", "unsupported-format"),
                     ("extract", "not-html"), ("extract", "empty"), ("extract", "too-large"),
                     ("language", "wrong-language")]:
        assert expected in reasons, expected
    spam = query(root, "select stage from rejections where source like '%repetitive-spam%'")
    assert spam == [("quality",)]
    # readable pages pass extraction and language ID; these short test pages then fail a quality rule
    for good in ["latin1-no-charset", "utf16-bom", "unclosed-tags"]:
        assert query(root, "select stage from rejections where source like ?", [f"%{good}%"]) == [("quality",)]

    funnel = {r["stage"]: r for r in summary.funnel}
    for row in funnel.values():
        assert row["docs_in"] == row["docs_out"] + row["docs_dropped"] + row["docs_quarantined"]
    for before, after in zip(CHAIN, CHAIN[1:]):
        assert funnel[before]["docs_out"] == funnel[after]["docs_in"], (before, after)
    assert funnel["store"]["docs_out"] == summary.documents
    # every record a stage did not pass on has its row in rejections
    per_stage = dict(query(root, "select stage, count(*) from rejections group by stage"))
    for stage, row in funnel.items():
        assert per_stage.get(stage, 0) == row["docs_dropped"] + row["docs_quarantined"], stage

    # the MLflow run: nested under the pipeline run, tagged with the Prefect flow run, metrics + artifacts
    client = MlflowClient()
    curate_run = client.get_run(summary.mlflow_run_id)
    parent = client.get_run(result.mlflow_run_id)
    assert curate_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.tags["prefect.flow_run_id"] == result.prefect_flow_run_id
    metrics = curate_run.data.metrics
    assert metrics["curate/store/docs_out"] == summary.documents
    assert metrics["curate/ingest/docs_in"] == funnel["ingest"]["docs_in"]
    assert metrics["curate/dropped/language/wrong-language"] >= 1
    assert metrics["curate/docs_per_s"] > 0
    assert curate_run.data.params["curate.language.min_score"] == "0.65"
    artifacts = {a.path for folder in ("funnel", "samples") for a in client.list_artifacts(curate_run.info.run_id, folder)}
    assert {"funnel/funnel.png", "funnel/funnel.json", "samples/kept.jsonl", "samples/rejected.jsonl"} <= artifacts

    before = tables(root)
    again = run_pipeline(bad_inputs, cfg, until="curate", show_progress=False).curate
    assert again.no_op and again.snapshot == summary.snapshot
    assert tables(root) == before


def test_german_passes_language_id_only_when_configured(prefect_server, data_root):
    from crawl2model.config import load_config

    page = [str(shared("html", "bad", "german.html"))]
    for languages, passed in (("[en]", 0), ("[en, de]", 1)):
        cfg = load_config(overrides=[f"curate.language.languages={languages}", "curate.workers=1"],
                          data_root=data_root / languages)
        summary = run_pipeline(page, cfg, until="curate", show_progress=False).curate
        language = next(r for r in summary.funnel if r["stage"] == "language")
        assert (language["docs_in"], language["docs_out"]) == (1, passed)


def _curate_cmd(inputs: list[str]) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "curate", *inputs, "curate.workers=2", "curate.ingest.html_batch_size=4"]


def test_sigkill_then_rerun_gives_the_same_tables(prefect_server, tmp_path):
    pages = tmp_path / "pages"  # 60 real articles: 15 shards of 4 files
    pages.mkdir()
    for page in sorted(shared("html", "articles").glob("*.html.gz")):
        shutil.copy(page, pages / page.name)
    inputs = [str(pages), str(shared("warc"))]
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    repo = Path(__file__).resolve().parents[1]

    clean = tmp_path / "clean"
    subprocess.run(_curate_cmd(inputs), env=dict(env, C2M_HOME=str(clean), MLFLOW_TRACKING_URI=f"sqlite:///{clean}/mlflow.db"),
                   cwd=repo, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    kenv = dict(env, C2M_HOME=str(killed), MLFLOW_TRACKING_URI=f"sqlite:///{killed}/mlflow.db")
    proc = subprocess.Popen(_curate_cmd(inputs), env=kenv, cwd=repo, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = killed / "parquet" / "shards"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and sum(1 for p in shards.iterdir() if ".tmp-" not in p.name) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sum(1 for p in shards.iterdir() if ".tmp-" not in p.name)
    assert done < 15 + 5, "the kill came after all the work"

    rerun = subprocess.run(_curate_cmd(inputs), env=kenv, cwd=repo, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert tables(killed) == tables(clean)


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_url_list_is_crawled_politely_and_curated(prefect_server, cfg, tmp_path):
    site = tmp_path / "site"
    (site / "private").mkdir(parents=True)
    (site / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    articles = shared("html", "articles")
    for name, key in (("a.html", "432362af0be43f6da757ea778bd7f2f000094a565bdebac5af7442987a5372f3"),
                      ("b.html", "1ace8c85aaee21b9d4505eca506d50c4721c29db62848b567a9703bfe0583892"),
                      ("private/secret.html", "34a7328535ad4e60b059f81d37eec5d25c2bc8de759ce9a7b5e47ac7dc6fd1b0")):
        (site / name).write_bytes(gzip.decompress((articles / f"{key}.html.gz").read_bytes()))
    shutil.copy(shared("html", "bad", "german.html"), site / "german.html")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text("\n".join(base + p for p in ["a.html", "b.html", "german.html",
                                                    "private/secret.html", "missing.html"]) + "\n")
        cfg.curate.crawl.delay_seconds = 0.0
        cfg.curate.crawl.allow = [f"127.0.0.1:{server.server_address[1]}"]  # loopback is refused otherwise
        summary = run_pipeline([str(urls)], cfg, until="curate", show_progress=False).curate
    finally:
        server.shutdown()
        server.server_close()
    root = cfg.data_root
    assert sorted(u for (u,) in query(root, "select url from documents")) == [base + "a.html", base + "b.html"]
    assert query(root, "select stage, reason from rejections where url = ?", [base + "german.html"]) == \
        [("language", "wrong-language")]
    crawl = dict(query(root, "select reason, url from rejections where stage = 'crawl'"))
    assert crawl == {"robots-disallowed": base + "private/secret.html", "http-404": base + "missing.html"}
    funnel = {r["stage"]: r for r in summary.funnel}
    assert (funnel["crawl"]["docs_in"], funnel["crawl"]["docs_out"]) == (5, 3)
    assert funnel["ingest"]["docs_in"] == 3
    assert list((root / "crawl").glob("*/crawl-*.warc.gz")), "the crawl is kept as WARC in the data root"
