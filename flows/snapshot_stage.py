"""What the snapshot stages (`dedup`, `pii`) share: the ledger check that makes a re-run with
the same config a no-op, and per-shard work (the Prefect tasks `minhash_task`, `scrub_task`
around tasks.snapshot_shards) in a process pool or on Dask (`runner.kind`).

    with Warehouse.open(root) as wh:
        snapshot, previous = stage_start(wh, snapshot, "dedup", config_hash, force)
        if previous: ...nothing new...
        paths, seconds = run_per_shard(minhash_task, root, shards, cfg.dedup, output_path, "dedup")
    runner = data_stage_runner(cfg, cfg.dedup.workers)    # for flow.with_options(task_runner=...)
    for call, error, result in results_in_order(process_shard, [{"shard": s, ...} for s in todo]):
        ...                                               # plan order; a dead worker's shards rerun

A worker process killed in the middle (OOM killer, a SIGKILL) breaks Prefect's whole process pool:
every pending task of the stage fails with BrokenProcessPool, and Prefect's task retries cannot
help (the retry loop ran in the dead process). `results_in_order` submits those tasks again on a
fresh pool of the flow's runner (POOL_RESTARTS times at most); a shard whose output file exists
is not redone, so nothing is doubled. On Dask the scheduler itself reruns a dead worker's tasks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.states import Crashed
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


POOL_RESTARTS = 2  # fresh process pools per stage after a worker died (each death breaks the whole pool)


def results_in_order(task, calls: list[dict[str, Any]]) -> Iterator[tuple[dict, BaseException | None, Any]]:
    """(call, error, result) of `task` for each call's parameters, in the order given, run on the
    flow's task runner; the calls that a dead worker's broken pool failed are submitted again on a
    fresh pool (see the module docstring). Other errors are yielded, not raised: the caller decides."""
    futures = [task.submit(**call) for call in calls]
    restarts, i = 0, 0
    with ExitStack() as pools:
        while i < len(calls):
            try:
                result = futures[i].result()
            except BrokenProcessPool as exc:
                if restarts == POOL_RESTARTS:
                    yield calls[i], exc, None
                    i += 1
                    continue
                restarts += 1
                # the broken pool fails every task it had not finished (at once); the finished keep their result
                broken = [j for j in range(i, len(calls)) if not _finished_ok(futures[j])]
                get_run_logger().warning("%s: a worker process died (%s); %d task(s) go to a fresh process pool "
                                         "(%d of %d)", task.name, exc, len(broken), restarts, POOL_RESTARTS)
                _mark_crashed([futures[j] for j in broken], f"its worker process died ({exc}); submitted again")
                runner = pools.enter_context(FlowRunContext.get().task_runner.duplicate())
                for j in broken:
                    futures[j] = runner.submit(task, calls[j])
                continue
            except Exception as exc:  # noqa: BLE001 - handed to the caller with its call
                yield calls[i], exc, None
            else:
                yield calls[i], None, result
            i += 1


def _finished_ok(future, timeout: float = 30.0) -> bool:
    """Whether a submitted task came back from its worker (its own outcome aside)."""
    try:
        return future.wrapped_future.exception(timeout=timeout) is None
    except Exception:  # noqa: BLE001 - cancelled, or still not back after the timeout
        return False


def _mark_crashed(futures, message: str) -> None:
    """Task runs that a dead worker left RUNNING (or PENDING) become CRASHED in Prefect, so the UI
    does not show them running forever; best effort (the stage goes on whatever happens here)."""
    try:
        with get_client(sync_client=True) as client:
            for future in futures:
                try:
                    run = client.read_task_run(future.task_run_id)
                except Exception:  # noqa: BLE001 - never created: nothing to mark
                    continue
                if run.state is not None and not run.state.is_final():
                    client.set_task_run_state(future.task_run_id, Crashed(message=message), force=True)
    except Exception as exc:  # noqa: BLE001
        get_run_logger().warning("could not mark the dead worker's task runs crashed: %s", exc)


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
    calls = [{"root": root, "shard": shard, "cfg": section} for shard in todo]
    with progress_bar(label, total=len(todo), enabled=show_progress and bool(todo)) as advance:
        for _call, error, _result in results_in_order(task, calls):
            if error is not None:
                raise error  # the files done so far stay, a re-run does the rest
            advance()
    return [str(output_path(s)) for s in shards], time.perf_counter() - started
