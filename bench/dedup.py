"""Benchmark: crawl2model's dedup (signatures + LSH + clustering) against datatrove 0.10.1's
MinHash dedup stages, on the same documents at 1x, 4x and 16x the bundled sample.

    .venv/bin/python bench/dedup.py                       # scales 1 4 16, workers 2
    .venv/bin/python bench/dedup.py --scales 1 4 --workers 2 --skip-datatrove

Input: the bundled sample's pages, crawled and curated once (bench/curate.py's WARCs, curated
with tasks.curate_shard; cached as bench/out/dedup/sample.jsonl). At scale N every document
comes N times: copy 0 as it is, copy k with a share of its words replaced, cycling through
0% (an exact copy), 1% and 3% (near duplicates, Jaccard ~0.95 and ~0.8) and 20% (not a
duplicate), each from its own seed. So the number of duplicates grows with N, as in a real
crawl that keeps revisiting the same site.

Sides, each in its own process (peak RSS is the largest of the process and any one child):
  crawl2model           the dedup stage without Prefect: a warehouse snapshot holding the
                        documents in shards of 500 (set up once, in another process), then
                        signatures in a process pool of --workers and tasks.dedup_snapshot (scope, exact pairs,
                        LSH in DuckDB, exact Jaccard verification, union-find, center split,
                        the transaction that stores it all) - timed
  crawl2model-noverify  the same with dedup.verify=none (what datatrove does: every LSH
                        candidate pair is merged)
  datatrove             bench/datatrove_minhash.py in its own venv: MinhashDedupSignature ->
                        Buckets -> Cluster -> Filter, 5-grams, 14 bands x 8 rows, --workers
Prints docs/s, peak RSS, documents removed, the speed ratio, and microseconds per document at
each scale relative to 1x (goal: flat within 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.curate import cpu_seconds, own_rss_mb, peak_rss_mb, prepare_input  # noqa: E402

OUT = REPO / "bench" / "out" / "dedup"
SHARD_DOCS = 500
EDIT_RATES = (0.0, 0.01, 0.03, 0.20)  # copy k >= 1 uses EDIT_RATES[(k - 1) % 4]


def sample_documents() -> Path:
    """The bundled sample, curated: one JSON line per kept document (id, text)."""
    path = OUT / "sample.jsonl"
    if path.exists():
        return path
    from crawl2model.config import load_config
    from tasks.curate_shard import curate_shard
    from tasks.ingest import plan_shards

    cfg = load_config(data_root=OUT / "root")
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        for shard in plan_shards(prepare_input(1), cfg.curate.ingest.html_batch_size, cfg.curate.fingerprint()):
            for doc in curate_shard(shard, cfg.curate, "bench").documents:
                out.write(json.dumps({"id": doc["doc_id"], "text": doc["text"]}) + "\n")
    tmp.rename(path)
    return path


def edited(text: str, rate: float, rng: random.Random) -> str:
    if not rate:
        return text
    words = text.split(" ")
    for i in range(len(words)):
        if rng.random() < rate:
            words[i] = "zq" + "".join(rng.choice("abcdefghij") for _ in range(6))
    return " ".join(words)


def scaled_documents(scale: int) -> Path:
    path = OUT / f"docs-x{scale}.jsonl"
    if path.exists():
        return path
    docs = [json.loads(line) for line in sample_documents().open()]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        for copy in range(scale):
            for doc in docs:
                rng = random.Random(f"{doc['id']}/{copy}")
                text = doc["text"] if copy == 0 else edited(doc["text"], EDIT_RATES[(copy - 1) % 4], rng)
                out.write(json.dumps({"id": f"{doc['id']}-c{copy}", "text": text}) + "\n")
    tmp.rename(path)
    return path


def warehouse_of(input_path: Path) -> Path:
    """A data root whose warehouse holds the documents as one complete snapshot, in shards of
    SHARD_DOCS (what curation would have left); made once per input, in its own process, so
    that its memory does not count in the sides' peak RSS."""
    from warehouse import Warehouse
    from warehouse.shard_files import write_shard

    root = OUT / f"root-{input_path.stem}"
    if (root / "ready").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    docs = [json.loads(line) for line in input_path.open()]
    with Warehouse.open(root) as wh:
        wh.begin_snapshot("bench", "bench", [str(input_path)])
        for start in range(0, len(docs), SHARD_DOCS):
            key = f"shard{start // SHARD_DOCS:05d}"
            rows = [{"doc_id": d["id"], "url": f"https://example.org/{d['id']}", "text": d["text"], "shard": key,
                     "chars": len(d["text"])} for d in docs[start:start + SHARD_DOCS]]
            write_shard(root, key, rows, [], [])
            wh.load_shard(key, "bench", "bench", key)
        wh.finish_snapshot("bench", {})
    (root / "ready").touch()
    return root


def side_crawl2model(root: Path, workers: int, verify: str) -> dict:
    """The dedup stage's work on the snapshot, timed: signatures in a process pool, then
    tasks.dedup_snapshot (its transaction replaces any earlier dedup of the snapshot)."""
    from crawl2model.config import DedupConfig
    from tasks.dedup_snapshot import deduplicate_snapshot
    from tasks.snapshot_shards import sign_shard
    from warehouse import Warehouse

    cfg = DedupConfig(verify=verify)  # (the whole Config would import the PII scrubber: not measured here)
    shutil.rmtree(root / "parquet" / "minhash", ignore_errors=True)  # sign again on every run
    with Warehouse.open(root) as wh:
        shards = wh.snapshot_shards("bench")
        docs = wh.counts("bench")["documents"]
        started = time.perf_counter()
        with ProcessPoolExecutor(workers) as pool:
            files = [str(f) for f in pool.map(sign_shard, [root] * len(shards), shards, [cfg] * len(shards))]
        signing = time.perf_counter() - started
        result = deduplicate_snapshot(wh, "bench", cfg, files, signing)
        seconds = time.perf_counter() - started
        removed = sorted(r[0] for r in wh.con.execute("SELECT doc_id FROM documents WHERE duplicate_of IS NOT NULL").fetchall())
    ids_file = OUT / f"removed-{root.name}-{verify}.txt"
    ids_file.write_text("\n".join(removed) + "\n")
    return {"tool": "crawl2model" if verify == "exact" else "crawl2model-noverify", "docs_in": docs,
            "docs_removed": len(removed), "seconds": seconds, "signature_seconds": signing,
            "docs_per_s": docs / seconds, "peak_rss_mb": peak_rss_mb(), "peak_rss_self_mb": own_rss_mb(),
            "removed_ids_file": str(ids_file), "candidate_pairs": result.candidate_pairs,
            "merged_pairs": result.merged_pairs, **cpu_seconds()}


def run_side(side: str, input_path: Path, workers: int) -> dict:
    if side == "datatrove":
        from bench.peer import _clean_env, ensure_venv

        python = ensure_venv()
        cmd = [str(python), str(REPO / "bench" / "datatrove_minhash.py"), "--input", str(input_path),
               "--workers", str(workers), "--out", str(OUT / f"datatrove-{input_path.stem}")]
        env = _clean_env()
    else:
        setup = [sys.executable, __file__, "--side", "setup", str(input_path)]
        subprocess.run(setup, check=True, capture_output=True, cwd=REPO)
        cmd = [sys.executable, __file__, "--side", side, "--workers", str(workers), str(input_path)]
        env = None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(a: dict, b: dict) -> float:
    """Jaccard of two sides' removed sets (1.0 = the same documents removed)."""
    set_a, set_b = (set(Path(r["removed_ids_file"]).read_text().split()) for r in (a, b))
    return len(set_a & set_b) / max(1, len(set_a | set_b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-datatrove", action="store_true")
    parser.add_argument("--side", choices=["setup", "crawl2model", "crawl2model-noverify"], help=argparse.SUPPRESS)
    parser.add_argument("input", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "setup":
        warehouse_of(args.input)
        return
    if args.side:
        verify = "exact" if args.side == "crawl2model" else "none"
        print(json.dumps(side_crawl2model(warehouse_of(args.input), args.workers, verify)))
        return

    sides = ["crawl2model", "crawl2model-noverify"] + ([] if args.skip_datatrove else ["datatrove"])
    rows = []
    for scale in args.scales:
        input_path = scaled_documents(scale)
        results = {side: run_side(side, input_path, args.workers) for side in sides}
        for side, r in results.items():
            print(f"x{scale:<3d} {side:21s} {r['docs_in']:7d} docs {r['docs_per_s']:8.1f} docs/s {r['seconds']:7.1f} s "
                  f"removed {r['docs_removed']:6d}  peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)
        rows.append((scale, results))

    print(f"\nworkers={args.workers} cpus={os.cpu_count()}")
    print(f"{'scale':>5s} {'side':21s} {'docs':>7s} {'docs/s':>8s} {'us/doc':>8s} {'vs 1x':>6s} {'RSS MB':>7s}"
          f" {'speed vs datatrove':>19s} {'RSS vs datatrove':>17s} {'same removed':>13s}")
    base = {side: results[side]["seconds"] / results[side]["docs_in"] for side, results in
            [(s, rows[0][1]) for s in rows[0][1]]}
    for scale, results in rows:
        peer = results.get("datatrove")
        for side, r in results.items():
            per_doc = r["seconds"] / r["docs_in"]
            speed = f"{r['docs_per_s'] / peer['docs_per_s']:.2f}x" if peer and side != "datatrove" else ""
            rss = f"{r['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x" if peer and side != "datatrove" else ""
            same = f"{agreement(r, peer):.3f}" if peer and side != "datatrove" else ""
            print(f"{scale:>5d} {side:21s} {r['docs_in']:7d} {r['docs_per_s']:8.1f} {per_doc * 1e6:8.0f} "
                  f"{per_doc / base[side]:6.2f} {r['peak_rss_mb']:7.0f} {speed:>19s} {rss:>17s} {same:>13s}")


if __name__ == "__main__":
    main()
