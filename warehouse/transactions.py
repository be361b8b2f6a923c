"""All-or-nothing writes to the warehouse's DuckDB: `transaction` (BEGIN ... COMMIT, ROLLBACK
when the block raises; a full disk raised as warehouse.files.DiskFullError). A leaf module, so the
store and the query modules (dedup, pii) all use it without importing each other.

    from warehouse.transactions import transaction
    with transaction(con):
        con.execute("INSERT ...")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from warehouse.files import disk_full_error, is_disk_full


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, or ROLLBACK when the block raises: every write here is all or nothing."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # a COMMIT that failed (e.g. the WAL write found the disk full) has rolled back already
        if is_disk_full(exc):
            raise disk_full_error(database_path(con), exc) from exc
        raise


def database_path(con: duckdb.DuckDBPyConnection) -> Path:
    return Path(con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()[0])
