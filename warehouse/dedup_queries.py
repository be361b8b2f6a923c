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

import duckdb
import numpy as np
import pyarrow as pa

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


def candidate_pairs(con: duckdb.DuckDBPyConnection, table: str, max_bucket: int = 10_000) -> list[tuple[str, str]]:
    """Distinct (anchor, member) pairs, anchor < member: each member of a bucket with the
    bucket's smallest doc_id. Sorted, so the same table always gives the same list.

    Buckets over `max_bucket` documents are paired like the others (the star is linear) and
    logged as a warning: they are usually templated or empty pages worth a look.
    """
    table = _checked(table)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _buckets AS
            SELECT band, hash, min(doc_id) AS anchor, count(*) AS size
            FROM {table} GROUP BY band, hash HAVING count(*) > 1"""
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
