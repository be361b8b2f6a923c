"""Curation benchmark: crawl2model's curation core vs datatrove 0.10.1, same WARCs, same workers.

    .venv/bin/python bench/curate.py                    # bundled sample, 2 workers
    .venv/bin/python bench/curate.py --scale 4 --workers 2 --repeat 2

Input: the bundled sample's crawl (WARC files made by `crawl2model run`'s sample step, built
here in bench/out/input), copied `--scale` times under distinct names. Each side runs in a fresh
process so that its peak RSS is its own:

  core      crawl2model's stages (ingest, URL filter, trafilatura, py3langid, Gopher/C4/FineWeb
            quality filters, Parquet output) in a process pool: no Prefect, no MLflow
  flow      the same through the real curate flow: Prefect ProcessPoolTaskRunner, the DuckDB load,
            the MLflow run and artifacts (Prefect's local server is started before the clock)
  datatrove WarcReader -> Trafilatura -> py3langid English filter -> Gopher repetition/quality ->
            C4 -> FineWeb -> JsonlWriter, in its own venv (bench/setup_peer_venv.sh)

Prints docs/s (HTML documents read per wall-clock second), the ratio core/datatrove (goal
>= 1.25), peak RSS of the largest process, and the overhead of flow over core (goal <= 5%).
Results also go to bench/out/curate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))


def peak_rss_mb() -> float:
    """Largest resident set of this process and of its waited-for children (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def own_rss_mb() -> float:
    """Largest resident set of this process alone."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> dict[str, float]:
    """CPU time of this process and of its waited-for children (workers, Prefect's server)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_main": own.ru_utime + own.ru_stime, "cpu_children": children.ru_utime + children.ru_stime}


def prepare_input(scale: int) -> list[Path]:
    """The bundled sample crawled into WARC files, copied `scale` times."""
    from crawl2model.config import load_config
    from crawl2model.runtime import prepare_environment

    root = OUT / "input"
    cfg = load_config(data_root=root)
    prepare_environment(root)
    from flows.sample import prepare_sample
    from tasks.crawl import cached_crawl, read_url_list

    urls_file = prepare_sample.fn(cfg, show_progress=True)
    crawl = cached_crawl(read_url_list(urls_file), root / "crawl", cfg.curate.crawl)
    scaled = OUT / f"warcs-x{scale}"
    if not scaled.is_dir():
        tmp = scaled.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for copy in range(scale):
            for warc in crawl.warc_paths:
                _copy_warc(warc, tmp / f"copy{copy}-{warc.name}", copy)
        tmp.rename(scaled)
    return sorted(scaled.glob("*.warc.gz"))


def _copy_warc(src: Path, dst: Path, copy: int) -> None:
    """A copy of the crawl whose target URLs carry `?copy=N`: other documents to every tool (the
    pipeline skips byte-identical inputs and duplicate URLs, so plain copies would not be work)."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.warcwriter import WARCWriter

    with open(src, "rb") as f, open(dst, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for record in ArchiveIterator(f):
            uri = record.rec_headers.get_header("WARC-Target-URI")
            if uri and copy:
                record.rec_headers.replace_header("WARC-Target-URI", f"{uri}?copy={copy}")
            writer.write_record(record)


# --- the two crawl2model sides, each run in its own process ------------------------------------


def _core_shard(args) -> dict:
    from tasks.curate_shard import curate_shard
    from warehouse.shard_files import write_shard

    shard, curate_cfg, root = args
    out = curate_shard(shard, curate_cfg, "bench")
    write_shard(root, shard.key, out.documents, out.rejections, out.stats("bench", shard.key))
    return {"docs_in": out.counts["ingest"].docs_in, "docs_out": len(out.documents)}


def side_core(warcs: list[Path], workers: int) -> dict:
    from crawl2model.config import load_config
    from tasks.ingest import plan_shards

    root = OUT / "core-root"
    shutil.rmtree(root, ignore_errors=True)
    cfg = load_config(data_root=root)
    shards = plan_shards(warcs, cfg.curate.ingest.html_batch_size, cfg.curate.fingerprint())
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(_core_shard, [(s, cfg.curate, root) for s in shards]))
    seconds = time.perf_counter() - start
    docs_in = sum(r["docs_in"] for r in results)
    return {"tool": "crawl2model-core", "docs_in": docs_in, "docs_out": sum(r["docs_out"] for r in results),
            "seconds": seconds, "docs_per_s": docs_in / seconds, "peak_rss_mb": peak_rss_mb(), **cpu_seconds()}


def side_flow(warcs: list[Path], workers: int) -> dict:
    from crawl2model.config import load_config
    from crawl2model.runtime import prepare_environment

    root = OUT / "flow-root"
    shutil.rmtree(root, ignore_errors=True)
    cfg = load_config(overrides=[f"curate.workers={workers}"], data_root=root)
    prepare_environment(root)
    from crawl2model.runtime import prefect_api
    from flows.curate import run_curate
    from flows.tracking import Tracking

    t0 = time.perf_counter()
    Tracking(root, cfg.experiment)  # create the MLflow store (one-time per data root)
    with prefect_api():
        setup = time.perf_counter() - t0
        start = time.perf_counter()
        summary = run_curate([str(w) for w in warcs], cfg, show_progress=False)
        seconds = time.perf_counter() - start
    ingest = next(r for r in summary.funnel if r["stage"] == "ingest")
    return {"tool": "crawl2model-flow", "docs_in": ingest["docs_in"], "docs_out": summary.documents,
            "seconds": seconds, "docs_per_s": ingest["docs_in"] / seconds, "peak_rss_mb": peak_rss_mb(),
            "setup_seconds": setup, **cpu_seconds()}


def run_side(side: str, warcs: list[Path], workers: int) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--workers", str(workers), *map(str, warcs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=int, default=1, help="copies of the sample's WARC files")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; the fastest counts")
    parser.add_argument("--skip-datatrove", action="store_true")
    parser.add_argument("--side", choices=["core", "flow"], help=argparse.SUPPRESS)
    parser.add_argument("warcs", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps((side_core if args.side == "core" else side_flow)(args.warcs, args.workers)))
        return

    warcs = prepare_input(args.scale)
    print(f"input: {len(warcs)} WARC files, {sum(w.stat().st_size for w in warcs) / 1e6:.1f} MB, "
          f"workers={args.workers}, cpus={os.cpu_count()}", flush=True)
    sides = ["core", "flow"] + ([] if args.skip_datatrove else ["datatrove"])
    best: dict[str, dict] = {}
    for attempt in range(args.repeat):
        for side in sides:  # interleaved, so that machine noise hits every side alike
            if side == "datatrove":
                from bench.peer import run_datatrove

                result = run_datatrove(warcs, args.workers, OUT / "datatrove")
            else:
                result = run_side(side, warcs, args.workers)
            print(f"  run {attempt + 1} {side:10s} {result['docs_per_s']:7.1f} docs/s  {result['seconds']:6.1f} s  "
                  f"in={result['docs_in']} out={result['docs_out']} peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
            if side not in best or result["seconds"] < best[side]["seconds"]:
                best[side] = result

    core, flow = best["core"], best["flow"]
    report = {"workers": args.workers, "scale": args.scale, "warcs": len(warcs), "results": best,
              "flow_overhead": flow["seconds"] / core["seconds"] - 1}
    print(f"\n{'side':18s} {'docs/s':>8s} {'seconds':>8s} {'docs in':>8s} {'docs out':>8s} {'peak RSS MB':>12s}")
    for name, r in best.items():
        print(f"{r['tool']:18s} {r['docs_per_s']:8.1f} {r['seconds']:8.1f} {r['docs_in']:8d} {r['docs_out']:8d} "
              f"{r['peak_rss_mb']:12.0f}")
    print(f"CPU seconds, main process + children: core {core['cpu_main']:.1f} + {core['cpu_children']:.1f}, "
          f"flow {flow['cpu_main']:.1f} + {flow['cpu_children']:.1f} (children: workers and Prefect's server)")
    print(f"\nPrefect + MLflow overhead (flow vs core): {report['flow_overhead'] * 100:+.1f}% (goal <= 5%); "
          f"one-time setup before the flow (Prefect server, MLflow store): {flow['setup_seconds']:.1f} s")
    if "datatrove" in best:
        report["speedup_vs_datatrove"] = core["docs_per_s"] / best["datatrove"]["docs_per_s"]
        print(f"crawl2model core vs datatrove {best['datatrove'].get('version', '')}: "
              f"{report['speedup_vs_datatrove']:.2f}x docs/s (goal >= 1.25x)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "curate.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
