"""The table mirror: every DuckDB table of the warehouse as a checksummed Parquet file, so the
DuckDB file can be rebuilt from Parquet alone (`crawl2model warehouse rebuild`).

    from warehouse.mirror import export_tables, import_tables, read_manifest
    export_tables(con, root)          # after a stage wrote DuckDB (Warehouse.close does it)
    import_tables(root, db_path)      # a new DuckDB file from the mirror; returns rows per table

Layout: `<root>/parquet/tables/<generation>/<table>.parquet` and `<root>/parquet/tables/manifest.json`
naming the current generation, each file's sha256 and row count, and the ledger state it
mirrors (a hash of the snapshots, shards and stage_runs ledgers: every write to the warehouse
changes one of them). A new generation is written beside the old one and the manifest is
replaced atomically last, so the mirror is always one complete generation; the old one is
deleted after. An export whose ledger state is already mirrored is skipped (a no-op re-run
writes nothing). The per-shard Parquet of curation holds the text as curated; the mirror holds
the tables as the stages left them (dedup decisions, scrubbed text), which is what rebuilding needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from warehouse.files import file_record, guard, write_json
from warehouse.schema import DDL

# Ledgers first: they are small, and a rebuild that stops half-way is never mistaken for a whole one
# (it is written to a temporary file anyway).
TABLES = ("snapshots", "shards", "stage_runs", "documents", "rejections", "shard_stats")
LEDGERS = ("snapshots", "shards", "stage_runs")


def mirror_dir(root: Path) -> Path:
    return Path(root) / "parquet" / "tables"


def manifest_path(root: Path) -> Path:
    return mirror_dir(root) / "manifest.json"


def read_manifest(root: Path) -> dict | None:
    try:
        return json.loads(manifest_path(root).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{manifest_path(root)} is unreadable ({exc})") from None


def ledger_state(con: duckdb.DuckDBPyConnection) -> str:
    """A hash of the ledger tables: it changes with every load, snapshot and stage run."""
    rows = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in LEDGERS}
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:24]


def table_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def export_tables(con: duckdb.DuckDBPyConnection, root: Path, force: bool = False) -> dict | None:
    """Write a new mirror generation and its manifest; None when the mirror is current already."""
    base = mirror_dir(root)
    state = ledger_state(con)
    if not force:
        try:
            current = read_manifest(root)
        except ValueError:
            current = None
        if current and current.get("state") == state and all(
                (base / t["file"]).is_file() for t in current["tables"].values()):
            return None
    generation = f"gen-{time.time_ns()}"
    tmp = base / f"{generation}.tmp-{os.getpid()}"
    with guard(tmp, [tmp]):
        tmp.mkdir(parents=True)
        tables = {}
        for table in TABLES:
            path = tmp / f"{table}.parquet"
            con.execute(f"COPY (SELECT * FROM {table}) TO {_literal(path)} (FORMAT parquet, COMPRESSION zstd)")
            rows = con.execute(f"SELECT count(*) FROM read_parquet({_literal(path)})").fetchone()[0]
            tables[table] = {"file": f"{generation}/{table}.parquet", **file_record(path, rows)}
        os.rename(tmp, base / generation)
    manifest = {"version": 1, "state": state, "generation": generation, "tables": tables,
                "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with guard(manifest_path(root), [base / generation]):
        write_json(manifest_path(root), manifest)
    for old in base.iterdir():  # earlier generations and temporary folders of killed exports
        if old.is_dir() and old.name != generation:
            shutil.rmtree(old, ignore_errors=True)
    return manifest


def import_tables(root: Path, db_path: Path) -> dict[str, int]:
    """Create the DuckDB file `db_path` (must not exist) from the mirror; rows per table."""
    manifest = read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"no table mirror at {manifest_path(root)}")
    base = mirror_dir(root)
    con = duckdb.connect(str(db_path))
    try:
        con.execute(DDL)
        con.execute("BEGIN TRANSACTION")
        for table in TABLES:
            entry = manifest["tables"][table]
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM read_parquet({_literal(base / entry['file'])})")
        con.execute("COMMIT")
        counts = table_counts(con)
        if ledger_state(con) != manifest["state"]:
            raise ValueError("the rebuilt ledger does not match the mirror's manifest")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return counts
