"""PII scrubbing in the warehouse: the scrubbed text replaces a snapshot's document text.

    from warehouse.pii_queries import apply_scrub
    apply_scrub(wh.con, "snap-...", scrub_files, seconds, config_hash, summary)

The scrubbed text comes from the per-shard files of tasks.snapshot_shards, scrubbed from the
curated text, so scrubbing again with another replacement starts from the original, not from
placeholders. Every document of the snapshot is scrubbed, duplicates included: a removed
duplicate keeps its row (for `warehouse duplicates`) and must not keep PII either.
"""

from __future__ import annotations

import duckdb

from warehouse.dedup_queries import record_stage
from warehouse.schema import FUNNEL_STAGES, PII_COLUMNS
from warehouse.transactions import transaction


def apply_scrub(con: duckdb.DuckDBPyConnection, snapshot: str, scrub_files: list[str], seconds: float,
                config_hash: str, summary: dict) -> dict[str, int]:
    """Replace text, chars and pii_* counts of the snapshot's documents, add the `pii` rows of
    stage_stats and the ledger row, in one transaction. Returns the totals per pii column and
    the documents counted (docs: kept by dedup, docs_with_pii, docs_scrubbed: all)."""
    sums = ", ".join(f"sum(p.{c})" for c in PII_COLUMNS)
    try:
        with transaction(con):
            if scrub_files:
                con.execute(
                    """CREATE OR REPLACE TEMP TABLE scrubbed AS
                       SELECT p.* FROM read_parquet(?) p JOIN documents d ON d.doc_id = p.doc_id AND d.shard = p.shard
                       WHERE d.snapshot = ?""", [scrub_files, snapshot])
            else:  # a snapshot without documents
                con.execute("CREATE OR REPLACE TEMP TABLE scrubbed AS SELECT doc_id, shard, text, chars, "
                            + ", ".join(PII_COLUMNS) + " FROM documents WHERE false")
            missing = con.execute("SELECT count(*) FROM documents WHERE snapshot = ? AND doc_id NOT IN "
                                  "(SELECT doc_id FROM scrubbed)", [snapshot]).fetchone()[0]
            if missing:
                raise RuntimeError(f"{missing} documents of {snapshot} have no scrubbed text; re-run `crawl2model scrub`")
            con.execute(
                "UPDATE documents SET text = p.text, chars = p.chars, "
                + ", ".join(f"{c} = p.{c}" for c in PII_COLUMNS)
                + " FROM scrubbed p WHERE documents.doc_id = p.doc_id")
            # The funnel row and the totals count the documents dedup kept (the funnel goes on from
            # near_dedup's docs_out); removed duplicates were scrubbed all the same.
            con.execute("DELETE FROM shard_stats WHERE snapshot = ? AND stage = 'pii'", [snapshot])
            con.execute("CREATE OR REPLACE TEMP TABLE scrubbed_kept AS SELECT p.* FROM scrubbed p "
                        "JOIN documents d USING (doc_id) WHERE d.duplicate_of IS NULL")
            total = con.execute("SELECT count(*) FROM scrubbed_kept").fetchone()[0] or 1
            con.execute(
                f"""INSERT INTO shard_stats (snapshot, shard, stage, stage_order, docs_in, docs_out, docs_dropped,
                                             docs_quarantined, bytes, seconds, {", ".join(PII_COLUMNS)})
                    SELECT ?, p.shard, 'pii', ?, count(*), count(*), 0, 0, sum(strlen(p.text)), ? * count(*) / ?, {sums}
                    FROM scrubbed_kept p GROUP BY p.shard""",
                [snapshot, FUNNEL_STAGES.index("pii"), seconds, total])
            totals = dict(zip(PII_COLUMNS, con.execute(f"SELECT {sums} FROM scrubbed_kept p").fetchone()))
            totals = {c: int(v or 0) for c, v in totals.items()}
            totals["docs"], totals["docs_with_pii"] = con.execute(
                "SELECT count(*), count(*) FILTER (" + " + ".join(PII_COLUMNS) + " > 0) FROM scrubbed_kept").fetchone()
            totals["docs_scrubbed"] = con.execute("SELECT count(*) FROM scrubbed").fetchone()[0]
            record_stage(con, snapshot, "pii", config_hash, {**summary, **totals})
    finally:
        con.execute("DROP TABLE IF EXISTS scrubbed; DROP TABLE IF EXISTS scrubbed_kept")
    return totals


def kept_text_contains(con: duckdb.DuckDBPyConnection, variants: list[str]) -> bool:
    """Whether the text of a document the warehouse keeps contains any of the strings (a planted
    secret, as written and without separators: the privacy audit's leak check)."""
    if not variants:
        return False
    found = " OR ".join(["contains(text, ?)"] * len(variants))  # the strings themselves are parameters
    return con.execute(f"SELECT count(*) > 0 FROM kept_documents WHERE {found}", variants).fetchone()[0]
