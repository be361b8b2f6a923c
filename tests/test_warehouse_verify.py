"""`crawl2model warehouse verify` and `rebuild` on a real warehouse (curate, dedup and pii of real
articles through the project's flows, a real Prefect server, real DuckDB and Parquet files).

Covers: every Parquet file has a checksum record and verify passes on an undisturbed run; a
corrupted shard file, a deleted stage file, a deleted shard folder and a damaged mirror file are
each found (exit 1) with the fix to run; the fix for a shard (delete it, curate again) restores
it without changing a table; deleting warehouse.duckdb and rebuilding gives every table back
row for row; rebuild refuses a damaged mirror and does not overwrite a newer DuckDB file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from crawl2model.config import load_config
from flows.pipeline import run_pipeline
from tests.conftest import shared
from warehouse.files import read_record
from warehouse.mirror import TABLES, read_manifest
from warehouse.verify import rebuild, verify

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def all_tables(root: Path) -> dict[str, list[tuple]]:
    """Every row of every warehouse table, in a fixed order."""
    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
    finally:
        con.close()


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "--data-root", str(root), "warehouse", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def built(tmp_path_factory, prefect_server):
    """A warehouse made by `run --until pii` over 12 real articles (3 shards) and the sample WARCs."""
    tmp = tmp_path_factory.mktemp("verify")
    pages = tmp / "pages"
    pages.mkdir()
    for page in sorted(shared("html", "articles").glob("*.html.gz"))[:12]:
        shutil.copy(page, pages / page.name)
    root = tmp / "c2m-data"
    inputs = [str(pages), str(shared("warc"))]
    cfg = load_config(overrides=["curate.workers=2", "dedup.workers=2", "pii.workers=2",
                                 "curate.ingest.html_batch_size=4"], data_root=root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("C2M_HOME", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        run_pipeline(inputs, cfg, until="pii", show_progress=False)
    return {"root": root, "inputs": inputs, "cfg": cfg}


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A private copy of the built data root, to damage."""
    root = tmp_path / "c2m-data"
    shutil.copytree(built["root"], root)
    return root


def test_every_parquet_file_is_recorded_and_verify_passes(built):
    root = built["root"]
    files = [p for p in (root / "parquet").rglob("*.parquet") if "tables" not in p.parts]
    kinds = {p.relative_to(root / "parquet").parts[0] for p in files}
    assert kinds == {"shards", "minhash", "pii"}
    for path in files:
        record = read_record(path)
        assert record is not None, path
        assert record["rows"] == pq.ParquetFile(path).metadata.num_rows
    manifest = read_manifest(root)
    assert set(manifest["tables"]) == set(TABLES)
    assert {t: e["rows"] for t, e in manifest["tables"].items()} == {t: len(r) for t, r in all_tables(root).items()}
    problems, checked = verify(root)
    assert problems == [] and checked == len(files) + len(TABLES)
    done = cli(root, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{checked} Parquet files" in done.stdout


def test_rebuild_after_deleting_the_duckdb_file_gives_the_same_tables(copy):
    before = all_tables(copy)
    assert all(before[t] for t in TABLES)  # every table has rows: the comparison means something
    (copy / "warehouse.duckdb").unlink()
    problems, _ = verify(copy)
    assert [(Path(p.path).name, p.what) for p in problems] == [("warehouse.duckdb", "missing")]
    assert problems[0].fix == "crawl2model warehouse rebuild"
    done = cli(copy, "rebuild")
    assert done.returncode == 0, done.stdout + done.stderr
    assert all_tables(copy) == before
    assert verify(copy)[0] == []
    # the flows go on from the rebuilt file: a re-run of the same stages is a no-op
    again = cli(copy, "rebuild")
    assert again.returncode != 0 and "matches the mirror: nothing to rebuild" in again.stderr


def test_damaged_files_are_found_with_their_fix(copy, built):
    shards = sorted(p for p in (copy / "parquet" / "shards").iterdir() if p.is_dir())
    corrupt = shards[0] / "documents.parquet"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a page
    corrupt.write_bytes(bytes(data))
    gone_stage = sorted((copy / "parquet" / "minhash").rglob("*.parquet"))[0]
    gone_stage.unlink()
    gone_shard = shards[1]
    shutil.rmtree(gone_shard)
    mirror = read_manifest(copy)["tables"]["documents"]["file"]
    (copy / "parquet" / "tables" / mirror).write_bytes(b"PAR1 not really")

    problems, _ = verify(copy)
    found = {p.path: p for p in problems}
    assert set(found) == {str(corrupt), str(gone_stage), str(gone_shard), str(copy / "parquet" / "tables" / mirror)}
    assert "checksum mismatch" in found[str(corrupt)].what
    assert f"rm -r {shards[0]} && crawl2model curate {' '.join(built['inputs'])}" in found[str(corrupt)].fix
    assert "missing" in found[str(gone_stage)].what and "crawl2model dedup --snapshot snap-" in found[str(gone_stage)].fix
    assert "missing" in found[str(gone_shard)].what
    assert found[str(copy / "parquet" / "tables" / mirror)].fix.startswith("crawl2model warehouse rebuild --mirror")
    done = cli(copy, "verify")
    assert done.returncode == 1
    assert "4 problem" in done.stdout and "crawl2model warehouse rebuild --mirror" in done.stdout
    # a damaged mirror is never rebuilt from
    refused = cli(copy, "rebuild", "--force")
    assert refused.returncode != 0 and "the table mirror is damaged" in refused.stderr


def test_the_fix_for_a_shard_restores_it_and_changes_no_table(copy, built, prefect_server, monkeypatch):
    before = all_tables(copy)
    shard = sorted(p for p in (copy / "parquet" / "shards").iterdir() if p.is_dir())[0]
    original = read_record(shard / "documents.parquet")
    shutil.rmtree(shard)
    assert [p.path for p in verify(copy)[0]] == [str(shard)]
    monkeypatch.setenv("C2M_HOME", str(copy))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")
    summary = run_pipeline(built["inputs"], built["cfg"].model_copy(update={"data_root": copy}), until="pii",
                           show_progress=False).curate
    assert summary.no_op
    assert read_record(shard / "documents.parquet")["rows"] == original["rows"]
    assert read_record(shard / "documents.parquet")["sha256"] == original["sha256"]  # the same curated text
    assert verify(copy)[0] == []
    after = all_tables(copy)
    # a re-run of curate stamps the snapshot's finished_at again (as before this change); nothing else moves
    unstamped = lambda rows: [row[:2] + row[3:] for row in rows]  # noqa: E731
    assert unstamped(after.pop("snapshots")) == unstamped(before.pop("snapshots"))
    assert after == before


def test_rebuild_keeps_a_newer_duckdb_file_and_mirror_refresh(copy):
    con = duckdb.connect(str(copy / "warehouse.duckdb"))
    con.execute("UPDATE snapshots SET status = 'running'")  # a change the mirror does not hold
    con.close()
    problems, _ = verify(copy)
    assert [p.what for p in problems] == ["the mirror is behind warehouse.duckdb (a run stopped before exporting it)"]
    with pytest.raises(Exception, match="holds a state the mirror does not"):
        rebuild(copy)
    done = cli(copy, "rebuild", "--mirror")
    assert done.returncode == 0, done.stdout + done.stderr
    assert verify(copy)[0] == []
    assert read_manifest(copy)["tables"]["snapshots"]["rows"] == 1
    before = all_tables(copy)
    rebuild(copy, force=True)  # replaces a file that opens: the old one is kept beside it
    assert all_tables(copy) == before
    assert len(list(copy.glob("warehouse.duckdb.replaced-*"))) == 1


def test_files_from_before_checksums_are_flagged_until_recorded(tmp_path):
    import pyarrow as pa

    from warehouse.verify import record_missing

    legacy = tmp_path / "parquet" / "shards" / "k1" / "documents.parquet"
    legacy.parent.mkdir(parents=True)
    pq.write_table(pa.table({"doc_id": ["a", "b", "c"]}), legacy)  # as a data root from before checksums holds it
    found = [p for p in verify(tmp_path)[0] if p.path == str(legacy)]
    assert [p.what for p in found] == ["no checksum recorded"]
    assert found[0].fix.startswith("crawl2model warehouse verify --record")
    assert record_missing(tmp_path) == [legacy] and read_record(legacy)["rows"] == 3
    assert [p for p in verify(tmp_path)[0] if "/parquet/" in p.path] == []
    assert record_missing(tmp_path) == []  # recorded once
