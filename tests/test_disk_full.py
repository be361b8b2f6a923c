"""The data root's disk full: a clear error (the path, the free space), no half-written file a
reader would trust, and a re-run after space is freed that completes with the counts of an
undisturbed run.

Where the machine allows it (root, `mount -t tmpfs`), the data root is a small tmpfs filled with a
ballast file, so the writes really fail with ENOSPC: in curation's worker processes (shard
Parquet), in DuckDB (a commit's WAL write) and in the table mirror export. Without a mount those
tests skip and the simulated ones still run: pyarrow's writer raising ENOSPC half-way through a
file, at the boundary the warehouse calls.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from warehouse import Warehouse
from warehouse.files import DiskFullError, read_record
from warehouse.mirror import read_manifest
from warehouse.shard_files import shard_dir, shards_root, write_shard, write_table
from warehouse.verify import verify

FREE_TEXT = "free of"


def _doc(i: int, text: str = "some text") -> dict:
    return {"doc_id": f"d{i:04d}", "url": f"http://127.0.0.1/{i}", "domain": "127.0.0.1", "source": "t", "fetched_at": None,
            "title": "t", "date": None, "text": text, "lang": "en", "lang_score": 1.0, "chars": len(text),
            "quality": [], "snapshot": "", "shard": ""}


def _stats(key: str, n: int) -> list[dict]:
    return [{"snapshot": "", "shard": key, "stage": "ingest", "stage_order": 1, "docs_in": n, "docs_out": n,
             "docs_dropped": 0, "docs_quarantined": 0, "bytes": 0, "seconds": 0.0}]


def leftovers(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if ".tmp-" in p.name]


def file_problems(root: Path) -> list:
    """verify's problems with Parquet files (these tests make no DuckDB file)."""
    return [p for p in verify(root)[0] if "/parquet/" in p.path]


@pytest.fixture
def enospc_after(monkeypatch):
    """Make pyarrow's Parquet writer write half a file, then fail as a full disk would, from call n on."""
    real = pq.write_table
    calls = {"n": 0}

    def arm(n: int):
        def write(table, where, **kwargs):
            calls["n"] += 1
            if calls["n"] < n:
                return real(table, where, **kwargs)
            real(table, where, **kwargs)
            data = Path(where).read_bytes()
            Path(where).write_bytes(data[: len(data) // 2])  # what a full disk leaves: a truncated file
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        monkeypatch.setattr(pq, "write_table", write)
    return arm


# --- simulated ENOSPC (always) ------------------------------------------------------------------


def test_a_shard_that_hits_a_full_disk_leaves_nothing_and_says_where(tmp_path, enospc_after):
    enospc_after(2)  # documents.parquet is written, rejections.parquet fails half-way
    with pytest.raises(DiskFullError) as caught:
        write_shard(tmp_path, "k1", [_doc(1)], [], _stats("k1", 1))
    message = str(caught.value)
    assert "disk full while writing" in message and str(shards_root(tmp_path)) in message and FREE_TEXT in message
    assert not shard_dir(tmp_path, "k1").exists() and leftovers(tmp_path) == []
    assert file_problems(tmp_path) == []  # nothing a reader could take for a shard


def test_a_stage_file_that_hits_a_full_disk_leaves_nothing(tmp_path, enospc_after):
    path = tmp_path / "parquet" / "minhash" / "key" / "k1.parquet"
    enospc_after(1)
    with pytest.raises(DiskFullError, match=str(path)):
        write_table(path, pa.table({"doc_id": ["a", "b"]}))
    assert not path.exists() and read_record(path) is None and leftovers(tmp_path) == []


def test_verify_refuses_a_partial_file_under_a_final_name(tmp_path):
    write_shard(tmp_path, "k1", [_doc(i, "x" * 500) for i in range(20)], [], _stats("k1", 20))
    write_table(tmp_path / "parquet" / "pii" / "key" / "k1.parquet", pa.table({"doc_id": ["a"]}))
    assert file_problems(tmp_path) == []
    documents = shard_dir(tmp_path, "k1") / "documents.parquet"
    documents.write_bytes(documents.read_bytes()[:-100])  # e.g. copied back from a full disk by hand
    unrecorded = tmp_path / "parquet" / "pii" / "key" / "k2.parquet"
    pq.write_table(pa.table({"doc_id": ["a"]}), unrecorded)  # written around warehouse.files
    found = {p.path: p.what for p in file_problems(tmp_path)}
    assert found == {str(documents): found[str(documents)], str(unrecorded): "no checksum recorded"}
    assert found[str(documents)].startswith("checksum mismatch")


# --- a real full disk (tmpfs) -------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 8 MiB tmpfs; `fill(free_bytes)` leaves that much free with a ballast file, `free()` removes it."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the simulated ENOSPC tests cover the writers")
    ballast = mount / "ballast"

    class Disk:
        path = mount

        @staticmethod
        def fill(free_bytes: int) -> None:
            with open(ballast, "ab") as f:
                f.write(b"\0" * max(0, shutil.disk_usage(mount).free - free_bytes))

        @staticmethod
        def free() -> None:
            ballast.unlink(missing_ok=True)

    try:
        yield Disk
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_duckdb_commit_on_a_full_disk_rolls_back_and_the_file_stays_good(small_disk):
    root = small_disk.path / "c2m-data"
    big = "lorem ipsum dolor sit amet " * 400  # ~10 kB a document: 40 documents need ~400 kB of WAL
    write_shard(root, "k1", [_doc(i, big + str(i)) for i in range(3)], [], _stats("k1", 3))
    write_shard(root, "k2", [_doc(100 + i, big + str(100 + i)) for i in range(40)], [], _stats("k2", 40))
    with Warehouse.open(root) as wh:
        wh.begin_snapshot("s1", "h", [])
        wh.load_shard("k1", "s1", "html", "k1")
    small_disk.fill(64 * 1024)
    with pytest.raises(DiskFullError) as caught:
        with Warehouse.open(root) as wh:
            wh.load_shard("k2", "s1", "html", "k2")
    assert str(root / "warehouse.duckdb") in str(caught.value) and FREE_TEXT in str(caught.value)
    with Warehouse.open(root, read_only=True) as wh:  # the commit never happened; the file opens
        assert wh.counts("s1")["documents"] == 3 and wh.loaded_shards() == {"k1"}
    small_disk.free()
    with Warehouse.open(root) as wh:  # the re-run
        assert wh.load_shard("k2", "s1", "html", "k2") == {"stored": 40, "duplicates": 0}
    assert read_manifest(root)["tables"]["documents"]["rows"] == 43
    assert verify(root)[0] == [] and leftovers(root) == []


def test_mirror_export_on_a_full_disk_keeps_the_last_good_mirror(small_disk):
    root = small_disk.path / "c2m-data"
    write_shard(root, "k1", [_doc(1)], [], _stats("k1", 1))
    with Warehouse.open(root) as wh:
        wh.begin_snapshot("s1", "h", [])
        wh.load_shard("k1", "s1", "html", "k1")
    before = read_manifest(root)
    write_shard(root, "k2", [_doc(2)], [], _stats("k2", 1))
    with Warehouse.open(root) as wh:
        wh.load_shard("k2", "s1", "html", "k2")
        small_disk.fill(0)
        with pytest.raises(DiskFullError, match=FREE_TEXT):
            wh.close()
    assert read_manifest(root) == before and leftovers(root) == []
    small_disk.free()
    problems, _ = verify(root)
    assert [p.fix for p in problems] == ["crawl2model warehouse rebuild --mirror"]  # behind, and says how


def _tables(root: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        return {
            "documents": con.execute("SELECT doc_id, url, source, title, text, lang, snapshot, shard FROM documents "
                                     "ORDER BY ALL").fetchall(),
            "rejections": con.execute("SELECT * FROM rejections ORDER BY ALL").fetchall(),
            "stage_stats": con.execute("SELECT snapshot, stage, docs_in, docs_out, docs_dropped, docs_quarantined, bytes "
                                       "FROM stage_stats ORDER BY ALL").fetchall(),
        }
    finally:
        con.close()


@pytest.mark.slow
def test_curation_on_a_full_disk_fails_clearly_and_a_rerun_completes(small_disk, tmp_path, prefect_server, monkeypatch):
    from mlflow import MlflowClient

    from crawl2model.config import load_config
    from flows.pipeline import run_pipeline
    from tests.conftest import shared

    pages = tmp_path / "pages"  # 8 real articles: 2 shards of 4 files
    pages.mkdir()
    for page in sorted(shared("html", "articles").glob("*.html.gz"))[:8]:
        shutil.copy(page, pages / page.name)
    # MLflow's store and artifacts live off the small disk: the path under test is the warehouse
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    MlflowClient().create_experiment("crawl2model", artifact_location=(tmp_path / "artifacts").as_uri())
    overrides = ["curate.workers=2", "curate.ingest.html_batch_size=4"]

    clean = tmp_path / "clean"
    monkeypatch.setenv("C2M_HOME", str(clean))
    undisturbed = run_pipeline([str(pages)], load_config(overrides=overrides, data_root=clean), until="curate",
                               show_progress=False).curate

    root = small_disk.path / "c2m-data"
    root.mkdir()
    monkeypatch.setenv("C2M_HOME", str(root))
    cfg = load_config(overrides=overrides, data_root=root)
    small_disk.fill(120 * 1024)  # room for about one shard of two
    with pytest.raises(Exception) as caught:
        run_pipeline([str(pages)], cfg, until="curate", show_progress=False)
    message = str(caught.value)
    assert "disk full while writing " + str(root) in message and FREE_TEXT in message, message
    assert leftovers(root) == []
    assert [p for p in verify(root)[0] if "mirror" not in p.what] == []  # every file in place is whole

    small_disk.free()
    rerun = run_pipeline([str(pages)], cfg, until="curate", show_progress=False).curate
    assert (rerun.documents, rerun.rejections, rerun.text_chars) == (
        undisturbed.documents, undisturbed.rejections, undisturbed.text_chars)
    assert _tables(root) == _tables(clean)
    assert verify(root)[0] == []
