"""The whole pipeline on the bundled sample: wall time per stage, and the share of it that the
main process spends in orchestration and tracking (Prefect + MLflow) rather than in the work.

    .venv/bin/python bench/pipeline.py                      # process runner, then Dask (~25 min on 2 cores)
    .venv/bin/python bench/pipeline.py --runner process     # one of them
    .venv/bin/python bench/pipeline.py --small              # quick (tests/test_cli.py's SMALL), for development
    .venv/bin/python bench/pipeline.py --small pretrain.max_steps=8   # key=value overrides pass through

Each runner (`runner.kind` of the data stages curate, dedup, pii) runs in a fresh child process
on a fresh data root (bench/out/pipeline-<runner>/, removed first), one after the other, with the
PREFECT_*, MLFLOW_* and C2M_HOME variables of this shell left out: the child loads the config,
calls crawl2model.runtime.prepare_environment, imports flows.pipeline and calls
`run_pipeline(None, cfg, show_progress=False)`, i.e. `crawl2model run` on the sample, to the last
stage, with Prefect's temporary local server and the SQLite MLflow store in the data root.

How the share is measured: a profiler thread in the child wakes every ~5 ms, takes the MAIN
thread's stack (`sys._current_frames()`) and charges the time since its previous sample to what
that stack is doing. It walks from the innermost frame outward, past the standard library and past
general-purpose libraries, to the first frame that decides:

  prefect    prefect, prefect_dask; and our glue that only drives Prefect (crawl2model/runtime.py,
             flows/pipeline.py:in_session). Includes the flow/task engines, API calls, the
             ProcessPoolTaskRunner's start (spawn) and shutdown, waiting for Prefect's server
  dask       distributed, dask: the DaskTaskRunner's client, starting and closing its LocalCluster
             (the counterpart of the process pool's start and shutdown, `runner.kind=dask`)
  mlflow     mlflow; and flows/tracking.py (our thin MlflowClient wrapper)
  work       any other repository file (flows, tasks, warehouse, model, ...)
  report     flows/report.py, flows/summary.py: our own charts and markdown for MLflow and the
             Prefect UI (counted as work, shown apart)
  waiting    the main thread blocked (a threading wait, innermost) in a Prefect future's
             result()/wait(), through the process pool's or Dask's future, on a shard task that
             runs in a worker process: counted as WORK, because the workers compute meanwhile
             (their CPU is in the second table). Once the shard is done, unpacking its final
             state is Prefect's again.
General-purpose libraries (sqlalchemy, alembic, httpx, anyio, uvicorn, starlette, fastapi,
pydantic, cloudpickle, numpy, pandas, torch, duckdb, trafilatura, tokenizers, matplotlib, ...)
take the side of whoever called them: SQLAlchemy under MLflow is tracking, httpx under Prefect's
client is orchestration, torch under model/ is work, httpx under tasks/crawl.py would be work.
The share = (prefect + dask + mlflow) / wall seconds, per phase and in total.

Phases: `startup: imports` (config, prepare_environment, importing flows.pipeline: Prefect,
MLflow, torch, ...), `startup: servers` (run_pipeline until the flow is called: Prefect's
temporary API server and the MLflow store), then the flow: `sample` (building and crawling the
bundled sample), each stage (the run_* function that `pipeline_flow` calls, wrapped by this
script; the seconds agree with PipelineResult.stage_seconds, checked), `summary`
(publish_summary), `flow (between stages)` (the flow engine, the parent MLflow run, ledger
queries), and `shutdown` (log drain, server stop). Wall seconds come from time stamps taken at
the phase boundaries; the profiler's seconds are assigned to the phase current at each sample.

Samples are weighted by the time since the previous one (so they add up to the wall time even
when a C extension holding the GIL delays the profiler). Only the main thread is classified: time
it loses waiting for the GIL to a background thread counts for whatever it is running.

What the main-thread profile does not see, reported beside it (psutil, every second, by phase):
CPU seconds of the main process's other Python threads (Prefect's event loops and event/log
workers, the MLflow warm-up, Dask's IO loop, crawl threads), its native threads (torch/OpenMP,
DuckDB), Prefect's server process, the shard worker processes, model.train and other children.
On this 2-core machine the server's CPU competes with the workers. The profiler's own cost (CPU
seconds spent classifying stacks, with the GIL held) is printed; it is ~2% of the run.

Prints a table per runner and one comparing runners; bench/out/pipeline.json keeps everything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

# tests/test_cli.py's SMALL: the whole pipeline in a minute or two
SMALL = ("sample.max_mb=0.4", "sample.packages=[sklearn,scipy]", "pretrain.preset=tiny", "pretrain.max_steps=4",
         "pretrain.eval_every=2", "pretrain.micro_batch=4", "pretrain.tokens_per_step=512",
         "sft.max_steps=3", "sft.max_examples=64", "sft.eval_batches=2", "dpo.max_steps=2", "dpo.self_play_pairs=8",
         "dpo.self_play_tokens=8", "dpo.eval_batches=2", "eval.val_windows=4", "audit.regurgitation_prompts=4",
         "export.gguf_quants=[f16,q8_0]", "export.torch_quants=[int8]", "export.eval_windows=4", "export.gen_tokens=8")

STAGE_FUNCTIONS = {"curate": "run_curate", "dedup": "run_dedup", "pii": "run_scrub", "tokenizer": "run_tokenizer",
                   "pretrain": "run_pretrain", "sft": "run_sft", "dpo": "run_dpo", "eval": "run_eval",
                   "export": "run_export", "register": "run_register"}
PHASES = ("startup: imports", "startup: servers", "sample", *STAGE_FUNCTIONS, "summary", "flow (between stages)",
          "shutdown")
ORCH = ("prefect", "dask", "mlflow")
CPU_COLUMNS = ("main thread", "other threads", "native threads", "prefect server", "workers", "trainer",
               "other processes")
CATEGORIES = (*ORCH, "work", "report", "waiting")

# --- classifying a stack ----------------------------------------------------------------------

STDLIB = str(Path(sysconfig.get_paths()["stdlib"]).resolve()) + os.sep
PACKAGE_SIDE = {"prefect": "prefect", "prefect_dask": "prefect", "distributed": "dask", "dask": "dask",
                "mlflow": "mlflow"}
REPO_SIDE = {"crawl2model/runtime.py": "prefect", "flows/tracking.py": "mlflow", "flows/report.py": "report",
             "flows/summary.py": "report"}
FUTURE_FILES = ("prefect/futures.py", "prefect_dask/task_runners.py")
SKIP, FUTURE, PLUMBING = "skip", "future", "plumbing"


def frame_kind(code, cache: dict) -> tuple[str, str, bool]:
    """(kind, short name, whether it is our code) of a code object. Kind: a side (prefect, dask,
    mlflow, work, report), SKIP (stdlib, general-purpose libraries, this script) or FUTURE (a
    Prefect future's result/wait)."""
    hit = cache.get(code)
    if hit is not None:
        return hit
    path = code.co_filename
    short, kind, ours = path, SKIP, False
    marker = next((m for m in ("/site-packages/", "/dist-packages/") if m in path), None)
    if marker:
        short = path.split(marker, 1)[1]
        kind = PACKAGE_SIDE.get(short.split("/", 1)[0].removesuffix(".py"), SKIP)
        if short.startswith(FUTURE_FILES) and code.co_name in ("result", "wait"):
            kind = FUTURE
        elif short.startswith("prefect/task_runners.py") and code.co_name == "result":
            kind = PLUMBING  # the process pool's _UnpicklingFuture, under a PrefectConcurrentFuture
    elif path.startswith(str(REPO) + os.sep):
        short = path[len(str(REPO)) + 1:]
        if short.startswith("bench/"):
            kind = SKIP
        elif short == "flows/pipeline.py" and code.co_name == "in_session":
            kind = "prefect"
        else:
            kind = REPO_SIDE.get(short, "work")
            ours = short not in ("crawl2model/runtime.py", "flows/tracking.py")
    elif path.startswith(STDLIB):
        short = path[len(STDLIB):]
    hit = cache[code] = (kind, f"{short}:{code.co_name}", ours)
    return hit


def classify(frame, cache: dict) -> tuple[str, str, str]:
    """(category, deciding frame, our code that called into it) of the main thread's stack."""
    if frame is None:
        return "work", "-", "-"
    blocked = frame_kind(frame.f_code, cache)[1].startswith("threading.py:")  # a Condition/Event wait
    inner = None  # blocked future plumbing (Dask client, unpickling future): under a Prefect future?
    f = frame
    while f is not None:
        kind, name, _ = frame_kind(f.f_code, cache)
        if kind == FUTURE:
            return ("waiting" if blocked else "prefect"), name, _our_caller(f.f_back, cache)
        if kind in ("dask", PLUMBING):
            if not blocked:
                return ("dask" if kind == "dask" else "prefect"), name, _our_caller(f, cache)
            inner = inner or (kind, name, f)
        elif kind != SKIP:
            break
        f = f.f_back
    if inner:
        return ("dask" if inner[0] == "dask" else "prefect"), inner[1], _our_caller(inner[2], cache)
    if f is None:
        return "work", "bench/pipeline.py", "-"
    return kind, name, (_our_caller(f, cache) if kind in ORCH else "-")


def _our_caller(f, cache: dict) -> str:
    """The innermost frame of our code (not this script, not the Prefect/MLflow glue) from f outward."""
    while f is not None:
        _, name, ours = frame_kind(f.f_code, cache)
        if ours:
            return name
        f = f.f_back
    return "-"


# --- the child: one pipeline run under the profiler --------------------------------------------


class Profiler(threading.Thread):
    """Samples the main thread's stack every `interval` seconds; time since the previous sample
    goes to (phase, category). Also, every second, CPU seconds of threads and child processes."""

    def __init__(self, interval: float = 0.005):
        super().__init__(name="bench-profiler", daemon=True)
        self.interval = interval
        self.main = threading.main_thread()
        self.phase_at = (PHASES[0], time.perf_counter())  # set by the main thread: (phase, since)
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.by_decider: dict[tuple[str, str], float] = defaultdict(float)
        self.by_caller: dict[tuple[str, str], float] = defaultdict(float)
        self.samples = 0
        self.cost = 0.0
        self.cpu: dict[tuple[str, str], float] = defaultdict(float)  # (phase, what) -> CPU seconds
        self.thread_cpu: dict[str, float] = defaultdict(float)
        self.process_cpu: dict[str, float] = defaultdict(float)
        self._cpu_last: dict[tuple[str, int], tuple[str, float]] = {}
        self._halt = threading.Event()
        self._cache: dict = {}

    def run(self) -> None:
        last = time.perf_counter()
        next_cpu = last
        previous_phase = self.phase_at[0]
        while not self._halt.wait(self.interval):
            now, cpu_before = time.perf_counter(), time.thread_time()
            frame = sys._current_frames().get(self.main.ident)
            phase, since = self.phase_at
            category, decider, caller = classify(frame, self._cache)
            del frame
            dt = now - last
            if phase != previous_phase and last < since < now:  # a boundary inside the interval
                self.seconds[(previous_phase, category)] += since - last
                self.seconds[(phase, category)] += now - since
            else:
                self.seconds[(phase, category)] += dt
            previous_phase = phase
            self.by_decider[(category, decider)] += dt
            if category in ORCH:
                self.by_caller[(category, caller)] += dt
            self.samples += 1
            if now >= next_cpu:
                self._cpu_tick(phase)
                next_cpu = now + 1.0
            last = now
            self.cost += time.thread_time() - cpu_before

    def stop(self) -> None:
        self._cpu_tick(self.phase_at[0])
        self._halt.set()
        self.join()

    def _cpu_tick(self, phase: str) -> None:
        """Charge each thread's and child process's CPU seconds since the last tick to `phase`."""
        import psutil

        me = psutil.Process()
        names = {t.native_id: t.name for t in threading.enumerate()}
        seen: list[tuple[tuple[str, int], str, float]] = []
        for t in me.threads():
            if t.id == self.main.native_id:
                name = "main thread"
            elif t.id == self.native_id:
                name = "profiler"
            elif t.id in names:
                name = f"thread {_strip_digits(names[t.id])}"
            else:
                name = "native threads"  # not started by Python: torch/OpenMP, DuckDB, tokenizers pools
            seen.append((("thread", t.id), name, t.user_time + t.system_time))
        for child in me.children(recursive=True):
            try:
                with child.oneshot():
                    cmd = " ".join(child.cmdline())
                    cpu = child.cpu_times()
                seen.append((("process", child.pid), _process_class(cmd), cpu.user + cpu.system))
            except psutil.Error:
                continue
        for key, name, total in seen:
            before = self._cpu_last.get(key, (name, 0.0))[1]
            delta = max(0.0, total - before)
            self._cpu_last[key] = (name, total)
            if key[0] == "thread":
                self.thread_cpu[name] += delta
                self.cpu[(phase, name if not name.startswith("thread ") else "other threads")] += delta
            else:
                self.process_cpu[name] += delta
                self.cpu[(phase, name)] += delta


def _strip_digits(name: str) -> str:
    return "".join(c for c in name if not c.isdigit()).rstrip("-_ ") or name


def _process_class(cmd: str) -> str:
    if "model.train" in cmd:  # before the others: its arguments hold the data root's path
        return "trainer"
    if "multiprocessing" in cmd:  # spawned shard workers: the process pool's, Dask's
        return "workers"
    if "prefect" in cmd and ("server" in cmd or "uvicorn" in cmd):
        return "prefect server"
    return "other processes"


def run_child(runner: str, root: Path, overrides: list[str], json_path: Path) -> None:
    started = time.perf_counter()
    marks: list[tuple[str, float]] = [(PHASES[0], started)]
    prof = Profiler()
    prof.phase_at = (PHASES[0], started)
    prof.start()

    def enter(phase: str) -> str:
        previous, now = prof.phase_at[0], time.perf_counter()
        prof.phase_at = (phase, now)
        marks.append((phase, now))
        return previous

    from crawl2model.config import load_config
    from crawl2model.runtime import prepare_environment

    cfg = load_config(overrides=[*overrides, f"runner.kind={runner}"], data_root=root)
    prepare_environment(cfg.data_root)  # before prefect and mlflow are imported
    import flows.pipeline as pipeline
    import flows.sample as sample

    def timed(phase: str, fn):
        def wrapper(*args, **kwargs):
            previous = enter(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                enter(previous)
        return wrapper

    for stage, name in STAGE_FUNCTIONS.items():
        setattr(pipeline, name, timed(stage, getattr(pipeline, name)))
    sample.prepare_sample = timed("sample", sample.prepare_sample)
    pipeline.publish_summary = timed("summary", pipeline.publish_summary)
    original_flow = pipeline.pipeline_flow

    def flow_wrapper(*args, **kwargs):
        enter("flow (between stages)")
        try:
            return original_flow(*args, **kwargs)
        finally:
            enter("shutdown")

    pipeline.pipeline_flow = flow_wrapper
    load = os.getloadavg()
    enter("startup: servers")
    error = None
    try:
        result = pipeline.run_pipeline(None, cfg, show_progress=False)
    except BaseException as exc:  # noqa: BLE001 - reported, the parent goes on with the other runner
        import traceback

        error, result = traceback.format_exc(), None
    ended = time.perf_counter()
    marks.append(("end", ended))
    prof.stop()

    wall: dict[str, float] = defaultdict(float)
    for (phase, t), (_, t_next) in zip(marks, marks[1:]):
        wall[phase] += t_next - t
    report = {
        "runner": runner, "data_root": str(root), "overrides": [*overrides, f"runner.kind={runner}"],
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "error": error,
        "total_seconds": ended - started, "loadavg_start": load, "loadavg_end": os.getloadavg(),
        "phases": {p: {"seconds": wall.get(p, 0.0),
                       **{c: prof.seconds.get((p, c), 0.0) for c in CATEGORIES},
                       "cpu": {w: v for (ph, w), v in prof.cpu.items() if ph == p}}
                   for p in PHASES if p in wall},
        "stage_seconds": result.stage_seconds if result else {},
        "pipeline_seconds": result.seconds if result else None,
        "profiler": {"interval_s": prof.interval, "samples": prof.samples, "cost_s": prof.cost},
        "top_orchestration_frames": _top({k: v for k, v in prof.by_decider.items() if k[0] in ORCH}, 25),
        "top_frames_by_category": {c: _top({k: v for k, v in prof.by_decider.items() if k[0] == c}, 10)
                                   for c in CATEGORIES},
        "top_orchestration_callers": _top(prof.by_caller, 25),
        "thread_cpu": dict(sorted(prof.thread_cpu.items(), key=lambda kv: -kv[1])),
        "process_cpu": dict(prof.process_cpu),
        "versions": _versions(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    json_path.write_text(json.dumps(report, indent=1))
    print_run(report)


def _top(acc: dict, n: int) -> list[dict]:
    rows = sorted(acc.items(), key=lambda kv: -kv[1])[:n]
    return [{"category": c, "frame": f, "seconds": round(s, 3)} for (c, f), s in rows]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("prefect", "mlflow", "prefect-dask", "distributed", "torch", "duckdb"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


# --- printing ----------------------------------------------------------------------------------


def orch_seconds(row: dict) -> float:
    return sum(row[c] for c in ORCH)


def print_run(r: dict) -> None:
    print(f"\n## runner.kind={r['runner']}  ({r['when']}, load average {r['loadavg_start'][0]:.2f} at start, "
          f"{r['loadavg_end'][0]:.2f} at end)")
    if r["error"]:
        print(f"FAILED after {r['total_seconds']:.1f} s:\n{r['error'][-3000:]}")
    print("\n| phase | seconds | orch+tracking s | share | prefect s | dask s | mlflow s | waiting on workers s "
          "| report s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    groups = {"startup": [p for p in r["phases"] if p.startswith("startup")],
              "flow": [p for p in r["phases"] if not p.startswith("startup") and p != "shutdown"],
              "shutdown": [p for p in r["phases"] if p == "shutdown"]}
    for p, row in r["phases"].items():
        print(_row(p, row))
        if p == groups["startup"][-1]:
            print(_row("**startup total**", _sum(r, groups["startup"]), bold=True))
    print(_row("**pipeline flow (sample .. register)**", _sum(r, groups["flow"]), bold=True))
    print(_row("**whole run**", _sum(r, list(r["phases"])), bold=True))

    print("\nCPU seconds by phase (psutil, 1 s ticks). Main process: main thread, other Python threads, native "
          "threads (torch/OpenMP, DuckDB, ...); child processes: Prefect's server, shard workers, model.train, others")
    print("\n| phase | " + " | ".join(CPU_COLUMNS) + " |")
    print("|---|" + "---:|" * len(CPU_COLUMNS))
    totals: dict[str, float] = defaultdict(float)
    for p, row in r["phases"].items():
        cpu = row["cpu"]
        for k, v in cpu.items():
            totals[k] += v
        print(f"| {p} | " + " | ".join(f"{cpu.get(k, 0.0):.1f}" for k in CPU_COLUMNS) + " |")
    print("| **whole run** | " + " | ".join(f"**{totals.get(k, 0.0):.1f}**" for k in CPU_COLUMNS) + " |")
    threads = ", ".join(f"{k.removeprefix('thread ')} {v:.1f}" for k, v in list(r["thread_cpu"].items())[:10]
                        if k.startswith("thread "))
    print(f"other Python threads by name (CPU s): {threads or '-'}; the profiler thread itself: "
          f"{r['thread_cpu'].get('profiler', 0.0):.1f} CPU s")
    all_cpu, server = sum(totals.values()), totals.get("prefect server", 0.0)
    after = sum(row["cpu"].get("prefect server", 0.0) for p, row in r["phases"].items() if not p.startswith("startup"))
    print(f"Prefect's server process: {server:.1f} of {all_cpu:.1f} CPU s ({100 * server / max(all_cpu, 1e-9):.1f}%), "
          f"{after:.1f} CPU s of it after start-up")

    print("\nwhere the orchestration/tracking seconds go (our caller -> seconds):")
    for row in r["top_orchestration_callers"][:12]:
        print(f"  {row['category']:8s} {row['seconds']:7.2f} s  {row['frame']}")
    print("deciding frames (innermost Prefect/Dask/MLflow frame):")
    for row in r["top_orchestration_frames"][:12]:
        print(f"  {row['category']:8s} {row['seconds']:7.2f} s  {row['frame']}")

    if r["stage_seconds"]:
        diffs = {s: r["phases"].get(s, {}).get("seconds", 0.0) - v for s, v in r["stage_seconds"].items()}
        worst = max(diffs.items(), key=lambda kv: abs(kv[1]))
        print(f"\nstage seconds vs PipelineResult.stage_seconds: largest difference {worst[1] * 1000:+.1f} ms "
              f"({worst[0]}); PipelineResult.seconds {r['pipeline_seconds']:.1f} s")
    prof = r["profiler"]
    print(f"profiler: {prof['samples']:,} samples every {prof['interval_s'] * 1000:.0f} ms; classifying them took "
          f"{prof['cost_s']:.1f} CPU s with the GIL held ({100 * prof['cost_s'] / r['total_seconds']:.2f}% of the run)")
    flow = _sum(r, groups["flow"])
    whole = _sum(r, list(r["phases"]))
    verdict = "met" if orch_seconds(flow) <= 0.05 * flow["seconds"] else "MISSED"
    print(f"\nshare of orchestration+tracking, main thread: pipeline flow {_share(flow)}, whole run with start-up "
          f"and shutdown {_share(whole)} (goal <= 5%: {verdict} for the flow)", flush=True)


def _sum(r: dict, phases: list[str]) -> dict:
    rows = [r["phases"][p] for p in phases]
    return {k: sum(row[k] for row in rows) for k in ("seconds", *CATEGORIES)}


def _share(row: dict) -> str:
    return f"{100 * orch_seconds(row) / row['seconds']:.1f}%" if row["seconds"] else "-"


def _row(name: str, row: dict, bold: bool = False) -> str:
    b = "**" if bold else ""
    cells = [f"{row['seconds']:.1f}", f"{orch_seconds(row):.1f}", _share(row),
             *(f"{row[c]:.1f}" for c in ("prefect", "dask", "mlflow", "waiting", "report"))]
    return f"| {name} | " + " | ".join(f"{b}{c}{b}" for c in cells) + " |"


def print_comparison(reports: dict[str, dict]) -> None:
    ok = {k: v for k, v in reports.items() if not v.get("error")}
    if len(ok) < 2:
        return
    names = list(ok)
    print("\n## runners side by side: seconds (orchestration+tracking share)\n")
    print("| phase | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    phases = [p for p in PHASES if any(p in r["phases"] for r in ok.values())]
    for p in phases:
        cells = []
        for r in ok.values():
            row = r["phases"].get(p)
            cells.append(f"{row['seconds']:.1f} ({_share(row)})" if row else "-")
        print(f"| {p} | " + " | ".join(cells) + " |")
    cells = [f"{r['total_seconds']:.1f} ({_share(_sum(r, list(r['phases'])))})" for r in ok.values()]
    print("| **whole run** | " + " | ".join(f"**{c}**" for c in cells) + " |", flush=True)


# --- the parent --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runner", choices=["process", "dask", "both"], default="both",
                        help="task runner of the data stages; both: process, then dask, each on a fresh data root")
    parser.add_argument("--small", action="store_true", help="tests/test_cli.py's SMALL overrides (development)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()
    overrides = [*(SMALL if args.small else ()), *args.overrides]
    if args.child:
        run_child(args.child, args.root, overrides, args.json)
        return

    OUT.mkdir(parents=True, exist_ok=True)
    runners = ["process", "dask"] if args.runner == "both" else [args.runner]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_")) and k != "C2M_HOME"}
    print(f"crawl2model pipeline on the bundled sample, runners: {', '.join(runners)}; "
          f"overrides: {' '.join(overrides) or 'none'}; {os.cpu_count()} CPUs", flush=True)
    reports: dict[str, dict] = {}
    for runner in runners:
        root = OUT / f"pipeline-{runner}"
        shutil.rmtree(root, ignore_errors=True)
        json_path = OUT / f"pipeline-{runner}.json"
        json_path.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", runner, "--root", str(root),
               "--json", str(json_path), *overrides]
        proc = subprocess.run(cmd, cwd=REPO, env=env)
        if json_path.exists():
            reports[runner] = json.loads(json_path.read_text())
        else:
            reports[runner] = {"runner": runner, "error": f"the child process exited with {proc.returncode} "
                                                          f"before writing its report"}
            print(f"\n## runner.kind={runner}: FAILED ({reports[runner]['error']})", flush=True)
    print_comparison(reports)
    (OUT / "pipeline.json").write_text(json.dumps({"small": args.small, "overrides": overrides,
                                                   "runs": reports}, indent=1))
    print(f"\nwritten: {OUT / 'pipeline.json'}")


if __name__ == "__main__":
    main()
