"""Check every Parquet file of the warehouse against its recorded checksum, say how to repair
what is damaged, and rebuild the DuckDB file from the Parquet table mirror.

    crawl2model warehouse verify            # a table of problems with the fix of each; exit 1 if any
    crawl2model warehouse verify --record   # record checksums of files that have none (older data roots)
    crawl2model warehouse rebuild           # warehouse.duckdb again from parquet/tables/ (the mirror)
    crawl2model warehouse rebuild --mirror  # the mirror again from warehouse.duckdb
    from warehouse.verify import verify, rebuild, refresh_mirror

What is checked: each `*.parquet` under `<root>/parquet` (shards, dedup/pii stage files, the
table mirror) has a checksum record and still matches it (sha256, row count); each record's
file exists; each shard the ledger loaded still has its folder; the DuckDB file opens and the
mirror holds its current state. Temporary files (`*.tmp-<pid>`) are ignored: nothing reads them.
Nothing is changed by `verify` (except with --record); `rebuild` never deletes the DuckDB file
it replaces, it renames it to `warehouse.duckdb.replaced-<time>`.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from warehouse.files import RECORD_SUFFIX, file_record, file_sha256, guard, read_record, record_path, write_json
from warehouse.mirror import (TABLES, export_tables, import_tables, ledger_state, manifest_path, mirror_dir,
                              read_manifest, table_counts)
from warehouse.store import DB_NAME, Warehouse, WarehouseError

REBUILD = "crawl2model warehouse rebuild"
REFRESH = "crawl2model warehouse rebuild --mirror"


@dataclass
class Problem:
    path: str
    what: str
    fix: str


def _is_temporary(path: Path) -> bool:
    return any(".tmp-" in part for part in path.parts)


def _check(path: Path, record: dict) -> str | None:
    """What is wrong with a file against its record, or None."""
    try:
        digest = file_sha256(path)
    except OSError as exc:
        return f"unreadable ({exc})"
    if digest != record.get("sha256"):
        return f"checksum mismatch: sha256 {digest[:12]}…, recorded {str(record.get('sha256'))[:12]}…"
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid (a ValueError) on a broken footer
        return f"unreadable Parquet ({type(exc).__name__}: {str(exc)[:120]})"
    if rows != record.get("rows"):
        return f"{rows} rows, recorded {record.get('rows')}"
    return None


class _Ledger:
    """Which snapshot each shard belongs to and each snapshot's inputs, from DuckDB or the mirror."""

    def __init__(self, shards: dict[str, str], inputs: dict[str, list[str]]):
        self.shards, self.inputs = shards, inputs

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection | None, root: Path, manifest: dict | None) -> "_Ledger":
        try:
            if con is None and manifest:
                base = mirror_dir(root)
                con = duckdb.connect()
                shards = con.execute("SELECT shard, snapshot FROM read_parquet(?)",
                                     [str(base / manifest["tables"]["shards"]["file"])]).fetchall()
                snaps = con.execute("SELECT snapshot, inputs FROM read_parquet(?)",
                                    [str(base / manifest["tables"]["snapshots"]["file"])]).fetchall()
            elif con is not None:
                shards = con.execute("SELECT shard, snapshot FROM shards").fetchall()
                snaps = con.execute("SELECT snapshot, inputs FROM snapshots").fetchall()
            else:
                return cls({}, {})
        except (duckdb.Error, KeyError):
            return cls({}, {})
        return cls(dict(shards), {s: json.loads(i or "[]") for s, i in snaps})

    def curate_command(self, shard: str) -> str:
        inputs = self.inputs.get(self.shards.get(shard, ""), [])
        return "crawl2model curate " + (shlex.join(inputs) if inputs else "<the same inputs>")


def _fix(root: Path, path: Path, ledger: _Ledger) -> str:
    rel = path.relative_to(root / "parquet")
    kind = rel.parts[0]
    if kind == "shards":
        folder = root / "parquet" / "shards" / rel.parts[1]
        return (f"rm -r {shlex.quote(str(folder))} && {ledger.curate_command(rel.parts[1])}  "
                f"(curation writes the shard's Parquet again; its rows in DuckDB stay as they are)")
    if kind == "tables":
        return f"{REFRESH}  (the mirror again from warehouse.duckdb; if that is damaged too, re-run the stages)"
    if kind in ("minhash", "pii"):
        stage = "dedup" if kind == "minhash" else "scrub"
        snapshot = ledger.shards.get(path.stem)
        again = f"crawl2model {stage}" + (f" --snapshot {snapshot}" if snapshot else "") + " --force"
        return f"rm {shlex.quote(str(path))} {shlex.quote(str(record_path(path)))} && {again}  (a per-shard cache)"
    return f"rm {shlex.quote(str(path))}  (not a file crawl2model writes)"


def _open_db(root: Path) -> tuple[duckdb.DuckDBPyConnection | None, Problem | None]:
    path = root / DB_NAME
    if not path.exists():
        return None, Problem(str(path), "missing", REBUILD)
    try:
        return duckdb.connect(str(path), read_only=True), None
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            raise WarehouseError(f"{path} is open in another crawl2model process: verify when it has finished") from None
        return None, Problem(str(path), f"unreadable ({str(exc)[:160]})", f"{REBUILD} --force")


def verify(root: Path) -> tuple[list[Problem], int]:
    """Every problem found (with its fix) and how many Parquet files were checked."""
    root = Path(root)
    problems: list[Problem] = []
    try:
        manifest = read_manifest(root)
    except ValueError as exc:
        manifest = None
        problems.append(Problem(str(manifest_path(root)), str(exc), REFRESH))
    con, db_problem = _open_db(root)
    try:
        ledger = _Ledger.load(con, root, manifest)
        checked = 0
        # 1. files with a checksum record beside them: shards and stage files
        base = root / "parquet"
        mirror = mirror_dir(root)
        for path in sorted(base.rglob("*.parquet")) if base.is_dir() else []:
            if _is_temporary(path.relative_to(base)) or mirror in path.parents:
                continue
            checked += 1
            record = read_record(path)
            wrong = "no checksum recorded" if record is None else _check(path, record)
            if wrong:
                fix = _fix(root, path, ledger)
                if record is None:
                    fix = "crawl2model warehouse verify --record  (if the file is known good), else " + fix
                problems.append(Problem(str(path), wrong, fix))
        for rec in sorted(base.rglob("*.parquet" + RECORD_SUFFIX)) if base.is_dir() else []:
            target = rec.with_name(rec.name.removesuffix(RECORD_SUFFIX))
            if not _is_temporary(rec.relative_to(base)) and not target.exists():
                problems.append(Problem(str(target), "missing (its checksum record is there)", _fix(root, target, ledger)))
        # 2. shards the ledger loaded whose whole folder is gone
        for shard in sorted(ledger.shards):
            folder = base / "shards" / shard
            if not folder.is_dir():
                problems.append(Problem(str(folder), "missing (the shard is in the ledger)",
                                        _fix(root, folder / "documents.parquet", ledger)))
        # 3. the table mirror and the DuckDB file
        if manifest:
            for table in TABLES:
                entry = manifest["tables"][table]
                path = mirror / entry["file"]
                checked += 1
                wrong = "missing" if not path.exists() else _check(path, entry)
                if wrong:
                    problems.append(Problem(str(path), wrong, _fix(root, path, ledger) if con else
                                            "none from Parquet: the DuckDB file is gone too; re-run the stages "
                                            "(crawl2model run) into a fresh data root"))
        if db_problem:
            if not manifest:
                db_problem.fix = "no table mirror to rebuild from: re-run the stages (crawl2model run)"
            problems.append(db_problem)
        elif con is not None:
            if manifest is None:
                problems.append(Problem(str(manifest_path(root)), "no table mirror of warehouse.duckdb", REFRESH))
            elif ledger_state(con) != manifest["state"]:
                problems.append(Problem(str(manifest_path(root)), "the mirror is behind warehouse.duckdb "
                                        "(a run stopped before exporting it)", REFRESH))
            else:
                counts = table_counts(con)
                for table in TABLES:
                    if counts[table] != manifest["tables"][table]["rows"]:
                        problems.append(Problem(f"{root / DB_NAME}:{table}", f"{counts[table]} rows, the mirror "
                                                f"{manifest['tables'][table]['rows']}", f"{REBUILD} --force"))
    finally:
        if con is not None:
            con.close()
    return problems, checked


def record_missing(root: Path) -> list[Path]:
    """Record checksums of the Parquet files that have none (trusting them as they are now)."""
    base = Path(root) / "parquet"
    done = []
    for path in sorted(base.rglob("*.parquet")) if base.is_dir() else []:
        rel = path.relative_to(base)
        if not _is_temporary(rel) and rel.parts[0] != "tables" and read_record(path) is None:
            write_json(record_path(path), {"file": path.name, **file_record(path), "recorded_by": "verify --record"})
            done.append(path)
    return done


def refresh_mirror(root: Path) -> dict:
    """Export warehouse.duckdb to a new mirror generation (it must open)."""
    wh = Warehouse.open(root)
    try:
        return export_tables(wh.con, wh.root, force=True)
    finally:
        wh.close(export=False)  # exported just now


def rebuild(root: Path, force: bool = False) -> dict[str, int]:
    """warehouse.duckdb from the table mirror; the file it replaces is renamed, never deleted.
    Refuses when the mirror is damaged, or (without force) when the DuckDB file opens and holds
    a state the mirror does not."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        raise WarehouseError(f"no table mirror at {manifest_path(root)}: nothing to rebuild from "
                             "(a warehouse made before mirrors: `crawl2model warehouse rebuild --mirror` makes one)")
    for table in TABLES:
        path = mirror_dir(root) / manifest["tables"][table]["file"]
        wrong = "missing" if not path.exists() else _check(path, manifest["tables"][table])
        if wrong:
            raise WarehouseError(f"the table mirror is damaged ({path}: {wrong}); cannot rebuild from it")
    db = root / DB_NAME
    con, problem = _open_db(root)
    if con is not None:
        try:
            same = ledger_state(con) == manifest["state"] and table_counts(con) == {
                t: manifest["tables"][t]["rows"] for t in TABLES}
        finally:
            con.close()
        if not force:
            raise WarehouseError(
                f"{db} opens and " + ("matches the mirror: nothing to rebuild" if same else
                                      "holds a state the mirror does not: `crawl2model warehouse rebuild --mirror` "
                                      "updates the mirror from it")
                + " (--force rebuilds it anyway)")
    tmp = root / f"{DB_NAME}.rebuild-{os.getpid()}"
    leftovers = [tmp, Path(f"{tmp}.wal")]
    for p in leftovers:
        p.unlink(missing_ok=True)
    with guard(tmp, leftovers):  # a rebuild that fails (a full disk) leaves no half-made file
        counts = import_tables(root, tmp)
    if db.exists():
        aside = root / f"{DB_NAME}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(db, aside)
        if Path(f"{db}.wal").exists():
            os.replace(f"{db}.wal", f"{aside}.wal")
    os.replace(tmp, db)
    return counts
