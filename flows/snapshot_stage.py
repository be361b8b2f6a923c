"""What the snapshot stages (`dedup`, `pii`) share: the ledger check that makes a re-run with
the same config a no-op, per-shard work in a process pool, and the MLflow run of the stage.

    with Warehouse.open(root) as wh:
        snapshot, previous = stage_start(wh, snapshot, "dedup", config_hash, force)
        if previous: ...nothing new...
        paths, seconds = run_per_shard(minhash_task, root, shards, cfg.dedup, output_path, "dedup")
    runner = stage_runner(cfg.dedup.workers)    # for flow.with_options(task_runner=...)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger
from prefect.task_runners import ProcessPoolTaskRunner

from flows.progress import progress_bar
from warehouse import Warehouse


def stage_runner(workers: int) -> ProcessPoolTaskRunner:
    """A process pool of `workers` processes (0 = one per core). Processes start on the first
    submitted task, so a stage whose shard files all exist starts none."""
    return ProcessPoolTaskRunner(max_workers=workers or os.cpu_count() or 1)


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
