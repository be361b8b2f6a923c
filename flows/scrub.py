"""The pii stage: scrub e-mail addresses, public IPs, phone numbers, card numbers and IBANs from a
curated snapshot's text (tasks.pii), with counts per type per document.

    crawl2model scrub                      # the newest snapshot; `--snapshot ID` for another
    crawl2model run --until pii            # a clean, deduplicated snapshot
    from flows.scrub import run_scrub      # environment prepared (crawl2model.runtime) first
    summary = run_scrub(cfg, snapshot=None, parent_run_id=None)

Shards are scrubbed in worker processes from their curated text (tasks.snapshot_shards) and
the results replace the documents' text in one transaction (warehouse.pii_queries). A re-run
with the same config is a no-op. MLflow run `pii`: `pii/<type>` counts, documents with PII,
docs/s, and examples of scrubbed passages (placeholders in context, never the values).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.context import get_run_context

from crawl2model.config import Config
from flows.snapshot_stage import data_stage_runner, run_per_shard, scrub_task, stage_start
from flows.tracking import Tracking, flatten
from tasks.snapshot_shards import scrub_file
from warehouse import Warehouse
from warehouse.pii_queries import apply_scrub
from warehouse.schema import PII_COLUMNS


@dataclass
class ScrubSummary:
    snapshot: str
    no_op: bool
    totals: dict  # pii_<type>: replacements in kept documents, docs (kept), docs_with_pii, docs_scrubbed, seconds
    mlflow_run_id: str | None = None


def examples(wh: Warehouse, snapshot: str, placeholders: list[str], limit: int = 50) -> list[dict]:
    """Scrubbed passages: ~80 characters around a placeholder, from documents that had PII."""
    pattern = "|".join(re.escape(p) for p in sorted(set(placeholders), key=len, reverse=True))
    found = []
    for doc in wh.documents_with_pii(snapshot, limit):
        match = re.search(pattern, doc["text"])
        if match:
            found.append({"doc_id": doc["doc_id"],
                          "passage": doc["text"][max(0, match.start() - 80):match.end() + 80]})
    return found


@flow(name="pii", log_prints=False)
def pii_flow(cfg: Config, snapshot: str | None = None, parent_run_id: str | None = None,
             show_progress: bool = True, force: bool = False) -> ScrubSummary:
    logger = get_run_logger()
    root, config_hash = cfg.data_root, cfg.pii.fingerprint()
    with Warehouse.open(root) as wh:
        snapshot, previous = stage_start(wh, snapshot, "pii", config_hash, force)
        if previous:
            return ScrubSummary(snapshot, True, previous["summary"])
        tracking = Tracking(root, cfg.experiment)
        with tracking.run("pii", parent_run_id, tags={
                "prefect.flow_run_id": str(get_run_context().flow_run.id), "snapshot": snapshot, "stage": "pii"}
                ) as run_id:
            tracking.log_params(run_id, {**flatten(cfg.pii.model_dump(mode="json"), "pii."),
                                         "snapshot": snapshot, "config_hash": config_hash})
            started = time.perf_counter()
            files, _ = run_per_shard(scrub_task, root, wh.snapshot_shards(snapshot), cfg.pii,
                                     lambda shard: scrub_file(root, shard, cfg.pii), "pii", show_progress)
            seconds = time.perf_counter() - started
            totals = apply_scrub(wh.con, snapshot, files, seconds, config_hash, {"seconds": seconds})
            logger.info("pii of %s: %d kept documents, %d with PII; %s", snapshot, totals["docs"],
                        totals["docs_with_pii"], ", ".join(f"{c.removeprefix('pii_')} {totals[c]}" for c in PII_COLUMNS))
            metrics = {f"pii/{c.removeprefix('pii_')}": totals[c] for c in PII_COLUMNS}
            metrics.update({f"pii/{k}": totals[k] for k in ("docs", "docs_with_pii", "docs_scrubbed")})
            metrics.update({"pii/seconds": seconds, "pii/docs_per_s": totals["docs_scrubbed"] / max(seconds, 1e-9)})
            tracking.log_metrics(run_id, metrics)
            placeholders = list(cfg.pii.scrubber().placeholders.values())
            tracking.log_text(run_id, "\n".join(json.dumps(e) for e in examples(wh, snapshot, placeholders)),
                              "pii/examples.jsonl")
    return ScrubSummary(snapshot, False, {**totals, "seconds": seconds}, run_id)


def run_scrub(cfg: Config, snapshot: str | None = None, parent_run_id: str | None = None,
              show_progress: bool = True, force: bool = False) -> ScrubSummary:
    """The pii flow with `pii.workers` worker processes (`runner.kind`)."""
    return pii_flow.with_options(task_runner=data_stage_runner(cfg, cfg.pii.workers))(
        cfg, snapshot, parent_run_id, show_progress, force)
