"""Per-shard Parquet output, written by worker processes, complete or absent.

    from warehouse.shard_files import write_shard, shard_is_complete
    write_shard(root, key, documents, rejections, stats)   # lists of row dicts

Layout: `<root>/parquet/shards/<key>/{documents,rejections,stats}.parquet` (zstd), each with its
checksum record `<name>.sha256.json` (warehouse.files). The three files are written into a
temporary folder that is renamed into place last: a rename is atomic, so a shard killed (or out
of disk space) half-way leaves only a `*.tmp-<pid>` folder, which is ignored and swept.
Outside tools can read e.g. `read_parquet('<root>/parquet/shards/*/documents.parquet')`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.files import guard, write_parquet
from warehouse.schema import DOCUMENTS, REJECTIONS, SHARD_STATS

TABLES = {"documents": DOCUMENTS, "rejections": REJECTIONS, "stats": SHARD_STATS}


def shards_root(root: Path) -> Path:
    return Path(root) / "parquet" / "shards"


def shard_dir(root: Path, key: str) -> Path:
    return shards_root(root) / key


def shard_is_complete(root: Path, key: str) -> bool:
    return shard_dir(root, key).is_dir()


def write_shard(root: Path, key: str, documents: list[dict], rejections: list[dict], stats: list[dict]) -> Path:
    final = shard_dir(root, key)
    if final.is_dir():
        return final  # done before (a retry, or a second run racing us): same content by construction
    tmp = final.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with guard(final, [tmp]):  # a failed write (a full disk) leaves no temporary folder behind
        tmp.mkdir(parents=True)
        for name, rows in (("documents", documents), ("rejections", rejections), ("stats", stats)):
            write_parquet(pa.Table.from_pylist(rows, schema=TABLES[name]), tmp / f"{name}.parquet")
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def sweep_partial(root: Path) -> int:
    """Remove the temporary folders that killed workers left behind; returns how many."""
    base = shards_root(root)
    if not base.is_dir():
        return 0
    partial = [p for p in base.iterdir() if ".tmp-" in p.name]
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return len(partial)


# --- per-shard outputs of the snapshot stages (dedup signatures, scrubbed text) -----------------

def stage_file(root: Path, stage: str, key: str, shard: str) -> Path:
    """`<root>/parquet/<stage>/<key>/<shard>.parquet`: one shard's output under one config key."""
    return Path(root) / "parquet" / stage / key / f"{shard}.parquet"


def write_table(path: Path, table: pa.Table) -> Path:
    """Write a Parquet file (zstd) and its checksum record: complete or absent (warehouse.files)."""
    return write_parquet(table, path)


def read_curated(root: Path, shard: str, columns: list[str]) -> pa.Table:
    """Columns of a shard's curated documents, as curation wrote them (before any later stage)."""
    path = shard_dir(root, shard) / "documents.parquet"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the snapshot stages read each shard's curated Parquet; restore it or "
            f"curate the inputs into a fresh data root")
    return pq.read_table(path, columns=columns)
