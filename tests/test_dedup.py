"""Dedup core: normalization and exact hashes, MinHash signatures and bands, LSH candidate pairs
in DuckDB, union-find, the kept-document rule, and precision/recall against brute-force Jaccard
on the real near-duplicates of ../shared/data/neardup and on generated edits."""

from __future__ import annotations

import json
import logging
import random
import time

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.dedup import (
    MinHasher,
    ShingleJaccard,
    UnionFind,
    _shingle_hashes,
    candidate_probability,
    choose_kept,
    cluster_pairs,
    duplicates_to_remove,
    estimated_jaccard,
    evaluate,
    exact_hash,
    near_duplicate_clusters,
    normalize,
    s_curve,
    shingles,
    split_at_centers,
    true_duplicate_pairs,
)
from tests.conftest import shared
from warehouse.dedup_queries import candidate_pairs, write_band_table

# Rates of word substitution for the generated copies: 0.5% and 1% stay above Jaccard 0.8 with
# the original and with each other, 3% falls just below (~0.75), 10% far below (~0.45).
EDIT_RATES = (0.005, 0.01, 0.03, 0.10)


@pytest.fixture(scope="module")
def neardup() -> list[dict]:
    with shared("neardup", "docs.jsonl").open() as lines:
        return [{"doc_id": row["id"], "text": row["text"]} for row in map(json.loads, lines)]


@pytest.fixture(scope="module")
def neardup_truth(neardup) -> set[tuple[str, str]]:
    return true_duplicate_pairs(neardup)


def substitute_words(text: str, rate: float, rng: random.Random, vocabulary: list[str]) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, round(rate * len(words)))):
        words[i] = rng.choice(vocabulary)
    return " ".join(words)


@pytest.fixture(scope="module")
def edited(neardup) -> list[dict]:
    """Each original article and one copy per EDIT_RATES, edited by random word substitution."""
    originals = [d for d in neardup if "-" not in d["doc_id"]]
    vocabulary = sorted({w for d in originals for w in d["text"].split()})
    rng = random.Random(7)
    docs = []
    for doc in originals:
        docs.append(doc)
        docs += [{"doc_id": f"{doc['doc_id']}-edit{rate}", "text": substitute_words(doc["text"], rate, rng, vocabulary)}
                 for rate in EDIT_RATES]
    return docs


# --- normalization, exact hash, shingles ------------------------------------------------------

def test_normalize_folds_case_whitespace_and_punctuation():
    assert normalize("  Hello,\tWORLD!\n\nIt’s  “fine”… ") == "hello world it s fine"
    assert normalize("Café — déjà vu¿") == "café déjà vu"
    assert normalize("ＦＵＬＬ－ＷＩＤＴＨ") == "full width"       # NFKC
    assert normalize("STRASSE") == normalize("Straße")              # casefold
    assert normalize("") == normalize(" \n ,.;") == ""


def test_exact_hash_folds_form_but_not_words():
    base = exact_hash("The cat sat on the mat.")
    assert exact_hash("the CAT sat   on the mat") == base
    assert exact_hash("The cat sat on the mat!!!\n") == base
    assert exact_hash("The cat sat on a mat.") != base
    assert exact_hash("The cat sat on the mat today.") != base
    assert exact_hash("The cat sat on the mat€") != base            # symbols are not punctuation
    assert len(base) == 32 and int(base, 16) >= 0


def test_shingles_are_word_ngrams_of_the_normalized_text():
    assert shingles("A b, c d E f!") == [b"a b c d e", b"b c d e f"]
    assert shingles("Too short.") == [b"too short"]
    assert shingles("") == [b""]
    assert shingles("one two three", n=2) == [b"one two", b"two three"]


def test_shingle_hashes_match_the_shingles():
    text = "a b c d e x a b c d e"        # the n-gram "a b c d e" twice, at different positions
    hashes = _shingle_hashes(normalize(text), 5)
    assert len(hashes) == len(shingles(text)) == 7 and hashes[0] == hashes[6]
    assert len(set(hashes.tolist())) == len(set(shingles(text)))
    assert len(_shingle_hashes("", 5)) == len(_shingle_hashes("short text", 5)) == 1
    long_word = "x" * 5000                                   # longer than the cached powers
    first, second, third = _shingle_hashes(f"{long_word} {long_word} {long_word[:-1]}y", 1)
    assert first == second != third


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "ab", "ba", "é", "日本", "x1", "1x"]), max_size=30))
def test_shingle_hashes_count_distinct_shingles(words):
    text = " ".join(words)
    assert len(set(_shingle_hashes(normalize(text), 3).tolist())) == len(set(shingles(text, 3)))


def test_shingle_hashes_are_one_to_one_on_real_text(neardup):
    for doc in neardup:
        hashes = _shingle_hashes(normalize(doc["text"]), 5)
        assert len(set(hashes.tolist())) == len(set(shingles(doc["text"]))), doc["doc_id"]


# --- signatures and bands -------------------------------------------------------------------

def test_minhasher_needs_bands_times_rows():
    with pytest.raises(ValueError, match="bands x rows"):
        MinHasher(num_perm=112, bands=14, rows=7)


def test_signatures_are_deterministic_and_equal_for_equal_texts():
    texts = ["the quick brown fox jumps over the lazy dog " * 3, "something else entirely, written here",
             "THE QUICK BROWN FOX, jumps over the lazy dog! " * 3, ""]
    first = MinHasher(seed=1).signatures(texts)
    assert first.shape == (4, 112) and first.dtype == np.uint64
    assert np.array_equal(first, MinHasher(seed=1).signatures(texts))
    assert np.array_equal(first[0], first[2])                # same normalized text
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first, MinHasher(seed=2).signatures(texts))
    assert MinHasher().signatures([]).shape == (0, 112)


def test_signatures_do_not_depend_on_the_batch_size(neardup):
    texts = [d["text"] for d in neardup[:5]]
    small_batches = MinHasher()
    small_batches.CHUNK = 100
    assert np.array_equal(small_batches.signatures(texts), MinHasher().signatures(texts))


def test_estimated_jaccard_is_close_to_the_exact_one(neardup):
    by_id = {d["doc_id"]: d["text"] for d in neardup}
    original, variant = by_id["05844573ca7e"], by_id["05844573ca7e-v1"]
    a, b = set(shingles(original)), set(shingles(variant))
    signatures = MinHasher().signatures([original, variant])
    assert abs(estimated_jaccard(signatures[0], signatures[1]) - len(a & b) / len(a | b)) < 0.1
    assert estimated_jaccard(signatures[0], signatures[0]) == 1.0


def test_band_hashes_equal_exactly_where_bands_are_equal():
    hasher = MinHasher()
    signatures = hasher.signatures(["one text here and there", "another text, not the same at all"])
    changed = signatures[0].copy()
    changed[3 * 8 + 5] += np.uint64(1)                       # one value in band 3
    bands = hasher.band_hashes(np.vstack([signatures, changed]))
    assert bands.shape == (3, 14) and bands.dtype == np.uint64
    same = bands[0] == bands[2]
    assert not same[3] and same[np.arange(14) != 3].all()
    assert not (bands[0] == bands[1]).any()


def test_candidate_probability_and_s_curve():
    assert candidate_probability(0.8, 14, 8) == pytest.approx(1 - (1 - 0.8 ** 8) ** 14)
    assert candidate_probability(0.8, 14, 8) == pytest.approx(0.924, abs=0.001)
    curve = s_curve(14, 8)
    assert [s for s, _ in curve] == [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    probabilities = [p for _, p in curve]
    assert probabilities == sorted(probabilities) and probabilities[0] < 0.06 and probabilities[-1] > 0.999


# --- candidate pairs in DuckDB ----------------------------------------------------------------

def test_write_band_table_round_trips():
    con = duckdb.connect()
    con.execute("SELECT 1 UNION ALL SELECT 2").fetchone()     # a caller's unfinished result
    bands = np.array([[1, 2 ** 64 - 1], [3, 4]], dtype=np.uint64)
    write_band_table(con, "bands", ["d1", "d2"], bands)
    assert con.execute("SELECT doc_id, band, hash FROM bands ORDER BY ALL").fetchall() == [
        ("d1", 0, 1), ("d1", 1, 2 ** 64 - 1), ("d2", 0, 3), ("d2", 1, 4)]
    assert [row[1] for row in con.execute("DESCRIBE bands").fetchall()] == ["VARCHAR", "INTEGER", "UBIGINT"]
    write_band_table(con, "bands", ["d3"], bands[:1], replace=False)
    assert con.execute("SELECT count(*) FROM bands").fetchone()[0] == 6
    with pytest.raises(ValueError):
        write_band_table(con, "bands; DROP TABLE bands", ["d1"], bands[:1])
    with pytest.raises(ValueError):
        write_band_table(con, "bands", ["d1"], bands)
    write_band_table(con, "nothing", [], np.zeros((0, 14), dtype=np.uint64))
    assert candidate_pairs(con, "nothing") == []


def test_candidate_pairs_are_stars_per_bucket_and_distinct():
    con = duckdb.connect()
    # band 0: {b, c, a} share 7; band 1: {b, a} share 9 (a repeated pair), {c, e} share 2; band 2: {a, d}
    bands = np.array([[7, 9, 1], [7, 2, 5], [7, 9, 3], [8, 4, 3], [6, 2, 0]], dtype=np.uint64)
    write_band_table(con, "bands", ["b", "c", "a", "d", "e"], bands)
    assert candidate_pairs(con, "bands") == [("a", "b"), ("a", "c"), ("a", "d"), ("c", "e")]
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = '_buckets'").fetchone()[0] == 0


def test_candidate_pairs_stay_linear_on_a_huge_bucket(caplog):
    con = duckdb.connect()
    doc_ids = [f"doc{i:05d}" for i in range(20_000)]
    bands = np.zeros((20_000, 14), dtype=np.uint64)
    bands[:, 1:] = np.arange(20_000, dtype=np.uint64)[:, None] * np.uint64(14) + np.arange(1, 14, dtype=np.uint64)
    write_band_table(con, "bands", doc_ids, bands)           # band 0: one bucket of 20,000
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="warehouse.dedup_queries"):
        pairs = candidate_pairs(con, "bands", max_bucket=10_000)
    assert time.perf_counter() - started < 5
    assert len(pairs) == 19_999 and all(a == "doc00000" for a, _ in pairs)
    assert "more than 10000 documents (largest: 20000)" in caplog.text
    assert len(cluster_pairs(pairs)) == 1


# --- clusters and the kept document -------------------------------------------------------------

def components(ids: set[str], edges: list[tuple[str, str]]) -> set[frozenset[str]]:
    """Connected components by breadth-first search, to check union-find against."""
    neighbours = {i: set() for i in ids}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    seen, found = set(), set()
    for start in ids:
        if start in seen:
            continue
        queue, component = [start], {start}
        while queue:
            for n in neighbours[queue.pop()] - component:
                component.add(n)
                queue.append(n)
        seen |= component
        found.add(frozenset(component))
    return found


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60))))
def test_union_find_clusters_are_connected_components(case):
    n, edges = case
    ids = {f"id{i}" for i in range(n)}
    edges = [(f"id{a}", f"id{b}") for a, b in edges]
    sets = UnionFind(ids)
    for a, b in edges:
        sets.union(a, b)
    clusters = sets.clusters()
    assert {frozenset(m) for m in clusters.values()} == components(ids, edges)
    assert all(sets.find(m) == root for root, members in clusters.items() for m in members)
    assert all(sets.size[root] == len(members) for root, members in clusters.items())
    linked = {a for e in edges for a in e}
    assert cluster_pairs(edges) == {min(c): sorted(c) for c in components(linked, edges)}


def test_choose_kept_earliest_snapshot_then_longest_then_smallest_id():
    cluster = [
        {"doc_id": "b", "text": "x" * 10, "snapshot_created_at": "2024-02-01"},
        {"doc_id": "c", "text": "x" * 50, "snapshot_created_at": "2024-02-01"},
        {"doc_id": "a", "text": "x" * 5, "snapshot_created_at": "2024-03-01"},
    ]
    assert choose_kept(cluster)["doc_id"] == "c"                 # earliest snapshot, longest text
    assert choose_kept(cluster[:1] + cluster[2:])["doc_id"] == "b"
    ties = [{"doc_id": "z", "chars": 7}, {"doc_id": "y", "chars": 7}]
    assert choose_kept(ties)["doc_id"] == "y"
    assert choose_kept(list(reversed(cluster)))["doc_id"] == "c"


def test_shingle_jaccard_is_exact_and_symmetric(neardup):
    by_id = {d["doc_id"]: d["text"] for d in neardup}
    jaccard = ShingleJaccard(by_id)
    a, b = set(shingles(by_id["05844573ca7e"])), set(shingles(by_id["05844573ca7e-v3"]))
    assert jaccard("05844573ca7e", "05844573ca7e-v3") == pytest.approx(len(a & b) / len(a | b))
    assert jaccard("05844573ca7e-v3", "05844573ca7e") == jaccard("05844573ca7e", "05844573ca7e-v3")
    assert jaccard("05844573ca7e", "05844573ca7e") == 1.0


def test_split_at_centers_keeps_every_member_close_to_its_center():
    # a chain a-b-c where a and c are not similar: c must not be removed in a's place
    similar_pairs = {("a", "b"), ("b", "c")}
    similar = lambda x, y: (x, y) in similar_pairs or (y, x) in similar_pairs  # noqa: E731
    assert split_at_centers(["c", "b", "a"], rank=lambda d: d, similar=similar) == [["a", "b"], ["c"]]
    # the best-ranked document is always a center, whatever the input order
    assert split_at_centers(["c", "a", "b"], rank=lambda d: ({"b": 0}.get(d, 1), d), similar=similar) == [["b", "a", "c"]]


# --- quality against brute force ------------------------------------------------------------------

def test_precision_recall_on_real_near_duplicates(neardup, neardup_truth):
    assert len(neardup_truth) == 164                             # original, -v0, -v1 of 55 articles, less one
    plain = evaluate(neardup, truth=neardup_truth)
    estimated = evaluate(neardup, verify_threshold=0.78, truth=neardup_truth)
    exact = evaluate(neardup, verify_threshold=0.8, verify_exact=True, truth=neardup_truth)
    print("\nneardup:", {name: (round(r["precision"], 3), round(r["recall"], 3))
                         for name, r in (("none", plain), ("estimated", estimated), ("exact", exact))})
    assert plain["recall"] >= 0.95                               # LSH alone finds the pairs...
    assert estimated["precision"] > plain["precision"] + 0.2     # ...verification removes the -v2 (~0.68)
    assert estimated["precision"] >= 0.9 and estimated["recall"] >= 0.9
    assert exact["precision"] >= 0.95 and exact["recall"] >= 0.95


def test_precision_recall_on_generated_edits(edited):
    truth = true_duplicate_pairs(edited)
    plain = evaluate(edited, truth=truth)
    exact = evaluate(edited, verify_threshold=0.8, verify_exact=True, truth=truth)
    print("\nedits:", {name: (round(r["precision"], 3), round(r["recall"], 3))
                       for name, r in (("none", plain), ("exact", exact))})
    assert plain["recall"] >= 0.95
    assert exact["precision"] >= 0.95 and exact["recall"] >= 0.95


def kept_set(docs: list[dict], verify_threshold: float | None) -> tuple[set[str], dict[str, str]]:
    hasher = MinHasher()
    doc_ids = [d["doc_id"] for d in docs]
    with duckdb.connect() as con:
        found = near_duplicate_clusters(con, docs, hasher.signatures([d["text"] for d in docs]), hasher,
                                        verify_threshold)
    removed = duplicates_to_remove(found.clusters, {d["doc_id"]: d for d in docs})
    return set(doc_ids) - set(removed), removed


@pytest.mark.parametrize("verify_threshold", [None, 0.78])
def test_kept_set_is_deterministic_and_independent_of_input_order(neardup, verify_threshold):
    kept, removed = kept_set(neardup, verify_threshold)
    assert kept_set(neardup, verify_threshold) == (kept, removed)
    shuffled = neardup[:]
    random.Random(3).shuffle(shuffled)
    assert kept_set(shuffled, verify_threshold) == (kept, removed)
    assert len(kept) + len(removed) == len(neardup) and set(removed.values()) <= kept
