"""Soak benchmark of curation: N x the bundled sample through the real curate flow, with the RSS of
the whole process tree sampled over time and docs/s per shard.

    .venv/bin/python bench/soak.py                      # 16x the sample (32 shards), 2 workers
    .venv/bin/python bench/soak.py --scale 4 --workers 2 --interval 0.5 --every 5

Input: the bundled sample's crawl (its two WARC files, made once under bench/out/input by the
sample step), copied `--scale` times by bench/curate.py's prepare_input with `?copy=N` appended to
every target URL, so each copy is other documents to the pipeline (it skips duplicate URLs and
byte-identical inputs; it does not deduplicate text in this stage). One shard per WARC file.

The run: `run_curate` (Prefect ProcessPoolTaskRunner, DuckDB load, MLflow run) in a child process
over a fresh data root; this process samples, every `--interval` seconds with psutil, the RSS of
the child and all its descendants (pool workers, Prefect's server): their sum (shared pages
counted in each process) and the largest single process; it also watches the shard folders
appear (`parquet/shards/<key>`, renamed into place when a worker finishes a shard). RSS is also
split by role: the main process (flow, DuckDB load, MLflow), the largest shard worker, Prefect's
server, so that growth can be placed.

Prints the RSS timeline every `--every` seconds; per shard, in finishing order: docs in, docs/s
(ingest docs over the seconds the worker spent in the shard's stages) and the peak RSS since the
previous shard finished; then the verdicts after the warm-up (the first `--warmup` shards, default
the first round of workers): RSS growth per shard (least-squares slope of the per-shard peak; flat
when the fitted drift over all shards is under 10% of the median) and docs/s of the last third of
the shards against the first third (no slowdown when >= 0.9), each shard's docs/s taken relative to
the median of the shards copied from the same source file (same pages, so content drops out); and
the shard workers' CPU milliseconds per document by round (`--workers` shards in finishing order),
which, unlike wall-clock docs/s, the rest of a shared machine does not move. Results also go to bench/out/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

FLAT_DRIFT = 0.10      # fitted RSS drift over the post-warm-up shards, as a share of the median
NO_SLOWDOWN = 0.90     # docs/s of the last third over the first third


def child(root: Path, workers: int, warcs: list[str]) -> None:
    """The measured run, in its own process: prints one JSON line."""
    from crawl2model.config import load_config
    from crawl2model.runtime import prepare_environment

    cfg = load_config(overrides=[f"curate.workers={workers}"], data_root=root)
    prepare_environment(root)
    from crawl2model.runtime import prefect_api
    from flows.curate import run_curate

    with prefect_api():
        start = time.perf_counter()
        summary = run_curate(warcs, cfg, show_progress=False)
        seconds = time.perf_counter() - start
    ingest = next(r for r in summary.funnel if r["stage"] == "ingest")
    print(json.dumps({"snapshot": summary.snapshot, "shards": summary.shards, "docs_in": ingest["docs_in"],
                      "docs_out": summary.documents, "seconds": seconds}), flush=True)


def role(p, main_pid: int) -> str:
    """What a process of the tree is: main (the flow), server (Prefect's), worker (a shard pool's), other."""
    if p.pid == main_pid:
        return "main"
    try:
        cmd = " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - gone or unreadable: counted as other
        return "other"
    if "uvicorn" in cmd or "prefect.server" in cmd:
        return "server"
    if "resource_tracker" in cmd or "semaphore_tracker" in cmd:
        return "other"
    if "multiprocessing" in cmd or "spawn_main" in cmd or "forkserver" in cmd or "--child" in cmd:
        return "worker"  # spawned pool workers, or forked ones (which keep the main process's command line)
    return "other"


def tree_rss(proc) -> dict:
    """RSS in MB of a process and its descendants: their sum (tree), the largest process, the main
    process, the largest worker, Prefect's server; how many processes there are; the CPU seconds
    the live shard workers have used so far."""
    import psutil

    out = {"tree_mb": 0.0, "largest_mb": 0.0, "main_mb": 0.0, "worker_mb": 0.0, "server_mb": 0.0, "procs": 0,
           "worker_cpu_s": 0.0}
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in members:
        try:
            mb = p.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        kind = role(p, proc.pid)
        if kind == "worker":
            try:
                cpu = p.cpu_times()
                out["worker_cpu_s"] += cpu.user + cpu.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        out["tree_mb"] += mb
        out["largest_mb"] = max(out["largest_mb"], mb)
        if kind != "other":
            out[f"{kind}_mb"] = max(out[f"{kind}_mb"], mb)
        out["procs"] += 1
    return {k: round(v, 2) for k, v in out.items()}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def shard_rates(root: Path) -> dict[str, dict]:
    """Per shard key: docs in (ingest), worker seconds over its stages, docs/s, its input file."""
    import duckdb
    import pyarrow.parquet as pq

    rates = {}
    for stats in (root / "parquet" / "shards").glob("*/stats.parquet"):
        rows = pq.read_table(stats).to_pylist()
        docs = sum(r["docs_in"] for r in rows if r["stage"] == "ingest")
        seconds = sum(r["seconds"] for r in rows)
        rates[stats.parent.name] = {"docs_in": docs, "worker_s": seconds, "docs_per_s": docs / seconds if seconds else 0.0}
    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        for key, label in con.execute("SELECT shard, label FROM shards").fetchall():
            if key in rates:
                rates[key]["label"] = Path(label).name
    finally:
        con.close()
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=16, help="copies of the bundled sample (2 shards each)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between printed timeline rows")
    ap.add_argument("--warmup", type=int, help="shards left out of the verdicts (default: --workers)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("warcs", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.workers, args.warcs)
        return
    if args.scale < 1 or args.workers < 1 or args.interval <= 0:
        ap.error("--scale, --workers and --interval must be positive")
    try:
        import psutil
    except ImportError:
        raise SystemExit("bench/soak.py samples RSS with psutil: pip install psutil") from None
    warmup = args.warmup if args.warmup is not None else args.workers

    clean_env = dict(os.environ)  # prepare_input sets the input root's Prefect/MLflow variables here
    from bench.curate import prepare_input

    warcs = prepare_input(args.scale)
    root = OUT / f"soak-x{args.scale}"
    shutil.rmtree(root, ignore_errors=True)
    print(f"input: {len(warcs)} WARC files (x{args.scale} the sample), "
          f"{sum(w.stat().st_size for w in warcs) / 1e6:.1f} MB; workers={args.workers}, cpus={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    cmd = [sys.executable, __file__, "--child", str(root), "--workers", str(args.workers), *map(str, warcs)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env, stdout=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    samples: list[dict] = []
    finished: dict[str, float] = {}   # shard key -> seconds since start when its folder appeared
    cpu_at: dict[str, float] = {}     # shard key -> the workers' CPU seconds then
    shards_dir = root / "parquet" / "shards"
    next_print = 0.0
    print(f"{'t s':>6s} {'tree RSS MB':>12s} {'main MB':>8s} {'worker MB':>10s} {'server MB':>10s} {'procs':>6s} "
          f"{'shards done':>12s}")
    while proc.poll() is None:
        t = time.monotonic() - start
        rss = tree_rss(watched)
        if shards_dir.is_dir():
            for d in shards_dir.iterdir():
                if d.is_dir() and ".tmp" not in d.name and d.name not in finished:
                    finished[d.name] = t
                    cpu_at[d.name] = rss["worker_cpu_s"]
        samples.append({"t": round(t, 2), **rss, "shards_done": len(finished)})
        if t >= next_print:
            print(f"{t:6.1f} {rss['tree_mb']:12.0f} {rss['main_mb']:8.0f} {rss['worker_mb']:10.0f} "
                  f"{rss['server_mb']:10.0f} {rss['procs']:6d} {len(finished):12d}", flush=True)
            next_print += args.every
        time.sleep(args.interval)
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"the curate run failed (exit {proc.returncode}); its output:\n{output[-3000:]}")
    run = json.loads(output.strip().splitlines()[-1])
    if shards_dir.is_dir():  # a shard finished between the last sample and the exit
        for d in shards_dir.iterdir():
            finished.setdefault(d.name, time.monotonic() - start)
            cpu_at.setdefault(d.name, samples[-1]["worker_cpu_s"] if samples else 0.0)

    rates = shard_rates(root)
    order = sorted((t, key) for key, t in finished.items() if key in rates and rates[key]["docs_in"])
    per_shard, previous = [], 0.0
    for i, (t, key) in enumerate(order):
        window = [s for s in samples if previous <= s["t"] <= t] or [min(samples, key=lambda s: abs(s["t"] - t))]
        per_shard.append({"n": i + 1, "shard": rates[key].get("label", key[:12]), "finished_s": round(t, 1),
                          "docs_in": rates[key]["docs_in"], "docs_per_s": round(rates[key]["docs_per_s"], 1),
                          "worker_cpu_s": cpu_at.get(key, 0.0),
                          **{f"peak_{k}": max(s[k] for s in window)
                             for k in ("tree_mb", "main_mb", "worker_mb", "server_mb")}})
        previous = t

    print(f"\n{'#':>3s} {'shard':28s} {'done at s':>9s} {'docs in':>8s} {'docs/s':>7s}   peak RSS MB: "
          f"{'tree':>6s} {'main':>6s} {'worker':>6s} {'server':>6s}")
    for r in per_shard:
        print(f"{r['n']:3d} {r['shard'][:28]:28s} {r['finished_s']:9.1f} {r['docs_in']:8d} {r['docs_per_s']:7.1f}   "
              f"{'':12s} {r['peak_tree_mb']:6.0f} {r['peak_main_mb']:6.0f} {r['peak_worker_mb']:6.0f} "
              f"{r['peak_server_mb']:6.0f}")

    # Rounds of `workers` shards in finishing order: the workers' CPU seconds per document over a
    # round does not depend on how busy the rest of the machine is, unlike wall-clock docs/s.
    rounds, prev_cpu = [], 0.0
    for i in range(0, len(per_shard), args.workers):
        chunk = per_shard[i:i + args.workers]
        cpu = chunk[-1]["worker_cpu_s"]
        rounds.append({"round": len(rounds) + 1, "shards": [r["n"] for r in chunk],
                       "docs": sum(r["docs_in"] for r in chunk),
                       "cpu_ms_per_doc": round(1000 * (cpu - prev_cpu) / max(1, sum(r["docs_in"] for r in chunk)), 2)})
        prev_cpu = cpu
    print("worker CPU ms per document, by round of " + str(args.workers) + " shards: "
          + ", ".join(f"{r['cpu_ms_per_doc']:.1f}" for r in rounds))

    after = per_shard[warmup:]
    verdict: dict = {"warmup_shards": warmup, "shards_after_warmup": len(after)}
    if len(after) >= 3:
        xs = [r["n"] for r in after]
        for col in ("peak_tree_mb", "peak_main_mb", "peak_worker_mb", "peak_server_mb"):
            ys = [r[col] for r in after]
            growth = slope(xs, ys)
            drift = growth * (len(after) - 1) / (statistics.median(ys) or 1.0)
            verdict[col] = {"growth_mb_per_shard": round(growth, 2), "drift": round(drift, 3),
                            "flat": abs(drift) < FLAT_DRIFT}
        # Shards of one source file (copyN-<file>) hold the same pages: each shard's docs/s relative
        # to the median of its own source's shards takes the content out and leaves the trend.
        by_source: dict[str, list[float]] = {}
        for r in after:
            by_source.setdefault(re.sub(r"^copy\d+-", "", r["shard"]), []).append(r["docs_per_s"])
        rel = [r["docs_per_s"] / statistics.median(by_source[re.sub(r"^copy\d+-", "", r["shard"])]) for r in after]
        third = max(1, len(after) // 3)
        first, last = statistics.median(rel[:third]), statistics.median(rel[-third:])
        verdict["docs_per_s"] = {"first_third": round(first, 3), "last_third": round(last, 3),
                                 "ratio": round(last / first, 3), "no_slowdown": last / first >= NO_SLOWDOWN,
                                 "relative_slope_per_shard": round(slope(xs, rel), 4)}
        late = rounds[max(1, -(-warmup // args.workers)):]  # rounds after the warm-up shards
        if len(late) >= 2:
            third = max(1, len(late) // 3)
            a = statistics.median(r["cpu_ms_per_doc"] for r in late[:third])
            b = statistics.median(r["cpu_ms_per_doc"] for r in late[-third:])
            verdict["cpu_ms_per_doc"] = {"first_third": a, "last_third": b, "ratio": round(b / a, 3) if a else None,
                                         "no_slowdown": bool(a) and a / b >= NO_SLOWDOWN if b else True}
    peak_tree = max(s["tree_mb"] for s in samples)
    peak_largest = max(s["largest_mb"] for s in samples)
    report = {"scale": args.scale, "workers": args.workers, "warcs": len(warcs), "cpus": os.cpu_count(),
              "loadavg_end": os.getloadavg()[0], "run": run, "docs_per_s_overall": run["docs_in"] / run["seconds"],
              "peak_tree_mb": peak_tree, "peak_largest_mb": peak_largest, "per_shard": per_shard,
              "verdict": verdict, "samples": samples}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "soak.json").write_text(json.dumps(report, indent=1) + "\n")

    print(f"\n{run['docs_in']} docs in, {run['docs_out']} kept, {len(per_shard)} shards in {run['seconds']:.1f}s "
          f"({report['docs_per_s_overall']:.1f} docs/s overall); peak RSS: tree {peak_tree:.0f} MB, "
          f"largest process {peak_largest:.0f} MB; {len(samples)} samples")
    if len(after) < 3:
        print(f"too few shards after the warm-up ({len(after)}) for a verdict: raise --scale")
        return
    for col, what in (("peak_tree_mb", "tree RSS"), ("peak_main_mb", "main process RSS"),
                      ("peak_worker_mb", "largest worker RSS"), ("peak_server_mb", "Prefect server RSS")):
        v = verdict[col]
        print(f"{what:20s}: {v['growth_mb_per_shard']:+6.2f} MB per shard after {warmup} warm-up shards "
              f"(fitted drift {v['drift']:+.1%} of the median): {'FLAT' if v['flat'] else 'GROWING'}")
    d = verdict["docs_per_s"]
    print(f"docs/s per shard, relative to the same source file's median: first third {d['first_third']}, "
          f"last third {d['last_third']} (x{d['ratio']}, {d['relative_slope_per_shard']:+.1%} per shard): "
          f"{'no slowdown' if d['no_slowdown'] else 'SLOWDOWN'} (wall clock: machine load moves it)")
    c = verdict.get("cpu_ms_per_doc")
    if c:
        print(f"worker CPU per document, rounds after the warm-up: first third {c['first_third']} ms, last third "
              f"{c['last_third']} ms (x{c['ratio']}): {'no slowdown' if c['no_slowdown'] else 'SLOWDOWN'}")
    print("bench/out/soak.json")


if __name__ == "__main__":
    main()
