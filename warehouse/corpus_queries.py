"""The training corpus as later stages read it: the kept documents of a snapshot and of every
snapshot before it, shard by shard, in load order.

    from warehouse.corpus_queries import corpus_shards, shard_texts, corpus_stamp
    for shard in corpus_shards(wh.con, snapshot):
        rows = shard_texts(wh.con, snapshot, shard)     # [(doc_id, text)], by doc_id (with_title=True: + title)
    stamp = corpus_stamp(wh.con, snapshot)             # changes when any of its snapshots is re-processed

A new snapshot adds only what dedup kept of it, so the corpus of the newest snapshot is the
whole deduplicated, scrubbed collection so far.
"""

from __future__ import annotations

import duckdb

_CORPUS = """d.duplicate_of IS NULL AND s.created_at <= (SELECT created_at FROM snapshots WHERE snapshot = $snapshot)"""


def corpus_shards(con: duckdb.DuckDBPyConnection, snapshot: str) -> list[str]:
    return [r[0] for r in con.execute(
        f"""SELECT d.shard FROM documents d JOIN snapshots s USING (snapshot) JOIN shards l ON l.shard = d.shard
            WHERE {_CORPUS} GROUP BY d.shard ORDER BY min(l.seq)""", {"snapshot": snapshot}).fetchall()]


def shard_texts(con: duckdb.DuckDBPyConnection, snapshot: str, shard: str,
                with_title: bool = False) -> list[tuple[str, str]]:
    """[(doc_id, text)], or [(doc_id, title, text)] with_title, ordered by doc_id."""
    return con.execute(
        f"""SELECT d.doc_id, {'d.title, ' if with_title else ''}d.text FROM documents d JOIN snapshots s USING (snapshot)
            WHERE {_CORPUS} AND d.shard = $shard ORDER BY d.doc_id""",
        {"snapshot": snapshot, "shard": shard}).fetchall()


def corpus_stamp(con: duckdb.DuckDBPyConnection, snapshot: str) -> list:
    """Each snapshot of the corpus with the config and time of its dedup and pii runs."""
    return [[r[0], r[1], str(r[2]), r[3], str(r[4])] for r in con.execute(
        """SELECT s.snapshot, d.config_hash, d.finished_at, p.config_hash, p.finished_at
           FROM snapshots s
           LEFT JOIN stage_runs d ON d.snapshot = s.snapshot AND d.stage = 'dedup'
           LEFT JOIN stage_runs p ON p.snapshot = s.snapshot AND p.stage = 'pii'
           WHERE s.created_at <= (SELECT created_at FROM snapshots WHERE snapshot = ?)
           ORDER BY s.created_at""", [snapshot]).fetchall()]
