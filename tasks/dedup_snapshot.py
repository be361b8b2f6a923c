"""Deduplicate one warehouse snapshot: exact duplicates, then MinHash near duplicates, within the
snapshot and against the kept documents of every earlier snapshot.

    from tasks.dedup_snapshot import deduplicate_snapshot
    with Warehouse.open(root) as wh:                       # signatures made by tasks.snapshot_shards
        result = deduplicate_snapshot(wh, "snap-...", cfg.dedup, signature_files)

Steps, all but the clustering in DuckDB:
1. the scope: the snapshot's documents (new) and the earlier snapshots' kept ones, with their
   text_hash and LSH band hashes read from the signature files;
2. exact pairs: documents sharing a text_hash (normalized text), as stars;
3. LSH candidates: one representative per text_hash, grouped on equal band hashes, only buckets
   holding something new (warehouse.dedup_queries.candidate_pairs);
4. verification (config `dedup.verify`): a candidate is merged when its Jaccard reaches
   `dedup.threshold`, computed exactly on the shingle sets stored with the signatures
   (default), or estimated from the signatures; read in chunks of VERIFY_CHUNK documents;
5. union-find over exact pairs and merged candidates; each component is split at centers
   (tasks.dedup.split_at_centers) so that every member of a cluster is similar to the one it
   keeps, the best by tasks.dedup.kept_rank (earliest snapshot, longest text, smallest
   doc_id): single linkage alone would join a 0.85 copy of a 0.85 copy to a text 0.7 away.
   As if exact dedup ran first, a removed document is an `exact_duplicate` when a better-ranked
   member of its cluster has the same text_hash, else a `near_duplicate`; either way its
   `duplicate_of` is the cluster's kept document. Only documents of this snapshot are ever
   marked; earlier ones stay as they are;
6. one transaction stores cluster id (= the kept doc_id) and size on `documents`, rejections
   with the kept doc_id, the `exact_dedup` and `near_dedup` rows of `stage_stats`, and the
   ledger row, replacing any earlier dedup of the snapshot.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from crawl2model.config import DedupConfig
from tasks.dedup import ShingleJaccard, cluster_pairs, estimated_jaccard, kept_rank, split_at_centers
from warehouse.dedup_queries import (
    apply_dedup,
    build_scope,
    candidate_pairs,
    exact_pairs,
    scope_documents,
    shards_of,
    shingle_sets,
    signatures_of,
)

# Documents whose shingle sets (~8 bytes a word) or signatures are in memory at once: measured at 16x
# the sample, 2,000 costs ~80 MB of peak RSS and runs as fast as 20,000, which costs ~300 MB.
VERIFY_CHUNK = 2_000


@dataclass
class DedupResult:
    snapshot: str
    docs_in: int
    docs_earlier: int
    exact_pairs: int
    candidate_pairs: int
    merged_pairs: int
    clusters: int                     # of two or more documents, after splitting
    exact_duplicates: int
    near_duplicates: int
    docs_out: int
    seconds: float
    cluster_sizes: dict[int, int] = field(default_factory=dict)  # {size: clusters} holding new documents

    def as_dict(self) -> dict:
        return asdict(self)


def _similarity(con, cfg: DedupConfig, signature_files: list[str], doc_ids: list[str]):
    """Jaccard(a, b) over these documents: exact on their stored shingle sets, or estimated."""
    if cfg.verify == "exact":
        return ShingleJaccard(sets=shingle_sets(con, signature_files, doc_ids))
    found = signatures_of(con, signature_files, doc_ids)
    return lambda a, b: estimated_jaccard(found[a], found[b])


def _batches(items: list, size_of, limit: int):
    """Consecutive runs of items whose sizes add up to about `limit` (one item may exceed it)."""
    batch, total = [], 0
    for item in items:
        batch.append(item)
        total += size_of(item)
        if total >= limit:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def verify(con, pairs: list[tuple[str, str]], cfg: DedupConfig, signature_files: list[str]) -> list[tuple[str, str]]:
    """The candidate pairs that pass `cfg.verify`, chunk by chunk (bounded memory)."""
    if cfg.verify == "none":
        return pairs
    # Pairs sorted by the shards of their documents: a chunk then reads the files of few shards.
    shard = shards_of(con, sorted({doc_id for pair in pairs for doc_id in pair}))
    pairs = sorted(pairs, key=lambda pair: (shard[pair[0]], shard[pair[1]], pair))
    merged = []
    for chunk in _batches(pairs, lambda pair: 2, VERIFY_CHUNK):
        jaccard = _similarity(con, cfg, signature_files, sorted({doc_id for pair in chunk for doc_id in pair}))
        merged += [(a, b) for a, b in chunk if jaccard(a, b) >= cfg.threshold]
    return sorted(merged)


def groups_of(con, components: list[list[str]], docs: dict[str, dict], cfg: DedupConfig,
              signature_files: list[str]) -> list[list[str]]:
    """Components split so that every member is similar to its group's kept document (the
    first), see tasks.dedup.split_at_centers; unsplit without verification. A pair needs no
    split: it was verified (or is an exact match)."""
    rank = lambda doc_id: kept_rank(docs[doc_id])  # noqa: E731
    if cfg.verify == "none":
        return [sorted(members, key=rank) for members in components]
    groups = [sorted(members, key=rank) for members in components if len(members) == 2]
    larger = [members for members in components if len(members) > 2]
    shard = shards_of(con, [doc_id for members in larger for doc_id in members])
    larger.sort(key=lambda members: sorted(shard[d] for d in members))  # batches read few shards' files
    for batch in _batches(larger, len, VERIFY_CHUNK):
        jaccard = _similarity(con, cfg, signature_files, sorted({d for members in batch for d in members}))

        def similar(a: str, b: str) -> bool:
            return docs[a]["text_hash"] == docs[b]["text_hash"] or jaccard(a, b) >= cfg.threshold

        for members in batch:
            groups += split_at_centers(members, rank, similar)
    return groups


def deduplicate_snapshot(wh, snapshot: str, cfg: DedupConfig, signature_files: list[str],
                         signing_seconds: float = 0.0) -> DedupResult:
    started = time.perf_counter()
    con = wh.con
    scope = build_scope(con, snapshot, signature_files)
    exact = exact_pairs(con)
    candidates = candidate_pairs(con, "dedup_bands", cfg.max_bucket, new_only=True)
    merged = verify(con, candidates, cfg, signature_files)
    components = list(cluster_pairs(exact + merged).values())
    docs = scope_documents(con, [doc_id for ids in components for doc_id in ids])
    clusters = [ids for ids in groups_of(con, components, docs, cfg, signature_files) if len(ids) > 1]

    rows: dict[str, list] = {"doc_id": [], "dup_cluster": [], "dup_cluster_size": [], "duplicate_of": [], "reason": []}
    sizes: Counter[int] = Counter()
    for ids in clusters:  # each in rank order, the kept document first
        kept = docs[ids[0]]
        sizes[len(ids)] += 1
        seen_hashes = set()
        for doc_id in ids:
            text_hash = docs[doc_id]["text_hash"]
            removed = doc_id != kept["doc_id"]
            # Exact dedup first: the best of each text_hash stands for it, the others are exact
            # duplicates; then the near dedup removes the best of every other hash.
            reason = None if not removed else "exact_duplicate" if text_hash in seen_hashes else "near_duplicate"
            seen_hashes.add(text_hash)
            if not docs[doc_id]["new"]:
                continue  # an earlier snapshot's document: already decided, never changed here
            for column, value in zip(rows, (doc_id, kept["doc_id"], len(ids), kept["doc_id"] if removed else None, reason)):
                rows[column].append(value)
    decisions = pa.table(rows, schema=pa.schema([("doc_id", pa.string()), ("dup_cluster", pa.string()),
                                                  ("dup_cluster_size", pa.int32()), ("duplicate_of", pa.string()),
                                                  ("reason", pa.string())]))
    reasons = Counter(r for r in rows["reason"] if r)
    result = DedupResult(
        snapshot=snapshot, docs_in=scope["docs_new"], docs_earlier=scope["docs_earlier"], exact_pairs=len(exact),
        candidate_pairs=len(candidates), merged_pairs=len(merged), clusters=len(clusters),
        exact_duplicates=reasons["exact_duplicate"], near_duplicates=reasons["near_duplicate"],
        docs_out=scope["docs_new"] - sum(reasons.values()), seconds=0.0, cluster_sizes=dict(sorted(sizes.items())))
    result.seconds = time.perf_counter() - started + signing_seconds
    apply_dedup(con, snapshot, decisions, result.seconds, cfg.fingerprint(), result.as_dict())
    return result
