"""Safe file writes of the warehouse: complete or absent, checksummed, and a clear error when the disk is full.

    from warehouse.files import write_parquet, write_json, read_record, DiskFullError
    write_parquet(table, path)       # path + path.sha256.json (sha256, rows, bytes), both atomic
    write_json(path, obj)            # a temp name, fsync, rename
    read_record(path)                # the checksum record of a Parquet file, or None

Every Parquet file is written under a temporary name (`<name>.tmp-<pid>`), synced and renamed
into place, so a reader never sees a half-written file under a final name. Its checksum record
(a small JSON file beside it, `<name>.sha256.json`) is written before the rename: a file in
place always has its record, and `crawl2model warehouse verify` (warehouse.verify) compares
the two. A write that runs out of space removes what it wrote and raises `DiskFullError`,
naming the path and the free space left.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

RECORD_SUFFIX = ".sha256.json"
_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


class DiskFullError(RuntimeError):
    """The data root's file system has no room for a write (what was being written is removed)."""


def record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from the OS, or the same as text (pyarrow and DuckDB raise their own types)."""
    while exc is not None:
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in _FULL):
            return True
        if any(t in str(exc) for t in _FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def disk_full_error(path: Path, exc: BaseException) -> DiskFullError:
    """A DiskFullError naming the path, the free space of its file system and what to do."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        usage = shutil.disk_usage(where)
        space = f"{human(usage.free)} free of {human(usage.total)} on the file system holding {where}"
    except OSError:
        space = "free space unknown"
    return DiskFullError(
        f"disk full while writing {path}: {space}. Free some space (or use another data root with "
        f"--data-root / C2M_HOME) and re-run the same command: what finished is kept and nothing "
        f"half-written is used. ({type(exc).__name__}: {exc})")


@contextmanager
def guard(path: Path, cleanup: Iterable[Path] = ()) -> Iterator[None]:
    """On any error, remove `cleanup` (temporary files or folders); a full disk becomes DiskFullError."""
    try:
        yield
    except BaseException as exc:
        for p in cleanup:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise disk_full_error(path, exc) from exc
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj) -> Path:
    """Write JSON under a temporary name, sync it and rename it into place."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with guard(path, [tmp]):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path, rows: int | None = None) -> dict:
    """sha256, size and row count of a Parquet file (rows from its footer unless given)."""
    path = Path(path)
    if rows is None:
        rows = pq.ParquetFile(path).metadata.num_rows
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size, "rows": int(rows)}


def write_parquet(table: pa.Table, path: Path, compression: str = "zstd") -> Path:
    """Write a Parquet file and its checksum record: complete or absent (see the module doc)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    record = record_path(path)
    with guard(path, [tmp]):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp, compression=compression)
        _fsync(tmp)
        write_json(record, {"file": path.name, **file_record(tmp, table.num_rows),
                            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        try:
            os.replace(tmp, path)
        except BaseException:
            record.unlink(missing_ok=True)
            raise
    return path


def read_record(path: Path) -> dict | None:
    """The checksum record of a Parquet file, or None (none written, or unreadable)."""
    try:
        return json.loads(record_path(Path(path)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
