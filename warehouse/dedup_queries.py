"""MinHash LSH in DuckDB: the band table, and the candidate pairs drawn from equal band hashes.

    import duckdb
    from warehouse.dedup_queries import candidate_pairs, write_band_table
    con = duckdb.connect()                                   # or the warehouse's connection
    write_band_table(con, "minhash_bands", doc_ids, bands)   # bands: (n, b) uint64, MinHasher.band_hashes
    pairs = candidate_pairs(con, "minhash_bands")            # [(doc_id, doc_id), ...], smaller id first

Two documents are candidates when they share a bucket, i.e. the same hash in the same band.
Buckets come from a GROUP BY in DuckDB, which spills to disk past its memory limit, so neither
the pairs nor the buckets ever sit in one Python dict. Within a bucket each member is paired
with the bucket's smallest doc_id only (a star): that is all union-find needs to connect the
bucket, and it keeps the pair count linear in the bucket size, so a bucket of 20,000 templated
pages gives 19,999 pairs, not 200 million.

Values are parameters; a table name cannot be one, so it is checked to be a plain identifier.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from warehouse.schema import FUNNEL_STAGES
from warehouse.transactions import transaction

log = logging.getLogger(__name__)

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def _checked(table: str) -> str:
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"not a plain table name: {table!r}")
    return table


def write_band_table(con: duckdb.DuckDBPyConnection, table: str, doc_ids: list[str], bands: np.ndarray,
                     replace: bool = True) -> None:
    """Write one row (doc_id VARCHAR, band INTEGER, hash UBIGINT) per document and band.

    The rows are built as Arrow columns from the (n, b) array, row-major, so doc i band j is
    row i*b + j. `replace=False` appends (creating the table if needed), e.g. shard by shard.
    """
    table = _checked(table)
    bands = np.ascontiguousarray(bands, dtype=np.uint64)
    n, per_doc = bands.shape
    if len(doc_ids) != n:
        raise ValueError(f"{len(doc_ids)} doc_ids for {n} rows of band hashes")
    _arrow_band_rows = pa.table({
        "doc_id": pa.array(doc_ids, pa.string()).take(np.repeat(np.arange(n), per_doc)),
        "band": pa.array(np.tile(np.arange(per_doc, dtype=np.int32), n)),
        "hash": pa.array(bands.ravel()),
    })
    # DuckDB reads the Arrow table by its variable name. (Not con.register: DuckDB 2 refuses it
    # while the caller still holds an unfinished result on the connection, e.g. after fetchone.)
    if replace:
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT doc_id, band, hash FROM _arrow_band_rows")
    else:
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} (doc_id VARCHAR, band INTEGER, hash UBIGINT)")
        con.execute(f"INSERT INTO {table} SELECT doc_id, band, hash FROM _arrow_band_rows")


def candidate_pairs(con: duckdb.DuckDBPyConnection, table: str, max_bucket: int = 10_000,
                    new_only: bool = False) -> list[tuple[str, str]]:
    """Distinct (anchor, member) pairs, anchor < member: each member of a bucket with the
    bucket's smallest doc_id. Sorted, so the same table always gives the same list.

    With `new_only`, the table has a boolean column `new` and only buckets holding at least one
    new document give pairs (documents of earlier snapshots were deduplicated among themselves).
    Buckets over `max_bucket` documents are paired like the others (the star is linear) and
    logged as a warning: they are usually templated or empty pages worth a look.
    """
    table = _checked(table)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _buckets AS
            SELECT band, hash, min(doc_id) AS anchor, count(*) AS size
            FROM {table} GROUP BY band, hash
            HAVING count(*) > 1 {"AND bool_or(new)" if new_only else ""}"""
    )
    try:
        [(huge, largest)] = con.execute(
            "SELECT count(*), max(size) FROM _buckets WHERE size > ?", [max_bucket]).fetchall()
        if huge:
            log.warning("%d LSH buckets hold more than %d documents (largest: %d); paired as stars",
                        huge, max_bucket, largest)
        return con.execute(
            f"""SELECT DISTINCT b.anchor, t.doc_id
                FROM {table} t JOIN _buckets b ON t.band = b.band AND t.hash = b.hash
                WHERE t.doc_id <> b.anchor
                ORDER BY 1, 2"""
        ).fetchall()
    finally:
        con.execute("DROP TABLE IF EXISTS _buckets")


# --- a snapshot's dedup in the warehouse --------------------------------------------------------
#
# The scope of a snapshot's dedup: its own documents plus the kept documents of every earlier
# snapshot (so a weekly crawl keeps only what is new). Signatures come from the per-shard
# Parquet files of tasks.snapshot_shards, read in place by DuckDB.

DEDUP_STAGES = ("exact_dedup", "near_dedup")
_NO_SIGNATURES = ("(SELECT NULL::VARCHAR AS doc_id, NULL::VARCHAR AS shard, NULL::BIGINT AS chars, NULL::BIGINT AS bytes, "
                  "NULL::VARCHAR AS text_hash, NULL::UBIGINT[] AS bands, NULL::UBIGINT[] AS signature, "
                  "NULL::UBIGINT[] AS shingles WHERE false)")


def _signatures(files: list[str]) -> str:
    """The signature files as a relation (read_parquet refuses an empty list: an empty snapshot)."""
    return "read_parquet($files)" if files else _NO_SIGNATURES

_IN_SCOPE = """(d.snapshot = $snapshot OR (d.duplicate_of IS NULL AND s.created_at <
               (SELECT created_at FROM snapshots WHERE snapshot = $snapshot)))"""


def scope_shards(con: duckdb.DuckDBPyConnection, snapshot: str) -> list[str]:
    """The shards holding documents in the scope of `snapshot`'s dedup (they need signatures)."""
    return [r[0] for r in con.execute(
        f"SELECT DISTINCT d.shard FROM documents d JOIN snapshots s USING (snapshot) WHERE {_IN_SCOPE} ORDER BY 1",
        {"snapshot": snapshot}).fetchall()]


def build_scope(con: duckdb.DuckDBPyConnection, snapshot: str, signature_files: list[str]) -> dict[str, int]:
    """TEMP TABLE dedup_scope (doc_id, shard, new, created_at, chars, bytes, text_hash) and
    TEMP TABLE dedup_bands (doc_id, new, band, hash) of one representative per text_hash (its
    smallest doc_id; `new` when any document with that hash is new). Returns scope counts."""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE dedup_scope AS
            SELECT d.doc_id, d.shard, d.snapshot = $snapshot AS new, s.created_at, m.chars, m.bytes, m.text_hash
            FROM documents d JOIN snapshots s USING (snapshot)
            JOIN {_signatures(signature_files)} m ON m.doc_id = d.doc_id AND m.shard = d.shard
            WHERE {_IN_SCOPE}
            QUALIFY row_number() OVER (PARTITION BY d.doc_id) = 1""",
        {"snapshot": snapshot, **({"files": signature_files} if signature_files else {})})
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE dedup_bands AS
           WITH reps AS (SELECT min(doc_id) AS doc_id, arg_min(shard, doc_id) AS shard, bool_or(new) AS new
                         FROM dedup_scope GROUP BY text_hash)
           SELECT m.doc_id, r.new, generate_subscripts(m.bands, 1) - 1 AS band, unnest(m.bands) AS hash
           FROM {_signatures(signature_files)} m JOIN reps r ON m.doc_id = r.doc_id AND m.shard = r.shard""",
        {"files": signature_files} if signature_files else {})
    new, old = con.execute("SELECT count(*) FILTER (new), count(*) FILTER (NOT new) FROM dedup_scope").fetchone()
    missing = con.execute("SELECT count(*) FROM documents WHERE snapshot = ?", [snapshot]).fetchone()[0] - new
    if missing:
        raise RuntimeError(f"{missing} documents of {snapshot} have no signature; re-run dedup")
    return {"docs_new": new, "docs_earlier": old}


def exact_pairs(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """Star pairs (smallest doc_id, other) within each text_hash group that holds a new document."""
    return con.execute(
        """WITH groups AS (SELECT text_hash, min(doc_id) AS anchor FROM dedup_scope
                           GROUP BY text_hash HAVING count(*) > 1 AND bool_or(new))
           SELECT g.anchor, s.doc_id FROM dedup_scope s JOIN groups g USING (text_hash)
           WHERE s.doc_id <> g.anchor ORDER BY 1, 2""").fetchall()


def scope_documents(con: duckdb.DuckDBPyConnection, doc_ids: list[str]) -> dict[str, dict]:
    """{doc_id: {doc_id, new, snapshot_created_at, chars, text_hash}} for documents in the scope."""
    ids = pa.table({"doc_id": pa.array(doc_ids, pa.string())})
    cur = con.execute("SELECT doc_id, new, created_at AS snapshot_created_at, chars, text_hash "
                      "FROM dedup_scope SEMI JOIN ids USING (doc_id)")
    names = [d[0] for d in cur.description]
    return {row[0]: dict(zip(names, row)) for row in cur.fetchall()}


def shards_of(con: duckdb.DuckDBPyConnection, doc_ids: list[str]) -> dict[str, str]:
    """{doc_id: shard} of documents in the scope."""
    ids = pa.table({"doc_id": pa.array(doc_ids, pa.string())})
    return dict(con.execute("SELECT doc_id, shard FROM dedup_scope SEMI JOIN ids USING (doc_id)").fetchall())


def _files_holding(con: duckdb.DuckDBPyConnection, signature_files: list[str], ids: pa.Table) -> list[str]:
    """The signature files of the shards that hold these documents (one file per shard)."""
    shards = {r[0] for r in con.execute("SELECT DISTINCT shard FROM dedup_scope SEMI JOIN ids USING (doc_id)").fetchall()}
    return [f for f in signature_files if Path(f).stem in shards]


def shingle_sets(con: duckdb.DuckDBPyConnection, signature_files: list[str], doc_ids: list[str]) -> dict[str, np.ndarray]:
    """{doc_id: sorted distinct shingle hashes} of documents in the scope, read from the files of
    their shards only (callers batch documents by shard, so a batch reads few files)."""
    ids = pa.table({"doc_id": pa.array(doc_ids, pa.string())})
    files = _files_holding(con, signature_files, ids)
    if not files:
        return {}
    table = con.sql(
        """SELECT m.doc_id, m.shingles FROM read_parquet($files) m
           JOIN dedup_scope s ON s.doc_id = m.doc_id AND s.shard = m.shard SEMI JOIN ids ON ids.doc_id = m.doc_id""",
        params={"files": files}).to_arrow_table()
    column = table.column("shingles").combine_chunks()
    return {doc_id: column[i].values.to_numpy() for i, doc_id in enumerate(table.column("doc_id").to_pylist())}


def signatures_of(con: duckdb.DuckDBPyConnection, signature_files: list[str], doc_ids: list[str]) -> dict[str, list]:
    """{doc_id: MinHash signature} of documents in the scope, from the files of their shards."""
    ids = pa.table({"doc_id": pa.array(doc_ids, pa.string())})
    files = _files_holding(con, signature_files, ids)
    if not files:
        return {}
    return dict(con.execute("SELECT doc_id, signature FROM read_parquet(?) SEMI JOIN ids USING (doc_id)",
                            [files]).fetchall())


def apply_dedup(con: duckdb.DuckDBPyConnection, snapshot: str, decisions: pa.Table, seconds: float,
                config_hash: str, summary: dict) -> None:
    """Store a snapshot's dedup in one transaction, replacing an earlier dedup of it.

    `decisions` has a row per new document in a cluster of two or more: doc_id, dup_cluster
    (the kept doc_id), dup_cluster_size, duplicate_of (NULL when kept) and reason
    (exact_duplicate, near_duplicate or NULL). Every other document of the snapshot is its own
    cluster of one. Rejections and per-shard stage stats (exact_dedup, then near_dedup) follow.
    """
    with transaction(con):
        con.execute("DELETE FROM rejections WHERE snapshot = ? AND stage IN ('exact_dedup', 'near_dedup')", [snapshot])
        con.execute("DELETE FROM shard_stats WHERE snapshot = ? AND stage IN ('exact_dedup', 'near_dedup')", [snapshot])
        con.execute(
            """UPDATE documents SET text_hash = s.text_hash, dup_cluster = coalesce(c.dup_cluster, s.doc_id),
                      dup_cluster_size = coalesce(c.dup_cluster_size, 1), duplicate_of = c.duplicate_of
               FROM dedup_scope s LEFT JOIN decisions c USING (doc_id)
               WHERE documents.doc_id = s.doc_id AND s.new""")
        con.execute(
            """INSERT INTO rejections
               SELECT d.doc_id, d.url, d.source,
                      CASE c.reason WHEN 'exact_duplicate' THEN 'exact_dedup' ELSE 'near_dedup' END,
                      c.reason, 'kept doc_id ' || c.duplicate_of || ' (cluster of ' || c.dup_cluster_size || ')',
                      false, ?, d.shard
               FROM documents d JOIN decisions c USING (doc_id)
               WHERE d.snapshot = ? AND c.reason IS NOT NULL""", [snapshot, snapshot])
        # Worker and main-process seconds are shared out over shards by document count.
        total = con.execute("SELECT count(*) FROM dedup_scope WHERE new").fetchone()[0] or 1
        for stage, entered, removed in (
                ("exact_dedup", "true", "c.reason = 'exact_duplicate'"),
                ("near_dedup", "c.reason IS DISTINCT FROM 'exact_duplicate'", "c.reason = 'near_duplicate'")):
            con.execute(
                f"""INSERT INTO shard_stats (snapshot, shard, stage, stage_order, docs_in, docs_out, docs_dropped,
                                             docs_quarantined, bytes, seconds)
                    SELECT $snapshot, s.shard, $stage, $order, count(*) FILTER ({entered}),
                           count(*) FILTER ({entered} AND NOT coalesce({removed}, false)),
                           count(*) FILTER ({removed}), 0, coalesce(sum(s.bytes) FILTER ({entered}), 0),
                           $seconds * count(*) / $total / 2
                    FROM dedup_scope s LEFT JOIN decisions c USING (doc_id)
                    WHERE s.new GROUP BY s.shard""",
                {"snapshot": snapshot, "stage": stage, "order": FUNNEL_STAGES.index(stage), "seconds": seconds,
                 "total": total})
        record_stage(con, snapshot, "dedup", config_hash, summary)


def record_stage(con: duckdb.DuckDBPyConnection, snapshot: str, stage: str, config_hash: str, summary: dict) -> None:
    """The ledger row saying `stage` ran on `snapshot` with this config (inside the caller's transaction)."""
    import json
    from datetime import datetime, timezone

    con.execute("INSERT OR REPLACE INTO stage_runs VALUES (?, ?, ?, ?, ?)",
                [snapshot, stage, config_hash, datetime.now(timezone.utc), json.dumps(summary)])


def cluster_of(con: duckdb.DuckDBPyConnection, doc_id: str) -> list[dict]:
    """Every document in `doc_id`'s dedup cluster, across snapshots, the kept one first."""
    cur = con.execute(
        """WITH target AS (SELECT dup_cluster FROM documents WHERE doc_id = ?)
           SELECT d.doc_id, d.doc_id = d.dup_cluster AS kept, d.snapshot, d.url, d.title, d.chars,
                  d.dup_cluster_size, d.duplicate_of, r.reason
           FROM documents d JOIN target t ON d.dup_cluster = t.dup_cluster
           LEFT JOIN rejections r ON r.doc_id = d.doc_id AND r.stage IN ('exact_dedup', 'near_dedup')
                                 AND r.snapshot = d.snapshot
           ORDER BY kept DESC, d.snapshot, d.doc_id""", [doc_id])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]
