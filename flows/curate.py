"""The curation flow: inputs -> shards curated in parallel processes -> the DuckDB warehouse.

    crawl2model curate crawl/*.warc.gz pages/ urls.txt      # from the command line
    from flows.curate import curate_flow                    # or from Python (environment prepared)
    summary = curate_flow(["crawl.warc.gz"], cfg, parent_run_id=None)

Steps: URL lists are crawled into WARC files first (cached per list); files are grouped into
shards keyed on their bytes and the curation config; the snapshot id hashes those keys, so the
same inputs and config give the same snapshot and a re-run finds every shard already loaded
(a no-op). Shards run in worker processes (Prefect's ProcessPoolTaskRunner, or prefect-dask's
DaskTaskRunner with `runner.kind=dask`) and are loaded into DuckDB by this process in plan
order, one transaction each, so a run killed at any point resumes where it stopped with nothing
doubled or lost. The funnel goes to a Prefect table artifact and, with metrics and samples, to
an MLflow run named `curate`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.context import get_run_context

from crawl2model.config import Config, stable_hash
from crawl2model.layout import DataRoot
from flows.progress import progress_bar
from flows.report import funnel_chart, funnel_markdown
from flows.snapshot_stage import data_stage_runner, results_in_order
from flows.tracking import Tracking, flatten
from tasks.crawl import CrawlResult, crawl_url_list
from tasks.curate_shard import process_shard
from tasks.ingest import Shard, plan_shards, resolve_inputs
from warehouse import Warehouse
from warehouse.schema import CURATE_STAGES
from warehouse.shard_files import shard_is_complete, sweep_partial, write_shard


@dataclass
class CurateSummary:
    snapshot: str
    shards: int
    shards_processed: int
    documents: int
    rejections: int
    text_chars: int
    seconds: float
    mlflow_run_id: str | None = None
    funnel: list[dict] = field(default_factory=list)

    @property
    def no_op(self) -> bool:
        return self.shards_processed == 0


def _crawl_shard(label: str, urls: list[str], salt: str) -> Shard:
    """Crawl failures become a shard of their own: rejections plus the `crawl` stage counts."""
    key = "crawl-" + hashlib.sha256(f"{salt}|{json.dumps(urls)}".encode()).hexdigest()[:18]
    return Shard(key, "crawl", (), label)


def _write_crawl_shard(root: Path, key: str, result: CrawlResult) -> None:
    quarantined = sum(f.quarantined for f in result.failures)
    rejections = [
        {"doc_id": None, "url": f.url, "source": f.source, "stage": "crawl", "reason": f.reason, "detail": f.detail,
         "quarantined": f.quarantined, "snapshot": "", "shard": key}
        for f in result.failures
    ]
    stats = [{"snapshot": "", "shard": key, "stage": "crawl", "stage_order": CURATE_STAGES.index("crawl"),
              "docs_in": result.urls, "docs_out": result.fetched, "docs_dropped": len(result.failures) - quarantined,
              "docs_quarantined": quarantined, "bytes": sum(p.stat().st_size for p in result.warc_paths),
              "seconds": result.seconds}]
    write_shard(root, key, [], rejections, stats)


def curate_metrics(funnel: list[dict], reasons: list[dict], summary: CurateSummary, bytes_in: int) -> dict[str, float]:
    metrics: dict[str, float] = {
        "curate/documents": summary.documents,
        "curate/rejections": summary.rejections,
        "curate/text_mb": summary.text_chars / 1e6,
        "curate/shards": summary.shards,
        "curate/shards_processed": summary.shards_processed,
        "curate/seconds": summary.seconds,
        "curate/bytes_in": bytes_in,
    }
    ingest = next((row for row in funnel if row["stage"] == "ingest"), None)
    if ingest and summary.shards_processed:
        metrics["curate/docs_per_s"] = ingest["docs_in"] / max(summary.seconds, 1e-9)
    for row in funnel:
        for col in ("docs_in", "docs_out", "docs_dropped", "docs_quarantined"):
            metrics[f"curate/{row['stage']}/{col}"] = row[col]
    for row in reasons:
        metrics[f"curate/dropped/{row['stage']}/{row['reason']}"] = row["n"]
    return metrics


@flow(name="curate", log_prints=False)
def curate_flow(inputs: list[str], cfg: Config, parent_run_id: str | None = None,
                show_progress: bool = True) -> CurateSummary:
    logger = get_run_logger()
    root = cfg.data_root
    started = time.perf_counter()
    resolved = resolve_inputs(inputs)  # raises InputError before any work
    salt = cfg.curate.fingerprint()

    files = list(resolved.files)
    crawl_shards: list[tuple[Shard, CrawlResult]] = []
    for label, urls in resolved.url_lists:
        result = crawl_url_list(label, urls, DataRoot(root).crawl_cache, cfg.curate.crawl)
        files.extend(result.warc_paths)
        crawl_shards.append((_crawl_shard(label, urls, salt), result))
    shards = plan_shards(files, cfg.curate.ingest.html_batch_size, salt)
    snapshot = "snap-" + stable_hash(sorted(s.key for s in shards) + sorted(s.key for s, _ in crawl_shards))[:12]

    tracking = Tracking(root, cfg.experiment)
    flow_run_id = str(get_run_context().flow_run.id)
    failed: list[str] = []
    with tracking.run("curate", parent_run_id, tags={"prefect.flow_run_id": flow_run_id, "snapshot": snapshot,
                                                     "stage": "curate"}) as run_id:
        tracking.log_params(run_id, flatten(cfg.curate.model_dump(mode="json"), "curate."))
        tracking.log_params(run_id, {"inputs": inputs, "config_hash": salt, "snapshot": snapshot})
        with Warehouse.open(root) as wh:
            wh.begin_snapshot(snapshot, salt, [str(i) for i in inputs])
            loaded = wh.loaded_shards()
            sweep_partial(root)
            for shard, result in crawl_shards:
                if shard.key not in loaded or not shard_is_complete(root, shard.key):
                    _write_crawl_shard(root, shard.key, result)
                    wh.load_shard(shard.key, snapshot, shard.kind, shard.label)  # a no-op when loaded
            # A loaded shard whose Parquet folder is gone (removed as `warehouse verify` advises when it
            # is damaged) is curated again for its files only: its rows are in DuckDB already.
            for future in [process_shard.submit(s, cfg.curate, snapshot, root) for s in shards
                           if s.key in loaded and not shard_is_complete(root, s.key)]:
                future.result()
            todo = [s for s in shards if s.key not in loaded]
            logger.info("snapshot %s: %d shards, %d to do", snapshot, len(shards), len(todo))
            # shards of a worker that died go to a fresh pool (results_in_order); Prefect retries the rest
            calls = [{"shard": s, "cfg": cfg.curate, "snapshot": snapshot, "root": root} for s in todo]
            with progress_bar("curate", total=len(todo), enabled=show_progress and bool(todo)) as advance:
                for call, error, _ in results_in_order(process_shard, calls):  # plan order: same tables every run
                    shard = call["shard"]
                    if error is not None:  # the rest goes on; a re-run retries this shard
                        logger.error("shard %s (%s) failed: %s", shard.key, shard.label, error)
                        failed.append(f"{shard.label}: {error}")
                        advance()
                        continue
                    wh.load_shard(shard.key, snapshot, shard.kind, shard.label)
                    advance()
            counts = wh.counts(snapshot)
            if not failed:
                wh.finish_snapshot(snapshot, counts)
            funnel = wh.funnel(snapshot)
            reasons = wh.rejection_counts(snapshot)
            kept_sample = wh.sample(20, snapshot)
            rejected_sample = wh.rejections(snapshot, limit=200)
        summary = CurateSummary(snapshot, len(shards) + len(crawl_shards), len(todo), counts["documents"],
                                counts["rejections"], counts["text_chars"], time.perf_counter() - started,
                                run_id, funnel)
        _report(tracking, run_id, summary, funnel, reasons, kept_sample, rejected_sample,
                sum(s.bytes for s in todo))
        if failed:  # raised inside the run: it ends FAILED
            raise RuntimeError(f"{len(failed)} shard(s) failed (the others are stored; re-run to retry): "
                               + "; ".join(failed[:5]))
    return summary


def _report(tracking: Tracking, run_id: str, summary: CurateSummary, funnel: list[dict], reasons: list[dict],
            kept: list[dict], rejected: list[dict], bytes_in: int) -> None:
    tracking.log_metrics(run_id, curate_metrics(funnel, reasons, summary, bytes_in))
    table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()} for row in funnel]
    create_table_artifact(table=table, key="curate-funnel",
                          description=f"Curation funnel of snapshot {summary.snapshot}\n\n" + funnel_markdown(funnel))
    tracking.log_text(run_id, json.dumps(table, indent=1), "funnel/funnel.json")
    tracking.log_text(run_id, funnel_markdown(funnel, reasons), "funnel/funnel.md")
    tracking.log_figure(run_id, funnel_chart(funnel, title=f"curation funnel, {summary.snapshot}"), "funnel/funnel.png")
    tracking.log_text(run_id, "\n".join(json.dumps(r, default=str) for r in kept), "samples/kept.jsonl")
    tracking.log_text(run_id, "\n".join(json.dumps(r, default=str) for r in rejected), "samples/rejected.jsonl")


def run_curate(inputs: list[str], cfg: Config, parent_run_id: str | None = None,
               show_progress: bool = True) -> CurateSummary:
    """The curate flow with `curate.workers` worker processes (0 = one per core; `runner.kind`)."""
    runner = data_stage_runner(cfg, cfg.curate.workers)
    return curate_flow.with_options(task_runner=runner)(inputs, cfg, parent_run_id, show_progress)
