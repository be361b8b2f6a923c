"""Flows for Prefect deployments (deploy/prefect.yaml), each a thin wrapper over the pipeline flow.

    prefect deploy --all --prefect-file deploy/prefect.yaml      # from the repo root
    prefect worker start --pool crawl2model                      # runs them on schedule

- `nightly-curate` (02:00): curates what lies in a drop folder (WARC files, HTML files and
  folders of them) into the warehouse, deduplicated and PII-scrubbed (`--until pii`). An empty
  drop folder is a no-op. The same files with the same config are a no-op too (shards are
  cached on their bytes), so files may stay in the folder: only new ones cost work. Each WARC
  file is one shard; HTML files are batched in name order (`curate.ingest.html_batch_size`), so
  a batch that gains a file is read again and its stored documents are rejected as
  `duplicate-document`: deliver crawls as WARC files where you can. Files and folders whose name
  starts with a dot are ignored: write a delivery under a dot-name and rename it when complete.
- `weekly-train-and-promote` (Sunday 04:00): the whole pipeline (tokenizer, pretraining, SFT,
  DPO, export and whatever later versions add up to `AVAILABLE[-1]`) over what the warehouse
  holds: the inputs of its newest snapshot (a no-op for curation, dedup and pii when the
  nightly run did them; the tokenizer reads that snapshot and every earlier one), or the
  bundled sample when the warehouse is empty.

Both take `data_root` (default: `C2M_HOME` of the worker, else `./c2m-data` in the repo) and
`overrides` (`key=value` config items, as on the command line). They call `pipeline_flow`
directly, as a subflow: under a worker PREFECT_API_URL names the server already, so the shared
local API that `run_pipeline` starts (`in_session`) is not needed; PREFECT_API_URL must be set
for the shard worker processes to report to the same server (the compose file and tests set it).
MLflow goes to `MLFLOW_TRACKING_URI` when the worker has it, else to the data root's SQLite store.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from crawl2model.config import Config, load_config
from crawl2model.runtime import prepare_environment
from warehouse import Warehouse

WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")  # as tasks.ingest (ARC: rejected, with its reason)
HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
NIGHTLY_UNTIL = "pii"


def _is_input_file(path: Path) -> bool:
    return path.name.lower().endswith(WARC_SUFFIXES + HTML_SUFFIXES)


def _holds_input(folder: Path) -> bool:
    for path in folder.rglob("*"):
        if path.is_file() and _is_input_file(path) and not any(p.startswith(".") for p in path.relative_to(folder).parts):
            return True
    return False


def drop_inputs(drop_folder: Path) -> tuple[list[str], list[str]]:
    """(inputs, ignored names) of a drop folder: its WARC and HTML files, and its subfolders that
    hold any (given whole, as `crawl2model curate FOLDER` takes them); sorted by name."""
    if not drop_folder.is_dir():
        raise FileNotFoundError(f"drop folder {str(drop_folder)!r} does not exist or is not a folder")
    inputs, ignored = [], []
    for path in sorted(drop_folder.iterdir()):
        if path.name.startswith("."):
            continue
        if (path.is_file() and _is_input_file(path)) or (path.is_dir() and _holds_input(path)):
            inputs.append(str(path.resolve()))
        else:
            ignored.append(path.name)
    return inputs, ignored


def newest_inputs(cfg: Config) -> list[str] | None:
    """The inputs of the warehouse's newest snapshot; None (the bundled sample) when it has none."""
    if not (cfg.data_root / "warehouse.duckdb").exists():
        return None
    with Warehouse.open(cfg.data_root, read_only=True) as wh:
        snapshot = wh.latest_snapshot()
        if snapshot is None:
            return None
        inputs = wh.con.execute("SELECT inputs FROM snapshots WHERE snapshot = ?", [snapshot]).fetchone()[0]
    inputs = json.loads(inputs) if isinstance(inputs, str) else list(inputs or [])
    missing = [i for i in inputs if not i.startswith(("http://", "https://")) and not Path(i).exists()]
    if missing:
        raise FileNotFoundError(
            f"the inputs of the newest snapshot {snapshot} are gone ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): the pipeline finds its snapshot by curating its inputs "
            "again (a no-op), so keep delivered files in the drop folder, or run `crawl2model run --input ...`")
    return inputs or None


def _config(data_root: str | None, overrides: list[str]) -> Config:
    cfg = load_config(overrides=list(overrides or []), data_root=data_root or None)
    prepare_environment(cfg.data_root)  # MLflow and Prefect defaults for this data root, before MLflow is used
    return cfg


@flow(name="nightly-curate", log_prints=False)
def nightly_curate(drop_folder: str, data_root: str | None = None, overrides: list[str] = []):
    """Curate, deduplicate and PII-scrub the WARC/HTML files of a drop folder into the warehouse."""
    if not drop_folder.strip() or "{{" in drop_folder:  # prefect.yaml's "{{ $C2M_DROP_FOLDER }}", unset at deploy time
        raise ValueError(f"drop_folder is {drop_folder!r}: set C2M_DROP_FOLDER when running `prefect deploy`, "
                         "or give drop_folder when starting the run")
    cfg = _config(data_root, overrides)
    logger = get_run_logger()
    inputs, ignored = drop_inputs(Path(drop_folder).expanduser())
    if ignored:
        logger.warning("drop folder %s: ignoring %d entries that are not WARC or HTML: %s", drop_folder,
                       len(ignored), ", ".join(ignored[:10]) + (", ..." if len(ignored) > 10 else ""))
    if not inputs:
        logger.info("drop folder %s holds no WARC or HTML files: nothing to curate", drop_folder)
        return None
    from flows.pipeline import pipeline_flow  # deferred: a deployment imports this module before it prepares the environment

    logger.info("curating %d input(s) from %s into %s, until %s", len(inputs), drop_folder, cfg.data_root,
                NIGHTLY_UNTIL)
    result = pipeline_flow(inputs, cfg, until=NIGHTLY_UNTIL, show_progress=False)
    s = result.curate
    logger.info("snapshot %s: %d documents, %d rejections; %s", s.snapshot, s.documents, s.rejections,
                "nothing new" if s.no_op else f"{s.shards_processed} shard(s) curated")
    return result


@flow(name="weekly-train-and-promote", log_prints=False)
def weekly_train_and_promote(data_root: str | None = None, overrides: list[str] = []):
    """The whole pipeline (tokenizer to export, and later stages as they are built) on what the
    warehouse holds: its newest snapshot's inputs, or the bundled sample when it is empty."""
    cfg = _config(data_root, overrides)
    logger = get_run_logger()
    from flows.pipeline import AVAILABLE, pipeline_flow  # deferred: as in nightly_curate

    inputs = newest_inputs(cfg)
    logger.info("training on %s in %s, until %s", f"{len(inputs)} input(s) of the newest snapshot" if inputs
                else "the bundled sample (the warehouse is empty)", cfg.data_root, AVAILABLE[-1])
    return pipeline_flow(inputs, cfg, until=AVAILABLE[-1], show_progress=False)

