"""The dedup and pii stages end to end: real Prefect flow runs, a real DuckDB file, a real MLflow
store, on real near-duplicate articles (../shared/data/neardup), generated edits of them and
pages carrying labelled PII (../shared/data/pii).

Covers: precision and recall against brute-force Jaccard on shingles; PII values gone from the
warehouse text; counts reconcile from curation to pii; MLflow metrics; a re-run is a no-op;
the same decisions with another worker count; a new snapshot deduplicated against an earlier
one; a config change replaces a stage's results, leaving nothing stale.
"""

from __future__ import annotations

import html
import json
import random
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from mlflow import MlflowClient

from crawl2model.config import load_config
from flows.dedup import run_dedup
from flows.pipeline import run_pipeline
from flows.scrub import run_scrub
from tasks.dedup import (MinHasher, ShingleJaccard, duplicates_to_remove, exact_hash, near_duplicate_clusters,
                         true_duplicate_pairs)
from tests.conftest import query, shared
from warehouse import Warehouse

pytestmark = pytest.mark.slow

STRUCTURED = {"EMAIL_ADDRESS", "IP_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "PHONE_NUMBER"}


def page(title: str, paragraphs: list[str]) -> str:
    body = "".join(f"<p>{html.escape(p)}</p>\n" for p in paragraphs if p.strip())
    return (f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><article>\n{body}</article></body></html>")


def edited(text: str, fraction: float, rng: random.Random) -> str:
    """The text with `fraction` of its words replaced by made-up words, paragraphs kept."""
    lines = []
    for line in text.split("\n"):
        words = line.split(" ")
        for i in range(len(words)):
            if rng.random() < fraction:
                words[i] = "zq" + "".join(rng.choice("abcdefghij") for _ in range(6))
        lines.append(" ".join(words))
    return "\n".join(lines)


def neardup_docs() -> list[dict]:
    with shared("neardup", "docs.jsonl").open() as lines:
        return [json.loads(line) for line in lines]


def write_pages(folder: Path, named_texts: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in named_texts.items():
        (folder / f"{name}.html").write_text(page(name, text.split("\n")), encoding="utf-8")
    return folder


def pii_pages(records: list[dict], fillers: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Pages of one real article each with six labelled PII records inserted as paragraphs."""
    texts, values = {}, {}
    for n, start in enumerate(range(0, 60, 6)):
        paragraphs = [p for p in fillers[n].split("\n") if p.strip()][:12]
        name = f"pii-{n:02d}"
        values[name] = []
        for i, record in enumerate(records[start:start + 6]):
            paragraphs.insert(2 * i + 1, record["text"].replace("\n", " "))
            values[name] += [s["value"] for s in record["spans"] if s["type"] in STRUCTURED]
        texts[name] = "\n".join(paragraphs)
    return texts, values


def curated_texts(root: Path) -> dict[str, str]:
    """Each document's text as curation stored it (before scrubbing), from the shard Parquet."""
    return dict(query(root, f"select doc_id, text from read_parquet('{root}/parquet/shards/*/documents.parquet') "
                            "where doc_id in (select doc_id from documents)"))


def config(root: Path, *overrides: str):
    return load_config(overrides=["curate.workers=2", "dedup.workers=2", "pii.workers=2", *overrides], data_root=root)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, prefect_server):
    """One run --until pii over neardup pages, generated edits and PII pages."""
    docs = neardup_docs()
    originals = [d for d in docs if "-v" not in d["id"]]
    rng = random.Random(5)
    texts = {f"nd-{d['id']}": d["text"] for d in docs}
    for d in originals[:20]:
        for fraction in (0.005, 0.01, 0.03, 0.10):
            texts[f"ge-{d['id']}-{fraction}"] = edited(d["text"], fraction, rng)
        # exact duplicate after normalization: spacing and punctuation changed
        texts[f"ex-{d['id']}"] = d["text"].replace(". ", "! ").replace(", ", " ,  ")
    with shared("pii", "presidio-synth.jsonl").open() as lines:
        records = [json.loads(line) for line in lines]
    fillers = [d["text"] for d in originals[20:30]]
    pii_texts, pii_values = pii_pages(records, fillers)
    tmp = tmp_path_factory.mktemp("dedup")
    root = tmp / "c2m-data"
    pages = write_pages(tmp / "pages", {**texts, **pii_texts})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("C2M_HOME", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        result = run_pipeline([str(pages)], config(root), until="pii", show_progress=False)
    return {"root": root, "result": result, "pii_values": pii_values, "pages": pages}


def test_near_dedup_precision_and_recall_against_brute_force(pipeline_run):
    root = pipeline_run["root"]
    texts = curated_texts(root)
    kept = {doc_id for (doc_id,) in query(root, "select doc_id from kept_documents")}
    removed = query(root, "select doc_id, duplicate_of from documents where duplicate_of is not null")
    jaccard = ShingleJaccard(texts)
    # precision: a removed document is >= 0.8 similar to the one kept in its place
    good = sum(jaccard(doc_id, kept) >= 0.8 for doc_id, kept in removed)
    assert len(removed) > 100 and good / len(removed) >= 0.95
    # recall: of the pairs >= 0.8 similar (brute force over every pair), few are both still kept
    truth = true_duplicate_pairs([{"doc_id": k, "text": v} for k, v in texts.items()], 0.8)
    left = sum(a in kept and b in kept for a, b in truth)
    assert len(truth) > 150 and 1 - left / len(truth) >= 0.95
    # exact dedup: every copy of a normalized text but one is an exact duplicate
    by_hash = Counter(exact_hash(text) for text in texts.values())
    exact = query(root, "select count(*) from rejections where reason = 'exact_duplicate'")[0][0]
    assert exact == sum(n - 1 for n in by_hash.values()) >= 15


def test_the_measured_in_memory_path_keeps_what_the_stage_keeps(pipeline_run):
    """`python -m tasks.dedup` and bench/dedup.py measure tasks.dedup.near_duplicate_clusters; the
    stage runs tasks.dedup_snapshot. One rule picks the kept document, so on one snapshot they keep
    the same documents (exact verification at the stage's threshold)."""
    root = pipeline_run["root"]
    docs = [{"doc_id": doc_id, "text": text} for doc_id, text in sorted(curated_texts(root).items())]
    hasher = MinHasher()
    with duckdb.connect() as con:
        found = near_duplicate_clusters(con, docs, hasher.signatures([d["text"] for d in docs]), hasher, 0.8, exact=True)
    removed = duplicates_to_remove(found.clusters, {d["doc_id"]: d for d in docs})
    stage_removed = dict(query(root, "select doc_id, duplicate_of from documents where duplicate_of is not null"))
    assert len(removed) > 100 and removed == stage_removed


def test_counts_reconcile_from_curation_to_pii(pipeline_run):
    root = pipeline_run["root"]
    snapshot = pipeline_run["result"].curate.snapshot
    funnel = {r[0]: r[1:] for r in query(root, "select stage, docs_in, docs_out, docs_dropped, docs_quarantined "
                                               "from stage_stats where snapshot = ?", [snapshot])}
    assert query(root, "select * from stage_stats where docs_in <> docs_out + docs_dropped + docs_quarantined") == []
    assert funnel["exact_dedup"][0] == funnel["store"][1]          # in = what the store kept
    assert funnel["near_dedup"][0] == funnel["exact_dedup"][1]
    assert funnel["pii"][0] == funnel["near_dedup"][1]
    kept = query(root, "select count(*) from kept_documents where snapshot = ?", [snapshot])[0][0]
    assert kept == funnel["near_dedup"][1]
    by_reason = dict(query(root, "select reason, count(*) from rejections where snapshot = ? and stage like '%dedup' "
                                 "group by reason", [snapshot]))
    assert by_reason["exact_duplicate"] == funnel["exact_dedup"][2]
    assert by_reason["near_duplicate"] == funnel["near_dedup"][2]
    # every removed document names a kept one, which is in the warehouse and kept
    assert query(root, "select count(*) from documents d left join kept_documents k on k.doc_id = d.duplicate_of "
                       "where d.duplicate_of is not null and k.doc_id is null") == [(0,)]
    sizes = query(root, "select dup_cluster, count(*), min(dup_cluster_size), max(dup_cluster_size) from documents "
                        "group by dup_cluster")
    assert all(n == lo == hi for _, n, lo, hi in sizes)


def test_pii_values_are_gone_and_counted(pipeline_run):
    root, result = pipeline_run["root"], pipeline_run["result"]
    text_of = dict(query(root, "select regexp_extract(url, 'pii-[0-9]+'), text from documents where url like '%pii-%'"))
    assert len(text_of) >= 5  # the others fell to the quality filters
    before = curated_texts(root)
    values = [(name, v) for name, vs in pipeline_run["pii_values"].items() for v in vs]
    curated = " ".join(before.values())
    present = [(name, v) for name, v in values if v in curated]  # what extraction kept
    gone = [(name, v) for name, v in present if v not in text_of[name]]
    assert len(present) >= 30 and len(gone) / len(present) >= 0.95
    assert all("<EMAIL>" in text_of[name] for name in text_of if "@" in " ".join(pipeline_run["pii_values"][name]))
    # per-document counts, their sum in stage_stats and in MLflow agree
    columns = ["pii_email", "pii_ip", "pii_phone", "pii_card", "pii_iban"]
    snapshot = result.curate.snapshot
    in_docs = query(root, "select " + ", ".join(f"sum({c})" for c in columns) + " from kept_documents where snapshot = ?",
                    [snapshot])[0]
    in_stats = query(root, "select " + ", ".join(columns) + " from stage_stats where snapshot = ? and stage = 'pii'",
                     [snapshot])[0]
    assert in_docs == in_stats and all(n > 0 for n in in_docs)
    [summary] = result.pii
    metrics = MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_run(summary.mlflow_run_id).data.metrics
    assert [metrics[f"pii/{c.removeprefix('pii_')}"] for c in columns] == list(in_docs)


def test_dedup_run_is_tracked_in_mlflow(pipeline_run):
    root, result = pipeline_run["root"], pipeline_run["result"]
    [summary] = result.dedup
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == result.mlflow_run_id and run.info.run_name == "dedup"
    m = run.data.metrics
    assert m["dedup/near_duplicates"] == summary.result["near_duplicates"] > 0
    assert m["dedup/pairs_considered"] >= m["dedup/candidate_pairs"] >= m["dedup/merged_pairs"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "dedup")}
    assert {"dedup/cluster_sizes.png", "dedup/s_curve.md", "dedup/result.json"} <= artifacts


def test_rerun_is_a_no_op_and_decisions_do_not_depend_on_workers(pipeline_run, monkeypatch):
    root = pipeline_run["root"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    decisions = "select doc_id, text_hash, dup_cluster, dup_cluster_size, duplicate_of from documents order by all"
    rejections = "select doc_id, stage, reason, detail from rejections where stage like '%dedup' order by all"
    before = (query(root, decisions), query(root, rejections))
    again = run_dedup(config(root), show_progress=False)
    assert again.no_op
    redone = run_dedup(config(root, "dedup.workers=1"), force=True, show_progress=False)
    assert not redone.no_op and (query(root, decisions), query(root, rejections)) == before


def test_config_change_replaces_results(pipeline_run, monkeypatch):
    root = pipeline_run["root"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    snapshot = pipeline_run["result"].curate.snapshot
    near = lambda: query(root, "select count(*) from rejections where reason = 'near_duplicate'")[0][0]  # noqa: E731
    loose = near()
    strict = run_dedup(config(root, "dedup.threshold=0.97"), show_progress=False)
    assert 0 < near() == strict.result["near_duplicates"] < loose
    assert query(root, "select docs_dropped from stage_stats where snapshot = ? and stage = 'near_dedup'",
                 [snapshot]) == [(near(),)]
    # scrubbing again with another replacement starts from the curated text, not the placeholders
    run_scrub(config(root, "pii.replacement=redact"), show_progress=False)
    texts = " ".join(t for (t,) in query(root, "select text from documents where url like '%pii-%'"))
    assert "[REDACTED]" in texts and "<EMAIL>" not in texts


def test_new_snapshot_is_deduplicated_against_the_earlier_one(tmp_path, data_root, prefect_server):
    originals = [d for d in neardup_docs() if "-v" not in d["id"]]
    variants = {d["id"]: d for d in neardup_docs() if d["id"].endswith("-v0")}  # Jaccard ~0.96-0.99
    first = {f"a-{d['id']}": d["text"] for d in originals[:20]}
    second = {f"b-copy-{d['id']}": d["text"].replace(". ", "! ") for d in originals[:8]}  # exact after normalizing
    second |= {f"b-near-{d['id']}": variants[d["id"] + "-v0"]["text"] for d in originals[8:16]}
    second |= {f"b-new-{d['id']}": d["text"] for d in originals[30:38]}
    cfg = config(data_root)
    one = run_pipeline([str(write_pages(tmp_path / "week1", first))], cfg, until="pii", show_progress=False)
    week1 = query(data_root, "select * from documents order by doc_id")
    two = run_pipeline([str(write_pages(tmp_path / "week2", second))], cfg, until="pii", show_progress=False)
    assert one.curate.snapshot != two.curate.snapshot
    assert query(data_root, "select * from documents where snapshot = ? order by doc_id", [one.curate.snapshot]) == week1

    rows = query(data_root, """select regexp_extract(d.url, 'b-[a-z]+'), d.duplicate_of is null, k.snapshot, r.reason
                               from documents d left join documents k on k.doc_id = d.duplicate_of
                               left join rejections r on r.doc_id = d.doc_id and r.stage like '%dedup'
                               where d.snapshot = ?""", [two.curate.snapshot])
    kinds = {}
    for kind, kept, kept_in, reason in rows:
        kinds.setdefault(kind, set()).add((kept, kept_in, reason))
    assert kinds["b-copy"] == {(False, one.curate.snapshot, "exact_duplicate")}
    assert kinds["b-near"] == {(False, one.curate.snapshot, "near_duplicate")}
    assert kinds["b-new"] == {(True, None, None)}
    earlier = query(data_root, "select count(*) from kept_documents where snapshot = ?", [one.curate.snapshot])[0][0]
    assert [s.result["docs_earlier"] for s in two.dedup if s.snapshot == two.curate.snapshot] == [earlier]

    # a document of the first week shows its copies from the second in its cluster
    kept_doc = query(data_root, "select duplicate_of from documents where url like '%b-copy-%' limit 1")[0][0]
    with Warehouse.open(data_root, read_only=True) as wh:
        cluster = wh.duplicates(kept_doc)
    assert cluster[0]["doc_id"] == kept_doc and cluster[0]["kept"]
    assert {r["snapshot"] for r in cluster} == {one.curate.snapshot, two.curate.snapshot}
    assert all(r["reason"] == "exact_duplicate" for r in cluster[1:])
