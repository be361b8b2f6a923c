"""The warehouse: Parquet files (zstd) under the data root and the DuckDB file over them.

This package is the only code that speaks SQL or writes Parquet. Workers write one folder of
Parquet files per shard (`warehouse.shard_files`); the main process loads finished shards into
DuckDB in one transaction each and answers every query (`warehouse.store.Warehouse`).

    from warehouse import Warehouse
    with Warehouse.open(data_root, read_only=True) as wh:
        print(wh.funnel())
"""

from warehouse.store import Warehouse, WarehouseError

__all__ = ["Warehouse", "WarehouseError"]
