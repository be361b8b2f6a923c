"""Dedup, the plain core: exact hashes of normalized text, MinHash signatures, LSH bands,
union-find, the split of components at their centers and the rule that picks the kept document.

    from tasks.dedup import MinHasher, exact_hash, near_duplicate_clusters, duplicates_to_remove
    key = exact_hash(text)                  # equal for texts that differ in case/space/punctuation
    hasher = MinHasher()                    # 112 permutations = 14 bands x 8 rows, word 5-grams
    sigs = hasher.signatures(texts)         # (n, 112) uint64
    found = near_duplicate_clusters(con, docs, sigs, hasher, verify_threshold=0.8, exact=True)
    removed = duplicates_to_remove(found.clusters, docs_by_id)   # {removed doc_id: kept doc_id}

    python -m tasks.dedup      # the S-curve, and precision/recall on ../shared/data/neardup

The pipeline's stage runs the same pieces over a warehouse snapshot (tasks.dedup_snapshot);
`near_duplicate_clusters` and `evaluate` are the in-memory path used to measure them.

Text is normalized (NFKC, case folded, Unicode punctuation to spaces, whitespace collapsed)
before hashing and shingling. Shingles are word 5-grams of the normalized text (a text shorter
than 5 words is one shingle). A pair with Jaccard s on those shingles becomes an LSH candidate
with probability 1 - (1 - s**rows)**bands (`s_curve`: 0.77 at 0.75, 0.92 at 0.8, 0.99 at 0.85
for 14 x 8). Candidates come from DuckDB (warehouse.dedup_queries), may be verified, and are
joined by union-find; each component is then split at centers (`split_at_centers`), so every
document removed is similar to the one kept in its place: union-find alone is single linkage
and would join a 0.85 copy of a 0.85 copy to a text 0.7 away. A cluster keeps the document of
the earliest snapshot, then the longest text, then the smallest doc_id (`kept_rank`).

Verification, measured with `evaluate` (pair-level, truth = exact shingle Jaccard >= 0.8,
predicted = same cluster) on the 330 neardup texts (164 true pairs) and on generated copies
of its 55 articles with 0.5%, 1%, 3% and 10% of words substituted (tests/test_dedup.py):

    verification               neardup P / R     generated edits P / R
    none (datatrove's way)     0.69 / 0.99       0.53 / 1.00
    estimated >= 0.78          0.98 / 0.96
    exact >= 0.80 (default)    1.00 / 0.98       1.00 / 0.99

Without verification LSH lets in most pairs near 0.7 (the -v2 variants, the 3% copies):
precision is poor. The signature estimate has a standard deviation of ~0.04 at 112
permutations, so pairs at 0.75 still pass now and then; the exact Jaccard of the candidates
(their shingles recomputed from the text) meets the 0.95 goal on both sets. Recall lost: LSH
misses ~8% of pairs at exactly 0.8, and a candidate is only verified against its bucket's
smallest doc_id (pairs are stars).

Signatures use datasketch's MinHash ("affine64" scheme: a 64-bit MurmurHash3 pre-mix, then
a*h + b mod 2**64 per permutation, applied to all of a document's shingles at once by
`update_batch`). What is fed to it are 64-bit shingle hashes computed with numpy over the
document's UTF-8 bytes (a polynomial hash per word, then a weighted sum of the n word hashes
of each n-gram) instead of SHA-1 over each shingle's bytes: about 1,000 docs/s on one core
for these ~5 kB articles against ~550 for `MinHash.bulk` on `shingles`, the same sets (on
the neardup articles every document has as many distinct shingle hashes as shingles). Every
constant is fixed in this file, so signatures and band hashes stored for one snapshot stay
comparable with the next.
"""

from __future__ import annotations

import hashlib
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from warehouse.dedup_queries import candidate_pairs, write_band_table


@cache
def _punctuation() -> frozenset[str]:
    """Every Unicode punctuation character (categories Pc Pd Ps Pe Pi Pf Po), built on first use."""
    return frozenset(c for c in map(chr, range(sys.maxunicode + 1)) if unicodedata.category(c)[0] == "P")


def normalize(text: str) -> str:
    """Case, whitespace and Unicode punctuation (category P*) folded; words and symbols kept."""
    text = unicodedata.normalize("NFKC", text).casefold()
    for mark in set(text) & _punctuation():  # a few str.replace beat a per-character translate
        text = text.replace(mark, " ")
    return " ".join(text.split())


def exact_hash(text: str, normalized: bool = False) -> str:
    """Hex digest (blake2b, 16 bytes) of the normalized text: the key of exact dedup."""
    return hashlib.blake2b((text if normalized else normalize(text)).encode(), digest_size=16).hexdigest()


def shingles(text: str, n: int = 5) -> list[bytes]:
    """Word n-grams of the normalized text, UTF-8; a text shorter than n words is one shingle."""
    words = normalize(text).split(" ")
    return [" ".join(words[i:i + n]).encode() for i in range(max(1, len(words) - n + 1))]


# --- 64-bit hashing in numpy (uint64 arithmetic wraps, which is the intended mod 2**64) ------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # odd: the base of the word hash


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: an avalanching bijection."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _weights(count: int, salt: int) -> np.ndarray:
    """`count` fixed odd 64-bit weights (distinct per salt)."""
    return _fmix64(np.arange(1, count + 1, dtype=np.uint64) + np.uint64(salt << 32)) | np.uint64(1)


def _base_powers(length: int) -> np.ndarray:
    """_GOLDEN ** 0 .. length-1 (mod 2**64)."""
    steps = np.full(length, _GOLDEN, dtype=np.uint64)
    steps[0] = 1
    return np.cumprod(steps, dtype=np.uint64)


_POWERS = _base_powers(4096)  # enough for any word but the odd URL or blob, computed on demand


def _shingle_hashes(normalized: str, n: int) -> np.ndarray:
    """One uint64 per word n-gram of a normalized text, the same n-grams as `shingles`."""
    data = np.frombuffer(normalized.encode(), dtype=np.uint8)
    if not len(data):
        return np.zeros(1, dtype=np.uint64)  # the one empty shingle
    is_space = data == 32
    word_of_byte = np.cumsum(is_space)
    starts = np.concatenate(([0], np.flatnonzero(is_space) + 1))
    position = np.arange(len(data)) - starts[word_of_byte]
    longest = int(position.max()) + 1
    powers = _POWERS if longest <= len(_POWERS) else _base_powers(longest)
    terms = (data.astype(np.uint64) + np.uint64(1)) * powers[position]  # word hash: sum of byte * base**i
    terms[is_space] = 0
    words = _fmix64(np.add.reduceat(terms, starts))
    count = max(1, len(words) - n + 1)
    weights = _weights(n, salt=n)
    hashes = np.zeros(count, dtype=np.uint64)
    for k in range(min(n, len(words))):
        hashes += words[k:k + count] * weights[k]
    return hashes


# --- MinHash and LSH bands ------------------------------------------------------------------

class MinHasher:
    """MinHash signatures of word n-grams and their LSH band hashes (bands x rows = num_perm)."""

    CHUNK = 65_536  # shingles per update_batch: bounds memory to CHUNK x num_perm x 8 bytes

    def __init__(self, num_perm: int = 112, bands: int = 14, rows: int = 8, ngram: int = 5, seed: int = 1):
        if bands * rows != num_perm:
            raise ValueError(f"bands x rows must equal num_perm: {bands} x {rows} != {num_perm}")
        self.num_perm, self.bands, self.rows, self.ngram, self.seed = num_perm, bands, rows, ngram, seed
        # Imported here: datasketch's package imports scipy (~60 MB), which only signing needs.
        from datasketch import MinHash

        self._empty = MinHash(num_perm=num_perm, seed=seed, scheme="affine64", hashfunc=int)
        self._row_weights = _weights(rows, salt=0xBA4D)

    def shingle_set(self, text: str, normalized: bool = False) -> np.ndarray:
        """The sorted distinct 64-bit hashes of a text's word n-grams (what MinHash summarizes)."""
        return np.unique(_shingle_hashes(text if normalized else normalize(text), self.ngram))

    def signature(self, shingle_set: np.ndarray) -> np.ndarray:
        """(num_perm,) uint64: the MinHash of a shingle set, fed in batches of CHUNK."""
        minhash = self._empty.copy()
        for start in range(0, len(shingle_set), self.CHUNK):
            minhash.update_batch(shingle_set[start:start + self.CHUNK].tolist())
        return minhash.hashvalues

    def signatures(self, texts: Iterable[str], normalized: bool = False) -> np.ndarray:
        """(len(texts), num_perm) uint64: one MinHash per text. `normalized=True` says the texts
        already went through `normalize` (saves doing it twice)."""
        rows = [self.signature(self.shingle_set(text, normalized)) for text in texts]
        return np.array(rows, dtype=np.uint64).reshape(len(rows), self.num_perm)

    def band_hashes(self, signatures: np.ndarray) -> np.ndarray:
        """(n, bands) uint64: each band's `rows` values, mixed and summed with fixed weights."""
        values = np.asarray(signatures, dtype=np.uint64).reshape(-1, self.bands, self.rows)
        return _fmix64((_fmix64(values) * self._row_weights).sum(axis=2, dtype=np.uint64))


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that a pair with this Jaccard shares at least one band: 1 - (1 - s**r)**b."""
    return 1.0 - (1.0 - jaccard ** rows) ** bands


def s_curve(bands: int, rows: int, points: Sequence[float] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95),
            ) -> list[tuple[float, float]]:
    """(Jaccard, candidate probability) at each point; 14 x 8 gives ~0.92 at 0.8."""
    return [(s, candidate_probability(s, bands, rows)) for s in points]


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal signature values: an unbiased estimate of the shingles' Jaccard."""
    return float(np.mean(np.asarray(sig_a) == np.asarray(sig_b)))


# --- clusters --------------------------------------------------------------------------------

class UnionFind:
    """Disjoint sets over string ids, with path compression and union by size."""

    def __init__(self, ids: Iterable[str] = ()):
        self.parent: dict[str, str] = {}
        self.size: dict[str, int] = {}
        for doc_id in ids:
            self.add(doc_id)

    def add(self, doc_id: str) -> None:
        if doc_id not in self.parent:
            self.parent[doc_id] = doc_id
            self.size[doc_id] = 1

    def find(self, doc_id: str) -> str:
        self.add(doc_id)
        root = doc_id
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[doc_id] != root:  # path compression
            self.parent[doc_id], doc_id = root, self.parent[doc_id]
        return root

    def union(self, a: str, b: str) -> str:
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return root_a
        if self.size[root_a] < self.size[root_b]:
            root_a, root_b = root_b, root_a
        self.parent[root_b] = root_a
        self.size[root_a] += self.size.pop(root_b)
        return root_a

    def clusters(self) -> dict[str, list[str]]:
        """{root: sorted member ids} for every set, singletons included."""
        members: dict[str, list[str]] = {}
        for doc_id in self.parent:
            members.setdefault(self.find(doc_id), []).append(doc_id)
        return {root: sorted(ids) for root, ids in members.items()}


def cluster_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Connected components of the pairs, as {smallest member: sorted members}. The key does
    not depend on the order of the pairs, so it can serve as a stable cluster id."""
    sets = UnionFind()
    for a, b in pairs:
        sets.union(a, b)
    return {ids[0]: ids for ids in sets.clusters().values()}


def kept_rank(doc: dict) -> tuple:
    """Sort key of the document a cluster keeps: earliest snapshot, then longest text, then
    smallest doc_id. Each dict has `doc_id`, `text` (or `chars`) and optionally
    `snapshot_created_at` (anything comparable; absent counts as earliest). Keeping the earliest
    snapshot's copy means a new crawl keeps only what is new; the longest text keeps the most."""
    created = doc.get("snapshot_created_at")
    chars = len(doc["text"]) if "text" in doc else doc["chars"]
    return (created is not None, created or 0, -chars, doc["doc_id"])


def choose_kept(cluster: list[dict]) -> dict:
    """The document a cluster keeps (`kept_rank`)."""
    return min(cluster, key=kept_rank)


def split_at_centers(members: list[str], rank: Callable[[str], tuple],
                     similar: Callable[[str, str], bool]) -> list[list[str]]:
    """Split a connected component into groups whose members are all similar to its center.

    Union-find is single linkage: a chain of pairs above the threshold joins documents that are
    far apart (a 0.85 copy of a 0.85 copy of X may be 0.7 from X). Here the best-ranked member is
    a center, the members similar to it join it, and the rest is split again the same way, so
    each removed document is similar to the document kept in its place. Groups come out with
    their center first, in rank order.
    """
    remaining = sorted(members, key=rank)
    groups = []
    while remaining:
        center, rest = remaining[0], remaining[1:]
        group = [center] + [m for m in rest if similar(center, m)]
        groups.append(group)
        joined = set(group)
        remaining = [m for m in rest if m not in joined]
    return groups


class ShingleJaccard:
    """Exact Jaccard of two documents' shingle sets: from `sets` ({doc_id: sorted distinct
    shingle hashes}, as stored with the signatures), else computed once per text of `texts`."""

    def __init__(self, texts: Mapping[str, str] | None = None, ngram: int = 5,
                 sets: Mapping[str, np.ndarray] | None = None):
        self.texts, self.ngram, self._sets = texts, ngram, dict(sets or {})

    def _set(self, doc_id: str) -> np.ndarray:
        if doc_id not in self._sets:
            self._sets[doc_id] = np.unique(_shingle_hashes(normalize(self.texts[doc_id]), self.ngram))
        return self._sets[doc_id]

    def __call__(self, a: str, b: str) -> float:
        set_a, set_b = self._set(a), self._set(b)
        common = len(np.intersect1d(set_a, set_b, assume_unique=True))
        return common / (len(set_a) + len(set_b) - common)


def duplicates_to_remove(clusters: dict[str, list[str]], docs: dict[str, dict]) -> dict[str, str]:
    """{removed doc_id: kept doc_id} over all clusters, with `choose_kept`'s rule."""
    removed = {}
    for members in clusters.values():
        kept = choose_kept([docs[doc_id] for doc_id in members])["doc_id"]
        removed.update({doc_id: kept for doc_id in members if doc_id != kept})
    return removed


@dataclass
class NearDuplicates:
    clusters: dict[str, list[str]]  # clusters of two or more documents, keyed by their smallest doc_id
    candidate_pairs: int            # pairs from the LSH buckets
    merged_pairs: int               # pairs left after verification, given to union-find


def near_duplicate_clusters(con, docs: Sequence[dict], signatures: np.ndarray, hasher: MinHasher,
                            verify_threshold: float | None = None, exact: bool = False,
                            table: str = "minhash_bands") -> NearDuplicates:
    """Signatures -> band table in DuckDB -> candidate pairs -> verification -> union-find ->
    groups split at their centers, the center being the document the cluster keeps (`kept_rank`:
    the rule the pipeline's stage uses, tasks.dedup_snapshot). `docs` are dicts with `doc_id` and
    `text` (and optionally `snapshot_created_at`), in the order of `signatures`' rows.

    With `verify_threshold`, a candidate pair is merged only when its Jaccard reaches it:
    estimated from the signatures, or with `exact` computed on the shingles of the candidate
    documents (the more precise of the two). Without it every candidate pair is merged and
    components are not split.
    """
    doc_ids = [d["doc_id"] for d in docs]
    write_band_table(con, table, doc_ids, hasher.band_hashes(signatures))
    candidates = pairs = candidate_pairs(con, table)
    if verify_threshold is None:
        return NearDuplicates(cluster_pairs(pairs), len(candidates), len(pairs))
    by_id = {d["doc_id"]: d for d in docs}
    if exact:
        jaccard = ShingleJaccard({doc_id: by_id[doc_id]["text"] for pair in pairs for doc_id in pair}, hasher.ngram)
    else:
        row = {doc_id: i for i, doc_id in enumerate(doc_ids)}
        jaccard = lambda a, b: estimated_jaccard(signatures[row[a]], signatures[row[b]])  # noqa: E731
    pairs = [(a, b) for a, b in pairs if jaccard(a, b) >= verify_threshold]
    groups = {}
    for members in cluster_pairs(pairs).values():
        for group in split_at_centers(members, lambda d: kept_rank(by_id[d]),
                                      lambda a, b: jaccard(a, b) >= verify_threshold):
            if len(group) > 1:
                groups[min(group)] = sorted(group)
    return NearDuplicates(groups, len(candidates), len(pairs))


# --- evaluation against brute force -----------------------------------------------------------

def true_duplicate_pairs(docs: list[dict], threshold: float = 0.8, ngram: int = 5) -> set[tuple[str, str]]:
    """Every pair (smaller id first) whose exact Jaccard on `shingles` is >= threshold."""
    sets = sorted((d["doc_id"], set(shingles(d["text"], ngram))) for d in docs)
    found = set()
    for i, (id_a, a) in enumerate(sets):
        for id_b, b in sets[i + 1:]:
            if min(len(a), len(b)) < threshold * max(len(a), len(b)):
                continue  # |a & b| / |a | b| <= min/max: cannot reach the threshold
            common = len(a & b)
            if common >= threshold * (len(a) + len(b) - common):
                found.add((id_a, id_b))
    return found


def evaluate(docs: list[dict], hasher: MinHasher | None = None, threshold: float = 0.8,
             verify_threshold: float | None = None, verify_exact: bool = False,
             truth: set[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Pair-level precision and recall of the whole near-dedup path against brute force.

    A pair is truly duplicate when its exact shingle Jaccard is >= threshold, predicted
    duplicate when both land in the same cluster. `docs` are dicts with `doc_id` and `text`;
    pass `truth` (from `true_duplicate_pairs`) to reuse it across runs. `seconds` covers
    signatures, DuckDB, verification and union-find, not the brute force.
    """
    import duckdb

    hasher = hasher or MinHasher()
    truth = true_duplicate_pairs(docs, threshold, hasher.ngram) if truth is None else truth
    started = time.perf_counter()
    signatures = hasher.signatures([d["text"] for d in docs])
    signed = time.perf_counter()
    with duckdb.connect() as con:
        found = near_duplicate_clusters(con, docs, signatures, hasher, verify_threshold, verify_exact)
    finished = time.perf_counter()
    predicted = {(a, b) for ids in found.clusters.values() for i, a in enumerate(ids) for b in ids[i + 1:]}
    hits = len(predicted & truth)
    return {
        "docs": len(docs),
        "true_pairs": len(truth),
        "candidate_pairs": found.candidate_pairs,
        "merged_pairs": found.merged_pairs,
        "predicted_pairs": len(predicted),
        "precision": hits / len(predicted) if predicted else 1.0,
        "recall": hits / len(truth) if truth else 1.0,
        "clusters": len(found.clusters),
        "signature_seconds": signed - started,
        "seconds": finished - started,
    }


if __name__ == "__main__":
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "neardup" / "docs.jsonl"
    with path.open() as lines:
        neardup = [{"doc_id": row["id"], "text": row["text"]} for row in map(json.loads, lines)]
    minhasher = MinHasher()
    print("S-curve, 14 bands x 8 rows:", ", ".join(f"{s:.2f}: {p:.3f}" for s, p in s_curve(14, 8)))
    pairs_truth = true_duplicate_pairs(neardup)
    for verify, exact in ((None, False), (0.78, False), (0.8, False), (0.8, True)):
        result = evaluate(neardup, minhasher, verify_threshold=verify, verify_exact=exact, truth=pairs_truth)
        label = "none" if verify is None else f"{'exact' if exact else 'estimated'} >= {verify}"
        print(f"verification {label}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in result.items()))
