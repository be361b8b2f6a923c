"""What the snapshot stages (`dedup`, `pii`) share: the ledger check that makes a re-run with
the same config a no-op, and per-shard work (the Prefect tasks `minhash_task`, `scrub_task`
around tasks.snapshot_shards) in a process pool or on Dask (`runner.kind`).

    with Warehouse.open(root) as wh:
        snapshot, previous = stage_start(wh, snapshot, "dedup", config_hash, force)
        if previous: ...nothing new...
        paths, seconds = run_per_shard(minhash_task, root, shards, cfg.dedup, output_path, "dedup")
    runner = data_stage_runner(cfg, cfg.dedup.workers)    # for flow.with_options(task_runner=...)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from crawl2model.config import Config, DedupConfig, PiiConfig
from flows.progress import progress_bar
from tasks.snapshot_shards import scrub_shard, sign_shard
from warehouse import Warehouse


@task(name="minhash-shard", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def minhash_task(root: Path, shard: str, cfg: DedupConfig) -> Path:
    return sign_shard(root, shard, cfg)


@task(name="scrub-shard", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def scrub_task(root: Path, shard: str, cfg: PiiConfig) -> Path:
    return scrub_shard(root, shard, cfg)


def data_stage_runner(cfg: Config, workers: int) -> TaskRunner:
    """The task runner of a data stage (curate, dedup, pii), by `runner.kind`:

    process: Prefect's ProcessPoolTaskRunner of `workers` processes (0 = one per core);
    dask, no `runner.dask_address`: prefect-dask's DaskTaskRunner on a LocalCluster of `workers`
      worker processes with one thread each, on 127.0.0.1 (its HTTP/dashboard port is a free one);
    dask with an address: the DaskTaskRunner on that scheduler (tcp://host:8786).
    Workers start on the first submitted task, so a stage whose shard files all exist starts none.
    The local workers are spawned by this process and inherit its environment (PREFECT_API_URL,
    MLflow); remote ones need the same code, the data root at the same path and a reachable API."""
    n = workers or os.cpu_count() or 1
    if cfg.runner.kind != "dask":
        return ProcessPoolTaskRunner(max_workers=n)
    if "DASK_LOGGING__DISTRIBUTED" not in os.environ:  # distributed logs every start and stop at INFO
        os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning"  # read by the workers, which inherit it
        logging.getLogger("distributed").setLevel(logging.WARNING)  # and here (scheduler, nannies)
    from prefect_dask import DaskTaskRunner  # imported only when used: it loads distributed

    if cfg.runner.dask_address:
        return DaskTaskRunner(address=cfg.runner.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})


def stage_start(wh: Warehouse, snapshot: str | None, stage: str, config_hash: str,
                force: bool = False) -> tuple[str, dict | None]:
    """(snapshot, ledger row) when `stage` already ran on it with this config, else (snapshot, None)."""
    snapshot = wh.resolve_snapshot(snapshot)
    wh.require_complete(snapshot)
    previous = wh.stage_run(snapshot, stage)
    if previous and previous["config_hash"] == config_hash and not force:
        get_run_logger().info("%s of %s: nothing new (done with this config at %s)", stage, snapshot,
                              previous["finished_at"])
        return snapshot, previous
    return snapshot, None


def run_per_shard(task, root: Path, shards: list[str], section, output_path: Callable[[str], Path], label: str,
                  show_progress: bool = True) -> tuple[list[str], float]:
    """Each shard's output file (made by `task` in a worker unless it exists), and the seconds taken."""
    started = time.perf_counter()
    todo = [s for s in shards if not output_path(s).exists()]
    futures = [task.submit(root, shard, section) for shard in todo]
    with progress_bar(label, total=len(todo), enabled=show_progress and bool(todo)) as advance:
        for future in futures:
            future.result()  # a failure raises: the files done so far stay, a re-run does the rest
            advance()
    return [str(output_path(s)) for s in shards], time.perf_counter() - started
