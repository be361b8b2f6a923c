"""The dedup stage: exact and MinHash near-duplicate removal on a curated snapshot.

    crawl2model dedup                      # the newest snapshot; `--snapshot ID` for another
    crawl2model run --until dedup
    from flows.dedup import run_dedup      # environment prepared (crawl2model.runtime) first
    summary = run_dedup(cfg, snapshot=None, parent_run_id=None)

Signatures are made per shard in worker processes (tasks.snapshot_shards, cached per shard and
signature config), the rest runs here (tasks.dedup_snapshot). A re-run with the same config is
a no-op; with another config it replaces the snapshot's dedup. MLflow run `dedup`: pairs
considered, clusters, removed per reason, docs/s, the cluster-size histogram, the S-curve.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from crawl2model.config import Config, DedupConfig
from flows.report import cluster_size_chart
from flows.snapshot_stage import data_stage_runner, minhash_task, run_per_shard, stage_start
from flows.tracking import Tracking, flatten
from tasks.dedup import s_curve
from tasks.dedup_snapshot import deduplicate_snapshot
from tasks.snapshot_shards import signature_file
from warehouse import Warehouse
from warehouse.dedup_queries import scope_shards


@dataclass
class DedupSummary:
    snapshot: str
    no_op: bool
    result: dict  # tasks.dedup_snapshot.DedupResult as a dict
    mlflow_run_id: str | None = None


def s_curve_markdown(cfg: DedupConfig) -> str:
    points = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    lines = [f"LSH S-curve, {cfg.bands} bands x {cfg.rows} rows: probability that a pair with Jaccard s "
             "becomes a candidate, 1 - (1 - s^rows)^bands", "", "| Jaccard | candidate probability |", "|---:|---:|"]
    lines += [f"| {s:.2f} | {p:.3f} |" for s, p in s_curve(cfg.bands, cfg.rows, points)]
    return "\n".join(lines) + "\n"


def dedup_metrics(r: dict, docs_per_s: float) -> dict[str, float]:
    metrics = {f"dedup/{k}": v for k, v in r.items() if isinstance(v, (int, float))}
    metrics["dedup/pairs_considered"] = r["exact_pairs"] + r["candidate_pairs"]
    metrics["dedup/largest_cluster"] = max((int(k) for k in r["cluster_sizes"]), default=1)
    metrics["dedup/docs_per_s"] = docs_per_s
    metrics["dedup/removed/exact_duplicate"] = r["exact_duplicates"]
    metrics["dedup/removed/near_duplicate"] = r["near_duplicates"]
    return metrics


@flow(name="dedup", log_prints=False)
def dedup_flow(cfg: Config, snapshot: str | None = None, parent_run_id: str | None = None,
               show_progress: bool = True, force: bool = False) -> DedupSummary:
    logger = get_run_logger()
    root, config_hash = cfg.data_root, cfg.dedup.fingerprint()
    with Warehouse.open(root) as wh:
        snapshot, previous = stage_start(wh, snapshot, "dedup", config_hash, force)
        if previous:
            return DedupSummary(snapshot, True, previous["summary"])
        tracking = Tracking(root, cfg.experiment)
        with tracking.run("dedup", parent_run_id, tags={
                "prefect.flow_run_id": str(get_run_context().flow_run.id), "snapshot": snapshot, "stage": "dedup"}
                ) as run_id:
            tracking.log_params(run_id, {**flatten(cfg.dedup.model_dump(mode="json"), "dedup."),
                                         "snapshot": snapshot, "config_hash": config_hash})
            started = time.perf_counter()
            files, signing = run_per_shard(minhash_task, root, scope_shards(wh.con, snapshot), cfg.dedup,
                                           lambda shard: signature_file(root, shard, cfg.dedup), "dedup",
                                           show_progress)
            result = deduplicate_snapshot(wh, snapshot, cfg.dedup, files, signing).as_dict()
            seconds = time.perf_counter() - started
            logger.info("dedup of %s: %d documents in, %d exact and %d near duplicates removed, %d kept (%.1f s)",
                        snapshot, result["docs_in"], result["exact_duplicates"], result["near_duplicates"],
                        result["docs_out"], seconds)
            _report(tracking, run_id, cfg.dedup, result, result["docs_in"] / max(seconds, 1e-9),
                    wh.rejections(snapshot, stage="near_dedup", limit=50))
    return DedupSummary(snapshot, False, result, run_id)


def _report(tracking: Tracking, run_id: str, cfg: DedupConfig, result: dict, docs_per_s: float,
            near: list[dict]) -> None:
    tracking.log_metrics(run_id, dedup_metrics(result, docs_per_s))
    tracking.log_text(run_id, json.dumps(result, indent=1), "dedup/result.json")
    tracking.log_text(run_id, s_curve_markdown(cfg), "dedup/s_curve.md")
    tracking.log_text(run_id, "\n".join(json.dumps(r, default=str) for r in near), "dedup/near_duplicates.jsonl")
    tracking.log_figure(run_id, cluster_size_chart(result["cluster_sizes"], title=f"dedup clusters, {result['snapshot']}"),
                        "dedup/cluster_sizes.png")
    create_markdown_artifact(
        key="dedup", description=f"Dedup of {result['snapshot']}",
        markdown=(f"**{result['docs_in']}** documents in, **{result['exact_duplicates']}** exact and "
                  f"**{result['near_duplicates']}** near duplicates removed, **{result['docs_out']}** kept; "
                  f"{result['candidate_pairs']} LSH candidate pairs, {result['merged_pairs']} merged.\n\n"
                  + s_curve_markdown(cfg)))


def run_dedup(cfg: Config, snapshot: str | None = None, parent_run_id: str | None = None,
              show_progress: bool = True, force: bool = False) -> DedupSummary:
    """The dedup flow with `dedup.workers` worker processes (`runner.kind`) for the signatures."""
    return dedup_flow.with_options(task_runner=data_stage_runner(cfg, cfg.dedup.workers))(
        cfg, snapshot, parent_run_id, show_progress, force)
