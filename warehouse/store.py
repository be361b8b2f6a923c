"""The DuckDB warehouse: snapshots, the shard ledger, loading finished shards, and every query.

    from warehouse.store import Warehouse
    with Warehouse.open(root) as wh:                       # read-write (one process at a time)
        wh.begin_snapshot("snap-1", config_hash, inputs)
        wh.load_shard(key, "snap-1", kind="warc", label="a.warc.gz")
    with Warehouse.open(root, read_only=True) as wh:       # for queries
        wh.funnel()

Only the main process writes DuckDB; workers write Parquet (`warehouse.shard_files`). Loading a
shard is one transaction: its documents, rejections, stats and its ledger row commit together
or not at all, so a kill at any moment leaves every shard fully loaded or absent. The load is
also the `store` stage: a document whose doc_id is already in the warehouse, or whose URL is
already in this snapshot, is recorded as a rejection instead of a second row.
Every query is parameterized. Closing a read-write warehouse after a stage wrote to it exports
its tables to the Parquet mirror (warehouse.mirror), from which `crawl2model warehouse rebuild`
makes the DuckDB file again. A write that finds the disk full rolls back and raises
warehouse.files.DiskFullError (the path, the free space); the file stays as it was.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from warehouse.dedup_queries import cluster_of
from warehouse.mirror import export_tables
from warehouse.schema import CURATE_STAGES, DDL, PII_COLUMNS
from warehouse.shard_files import shard_dir
from warehouse.transactions import transaction

DB_NAME = "warehouse.duckdb"


class WarehouseError(RuntimeError):
    """A warehouse problem the user can act on (missing, locked, unknown snapshot)."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Warehouse:
    def __init__(self, con: duckdb.DuckDBPyConnection, root: Path, read_only: bool = False):
        self.con = con
        self.root = root
        self.read_only = read_only
        self.closed = False

    @classmethod
    def open(cls, root: Path, read_only: bool = False) -> "Warehouse":
        root = Path(root)
        path = root / DB_NAME
        if read_only and not path.exists():
            raise WarehouseError(f"no warehouse at {path}: run `crawl2model curate PATH` or `crawl2model run` first")
        root.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            raise WarehouseError(
                f"cannot open {path}: {exc}\nAnother crawl2model process is probably writing it; wait for it to finish."
            ) from None
        if not read_only:
            try:
                con.execute(DDL)
            except duckdb.Error as exc:
                con.close()
                if is_disk_full(exc):
                    raise disk_full_error(path, exc) from exc
                raise
        return cls(con, root, read_only)

    def close(self, export: bool = True) -> None:
        """Close; a read-write warehouse first brings the Parquet table mirror up to date (a no-op
        when nothing changed since the last export). A second close does nothing."""
        if self.closed:
            return
        self.closed = True
        try:
            if export and not self.read_only:
                export_tables(self.con, self.root)
        finally:
            try:
                self.con.close()  # checkpoints the WAL into the file
            except duckdb.Error as exc:
                if is_disk_full(exc):  # the WAL keeps every commit: the next open replays it
                    raise disk_full_error(self.root / DB_NAME, exc) from exc
                raise

    def __enter__(self) -> "Warehouse":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(export=exc_type is None)  # after a failure the mirror stays at the last good state

    def _rows(self, sql: str, params: list | tuple = ()) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def _value(self, sql: str, params: list | tuple = ()) -> Any:
        row = self.con.execute(sql, params).fetchone()
        return row[0] if row else None

    # --- snapshots and the shard ledger ----------------------------------------------------

    def snapshot_status(self, snapshot: str) -> str | None:
        return self._value("SELECT status FROM snapshots WHERE snapshot = ?", [snapshot])

    def begin_snapshot(self, snapshot: str, config_hash: str, inputs: list[str]) -> str:
        """Record a snapshot as running (unless it exists); returns its status."""
        status = self.snapshot_status(snapshot)
        if status is None:
            self.con.execute(
                "INSERT INTO snapshots VALUES (?, ?, NULL, 'running', ?, ?, NULL)",
                [snapshot, _now(), config_hash, json.dumps(inputs)],
            )
            status = "running"
        return status

    def finish_snapshot(self, snapshot: str, counts: dict) -> None:
        self.con.execute(
            "UPDATE snapshots SET status = 'complete', finished_at = ?, counts = ? WHERE snapshot = ?",
            [_now(), json.dumps(counts), snapshot],
        )

    def loaded_shards(self) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT shard FROM shards").fetchall()}

    def load_shard(self, key: str, snapshot: str, kind: str, label: str) -> dict[str, int]:
        """Load a finished shard's Parquet files in one transaction (no-op if already loaded)."""
        folder = shard_dir(self.root, key)
        con = self.con
        try:
            with transaction(con):
                if self._value("SELECT count(*) FROM shards WHERE shard = ?", [key]):
                    return {"stored": 0, "duplicates": 0}
                # Rows are stamped with the snapshot that loads them (a shard written by a killed run of
                # another snapshot is adopted by the run that loads it).
                con.execute("CREATE OR REPLACE TEMP TABLE incoming AS SELECT * REPLACE (?::VARCHAR AS snapshot) "
                            "FROM read_parquet(?)", [snapshot, str(folder / "documents.parquet")])
                # The store stage: at most one row per doc_id, at most one per URL in a snapshot.
                con.execute(
                    """CREATE OR REPLACE TEMP TABLE duplicate AS
                       SELECT i.doc_id, i.url, i.source,
                              CASE WHEN d.doc_id IS NOT NULL THEN 'duplicate-document' ELSE 'duplicate-url' END AS reason,
                              CASE WHEN d.doc_id IS NOT NULL THEN 'doc_id ' || d.doc_id || ' already stored in snapshot ' || d.snapshot
                                   ELSE 'kept doc_id ' || u.doc_id END AS detail
                       FROM incoming i
                       LEFT JOIN documents d ON d.doc_id = i.doc_id
                       LEFT JOIN (SELECT url, min(doc_id) AS doc_id FROM documents WHERE snapshot = ? GROUP BY url) u
                              ON u.url = i.url
                       WHERE d.doc_id IS NOT NULL OR u.url IS NOT NULL""",
                    [snapshot],
                )
                con.execute("INSERT INTO documents BY NAME SELECT * FROM incoming WHERE doc_id NOT IN (SELECT doc_id FROM duplicate)")
                con.execute("INSERT INTO rejections SELECT * REPLACE (?::VARCHAR AS snapshot) FROM read_parquet(?)",
                            [snapshot, str(folder / "rejections.parquet")])
                con.execute(
                    # A document already stored is not removed: its rejection row names the URL, not the doc_id
                    # (a doc_id in `rejections` means that document is not among the kept ones).
                    "INSERT INTO rejections SELECT CASE WHEN reason = 'duplicate-document' THEN NULL ELSE doc_id END, "
                    "url, source, 'store', reason, detail, false, ?, ? FROM duplicate",
                    [snapshot, key],
                )
                con.execute("INSERT INTO shard_stats BY NAME SELECT * REPLACE (?::VARCHAR AS snapshot) FROM read_parquet(?)",
                            [snapshot, str(folder / "stats.parquet")])
                incoming = self._value("SELECT count(*) FROM incoming")
                duplicates = self._value("SELECT count(*) FROM duplicate")
                if incoming:
                    nbytes = self._value("SELECT coalesce(sum(strlen(text)), 0) FROM incoming")
                    con.execute(
                        "INSERT INTO shard_stats (snapshot, shard, stage, stage_order, docs_in, docs_out, docs_dropped, "
                        "docs_quarantined, bytes, seconds) VALUES (?, ?, 'store', ?, ?, ?, ?, 0, ?, 0)",
                        [snapshot, key, CURATE_STAGES.index("store"), incoming, incoming - duplicates, duplicates, nbytes],
                    )
                seq = self._value("SELECT coalesce(max(seq), 0) + 1 FROM shards")
                con.execute("INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?)", [key, snapshot, kind, label, seq, _now()])
        finally:
            con.execute("DROP TABLE IF EXISTS incoming; DROP TABLE IF EXISTS duplicate")
        return {"stored": incoming - duplicates, "duplicates": duplicates}

    # --- the snapshot stages (dedup, pii) ---------------------------------------------------

    def require_complete(self, snapshot: str) -> None:
        status = self.snapshot_status(snapshot)
        if status != "complete":
            raise WarehouseError(f"snapshot {snapshot} is {status or 'missing'}: its curation did not finish; "
                                 f"re-run `crawl2model curate` (or `run`) on the same inputs first")

    def stage_run(self, snapshot: str, stage: str) -> dict | None:
        """The ledger row of `stage` on `snapshot` (config_hash, finished_at, summary) or None."""
        rows = self._rows("SELECT config_hash, finished_at, summary FROM stage_runs WHERE snapshot = ? AND stage = ?",
                          [snapshot, stage])
        if not rows:
            return None
        return {**rows[0], "summary": json.loads(rows[0]["summary"] or "{}")}

    def pending_snapshots(self, stage: str, config_hash: str) -> list[str]:
        """Complete snapshots, oldest first, that `stage` has not processed with this config."""
        return [r[0] for r in self.con.execute(
            "SELECT s.snapshot FROM snapshots s LEFT JOIN stage_runs r ON r.snapshot = s.snapshot AND r.stage = ? "
            "WHERE s.status = 'complete' AND (r.config_hash IS NULL OR r.config_hash <> ?) ORDER BY s.created_at",
            [stage, config_hash]).fetchall()]

    def snapshot_shards(self, snapshot: str) -> list[str]:
        """The shards holding this snapshot's documents, in load order."""
        return [r[0] for r in self.con.execute(
            "SELECT DISTINCT d.shard, s.seq FROM documents d JOIN shards s USING (shard) WHERE d.snapshot = ? "
            "ORDER BY s.seq", [snapshot]).fetchall()]

    def documents_with_pii(self, snapshot: str, limit: int = 50) -> list[dict]:
        return self._rows(
            "SELECT doc_id, text FROM documents WHERE snapshot = ? AND "
            + " + ".join(f"coalesce({c}, 0)" for c in PII_COLUMNS) + " > 0 ORDER BY doc_id LIMIT ?",
            [snapshot, limit])

    def duplicates(self, doc_id: str) -> list[dict]:
        """The dedup cluster of a document (any snapshot), the kept document first."""
        row = self._rows("SELECT snapshot, dup_cluster FROM documents WHERE doc_id = ?", [doc_id])
        if not row:
            raise WarehouseError(f"no document {doc_id!r} in the warehouse (`crawl2model warehouse sample` shows some)")
        if row[0]["dup_cluster"] is None:
            raise WarehouseError(f"snapshot {row[0]['snapshot']} is not deduplicated yet: run `crawl2model dedup`")
        return cluster_of(self.con, doc_id)

    # --- queries ---------------------------------------------------------------------------

    def latest_snapshot(self) -> str | None:
        return self._value("SELECT snapshot FROM snapshots ORDER BY created_at DESC LIMIT 1")

    def resolve_snapshot(self, snapshot: str | None) -> str:
        snapshot = snapshot or self.latest_snapshot()
        if snapshot is None:
            raise WarehouseError("the warehouse holds no snapshot yet: run `crawl2model curate PATH` first")
        if self.snapshot_status(snapshot) is None:
            raise WarehouseError(f"no snapshot {snapshot!r}; `crawl2model warehouse stats` lists them")
        return snapshot

    def funnel(self, snapshot: str | None = None) -> list[dict]:
        return self._rows(
            "SELECT stage, docs_in, docs_out, docs_dropped, docs_quarantined, bytes, seconds "
            "FROM stage_stats WHERE snapshot = ? ORDER BY stage_order",
            [self.resolve_snapshot(snapshot)],
        )

    def snapshots(self) -> list[dict]:
        return self._rows(
            """SELECT s.snapshot, s.created_at, s.status, s.config_hash,
                      (SELECT count(*) FROM documents d WHERE d.snapshot = s.snapshot) AS documents,
                      (SELECT count(*) FROM kept_documents d WHERE d.snapshot = s.snapshot) AS kept,
                      (SELECT count(*) FROM rejections r WHERE r.snapshot = s.snapshot) AS rejections,
                      (SELECT coalesce(sum(chars), 0) FROM documents d WHERE d.snapshot = s.snapshot) AS text_chars
               FROM snapshots s ORDER BY s.created_at"""
        )

    def rejection_counts(self, snapshot: str | None = None) -> list[dict]:
        return self._rows(
            "SELECT stage, reason, quarantined, count(*) AS n FROM rejections WHERE snapshot = ? "
            "GROUP BY ALL ORDER BY n DESC, stage, reason",
            [self.resolve_snapshot(snapshot)],
        )

    def rejections(self, snapshot: str | None = None, stage: str | None = None, reason: str | None = None,
                   limit: int = 20) -> list[dict]:
        return self._rows(
            "SELECT stage, reason, detail, coalesce(url, '') AS url, source FROM rejections "
            "WHERE snapshot = ? AND (? IS NULL OR stage = ?) AND (? IS NULL OR reason = ?) "
            "ORDER BY stage, reason, source LIMIT ?",
            [self.resolve_snapshot(snapshot), stage, stage, reason, reason, limit],
        )

    def sample(self, n: int = 5, snapshot: str | None = None, seed: int = 0) -> list[dict]:
        """n kept documents (not removed by dedup), the same ones for the same seed (a seeded hash)."""
        return self._rows(
            "SELECT doc_id, url, title, lang, lang_score, chars, text FROM kept_documents WHERE snapshot = ? "
            "ORDER BY hash(doc_id || ?::VARCHAR) LIMIT ?",
            [self.resolve_snapshot(snapshot), seed, n],
        )

    def unreconciled(self) -> list[dict]:
        """stage_stats rows whose counts do not add up (should always be empty)."""
        return self._rows(
            "SELECT * FROM stage_stats WHERE docs_in <> docs_out + docs_dropped + docs_quarantined"
        )

    def counts(self, snapshot: str) -> dict[str, int]:
        return {
            "documents": self._value("SELECT count(*) FROM documents WHERE snapshot = ?", [snapshot]),
            "rejections": self._value("SELECT count(*) FROM rejections WHERE snapshot = ?", [snapshot]),
            "text_chars": self._value("SELECT coalesce(sum(chars), 0) FROM documents WHERE snapshot = ?", [snapshot]),
            "shards": self._value("SELECT count(*) FROM shards WHERE snapshot = ?", [snapshot]),
        }
