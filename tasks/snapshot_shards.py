"""Per-shard work of the snapshot stages, run in worker processes: MinHash signatures for
`dedup` and scrubbed text for `pii`. Each reads one shard's curated Parquet (what curation
wrote, never what a later stage changed, so a re-run with another config starts from the same
text) and writes one Parquet file, atomically, keyed by the config it depends on.

    from tasks.snapshot_shards import sign_shard, scrub_shard
    sign_shard(root, shard, cfg.dedup)   # parquet/minhash/<signature key>/<shard>.parquet
    scrub_shard(root, shard, cfg.pii)    # parquet/pii/<config key>/<shard>.parquet

flows.snapshot_stage holds the Prefect tasks around them (this module imports no Prefect, so a
worker stays small). A file that exists is done (same shard, same config, same bytes), so a
re-run or a retry skips it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from crawl2model.config import DedupConfig, PiiConfig
from tasks.dedup import MinHasher, exact_hash, normalize
from warehouse.schema import PII_COLUMNS, PII_TYPES
from warehouse.shard_files import read_curated, stage_file, write_table


def minhasher(cfg: DedupConfig) -> MinHasher:
    return MinHasher(cfg.bands * cfg.rows, cfg.bands, cfg.rows, cfg.ngram, cfg.seed)


def signature_file(root: Path, shard: str, cfg: DedupConfig) -> Path:
    return stage_file(root, "minhash", cfg.signature_key(), shard)


def scrub_file(root: Path, shard: str, cfg: PiiConfig) -> Path:
    return stage_file(root, "pii", cfg.fingerprint()[:12], shard)


def _fixed_lists(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), pa.uint64()), values.shape[1])


def sign_shard(root: Path, shard: str, cfg: DedupConfig) -> Path:
    """Per document: doc_id, shard, chars and bytes of the curated text, text_hash (the exact
    dedup key), bands (LSH band hashes), the MinHash signature and the shingle set."""
    out = signature_file(root, shard, cfg)
    if out.exists():
        return out
    started = time.perf_counter()
    curated = read_curated(root, shard, ["doc_id", "text"])
    raw = curated.column("text").to_pylist()
    texts = [normalize(t) for t in raw]
    hasher = minhasher(cfg)
    sets = [hasher.shingle_set(t, normalized=True) for t in texts]
    signatures = np.array([hasher.signature(s) for s in sets], dtype=np.uint64).reshape(len(sets), hasher.num_perm)
    table = pa.table({
        "doc_id": curated.column("doc_id"),
        "shard": pa.array([shard] * len(raw), pa.string()).dictionary_encode(),
        "chars": pa.array([len(t) for t in raw], pa.int64()),
        "bytes": pa.array([len(t.encode()) for t in raw], pa.int64()),
        "text_hash": [exact_hash(t, normalized=True) for t in texts],
        "bands": _fixed_lists(hasher.band_hashes(signatures)),
        "signature": _fixed_lists(signatures),
        # the shingle sets themselves, so exact Jaccard is computed from them, never from text again
        "shingles": pa.ListArray.from_arrays(pa.array(np.cumsum([0] + [len(s) for s in sets]), pa.int32()),
                                             pa.array(np.concatenate(sets) if sets else [], pa.uint64())),
    })
    table = table.replace_schema_metadata({"seconds": f"{time.perf_counter() - started:.6f}"})
    return write_table(out, table)


def scrub_shard(root: Path, shard: str, cfg: PiiConfig) -> Path:
    """doc_id, scrubbed text, chars and the replacements per type, per document."""
    out = scrub_file(root, shard, cfg)
    if out.exists():
        return out
    started = time.perf_counter()
    curated = read_curated(root, shard, ["doc_id", "text"])
    scrubber = cfg.scrubber()
    results = [scrubber(text) for text in curated.column("text").to_pylist()]
    table = pa.table({
        "doc_id": curated.column("doc_id"),
        "shard": pa.array([shard] * len(results), pa.string()).dictionary_encode(),
        "text": [r.text for r in results],
        "chars": pa.array([len(r.text) for r in results], pa.int64()),
        **{column: pa.array([r.counts[t] for r in results], pa.int32()) for column, t in zip(PII_COLUMNS, PII_TYPES)},
    })
    table = table.replace_schema_metadata({"seconds": f"{time.perf_counter() - started:.6f}"})
    return write_table(out, table)


def seconds_of(path: Path) -> float:
    """The worker seconds a stage file took to make (kept in its Parquet metadata)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return float(meta.get(b"seconds", b"0"))
