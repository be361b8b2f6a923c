"""datatrove peer of the MinHash near-dedup benchmark: huggingface/datatrove 0.10.1's four MinHash
dedup stages, run with LocalPipelineExecutor on a JSONL of documents, timed stage by stage.

Runs INSIDE the peer venv made by bench/setup_peer_venv.sh (datatrove 0.10.1, plus xxhash for its
default MinHash hash function), not in the project's .venv. By hand:

    bash bench/setup_peer_venv.sh
    bench/.venvs/datatrove/bin/python bench/datatrove_minhash.py --input DOCS.jsonl --workers 2 \\
        --out bench/out/datatrove_minhash

DOCS.jsonl has one JSON object per line with "id" and "text". It is first split into --tasks files
of consecutive lines (--out/input/NNNNN.jsonl, untimed), one per signature/filter task. Then, as
in datatrove's examples/minhash_deduplication.py, with
MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=--bands, hashes_per_bucket=--rows,
n_grams=--ngram) (defaults 14 x 8, 5-grams; hash function xxhash64, seed 1):

    1 signatures  JsonlReader -> MinhashDedupSignature        tasks=--tasks     workers=--workers
    2 buckets     MinhashDedupBuckets                         tasks=--bands     workers=--workers
    3 clusters    MinhashDedupCluster                         tasks=1           workers=1
    4 filter      JsonlReader -> MinhashDedupFilter(exclusion_writer=JsonlWriter(--out/removed))
                  -> JsonlWriter(--out/output)                tasks=--tasks     workers=--workers

(workers are capped at a stage's task count). Each stage is its own executor.run(), timed with
perf_counter; "seconds" is their sum.

Prints ONE JSON line on stdout:
    {"tool": "datatrove", "version": ..., "docs_in": N, "docs_kept": K, "docs_removed": R,
     "seconds": ..., "stage_seconds": {...}, "docs_per_s": N / seconds, "peak_rss_mb": ...,
     "removed_ids_file": ..., ...extra keys, see main()}
and writes the ids of the removed documents, sorted, one per line, to --out/removed_ids.txt.
Everything else (datatrove's loguru logs, tqdm bars) goes to stderr; per-stage logs and stats.json
are in --out/logs/<stage>. What this script wrote into --out in an earlier run is removed first
(tasks are never skipped as "already completed").

How datatrove 0.10.1's MinHash behaves (datatrove/pipeline/dedup/minhash.py, utils/text.py):
  * text is normalised before shingling (TextNormConfig defaults): lowercased, every run of digits
    -> "0", punctuation -> space, whitespace collapsed, diacritics stripped (NFD, drop marks); then
    split into words by the English word tokenizer (spaCy blank "en") and hashed as word 5-grams.
    A document with fewer than n_grams words gets no signature and is never a duplicate.
  * a pair of documents is a duplicate as soon as ONE band (bucket) of 8 hashes is equal; there is
    no check of the estimated or real Jaccard similarity of the candidates.
  * pairs are joined into clusters (union-find, union by size); every document except the cluster's
    root is removed. On equal sizes the root is the first document in (task, index) order, so with
    consecutive-line splitting it is usually, but not always, the earliest document of a cluster.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

# Nothing here needs the Hugging Face hub; make sure nothing tries to reach it.
os.environ["HF_HUB_OFFLINE"] = "1"

from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from peer import stdout_to_stderr  # noqa: E402  (bench/ is on sys.path when this runs as a script)
from datatrove.pipeline.dedup.minhash import (  # noqa: E402
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader  # noqa: E402
from datatrove.pipeline.writers.jsonl import JsonlWriter  # noqa: E402
from datatrove.utils.hashing import HashConfig  # noqa: E402
from datatrove.utils.typeshelper import Languages  # noqa: E402

# what this script creates under --out (and so removes from an earlier run)
_OUR_DIRS = ("input", "signatures", "buckets", "remove_ids", "output", "removed", "logs")
_OUR_FILES = ("removed_ids.txt",)
STAGES = ("signatures", "buckets", "clusters", "filter")


def split_input(src: Path, dst: Path, tasks: int) -> int:
    """Split src into `tasks` files of consecutive non-blank lines (dst/00000.jsonl, ...); returns
    the number of lines. File i is read by task i in stages 1 and 4 (JsonlReader gives rank r the
    files [r::tasks] of the sorted listing, i.e. exactly file r)."""
    with open(src, "rb") as f:
        lines = [line if line.endswith(b"\n") else line + b"\n" for line in f if line.strip()]
    dst.mkdir(parents=True)
    per, extra = divmod(len(lines), tasks)
    start = 0
    for i in range(tasks):
        end = start + per + (i < extra)
        (dst / f"{i:05d}.jsonl").write_bytes(b"".join(lines[start:end]))
        start = end
    return len(lines)


def read_ids(folder: Path) -> list[str]:
    """Ids of the documents a JsonlWriter wrote into folder (*.jsonl.gz or *.jsonl)."""
    ids = []
    if not folder.is_dir():
        return ids
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".jsonl.gz"):
            opener = gzip.open
        elif path.name.endswith(".jsonl"):
            opener = open
        else:
            continue
        with opener(path, "rt", encoding="utf-8") as f:
            ids.extend(str(json.loads(line)["id"]) for line in f if line.strip())
    return ids


def build_stages(args, out: Path, config: MinhashConfig) -> dict[str, LocalPipelineExecutor]:
    logs = out / "logs"

    def reader():
        return JsonlReader(str(out / "input"), id_key="id", text_key="text")

    def executor(stage, pipeline, tasks, workers):
        return LocalPipelineExecutor(
            pipeline=pipeline,
            tasks=tasks,
            workers=max(1, min(workers, tasks)),
            logging_dir=str(logs / stage),
            skip_completed=False,
            # "fork" rather than datatrove's default "forkserver": with forkserver the pool workers
            # are children of the fork server, which is only reaped at exit, so
            # getrusage(RUSAGE_CHILDREN) would never see them (same choice as datatrove_peer.py).
            start_method="fork",
        )

    return {
        "signatures": executor(
            "signatures",
            [
                reader(),
                MinhashDedupSignature(
                    output_folder=str(out / "signatures"), config=config, language=Languages.english
                ),
            ],
            args.tasks,
            args.workers,
        ),
        "buckets": executor(
            "buckets",
            [
                MinhashDedupBuckets(
                    input_folder=str(out / "signatures"), output_folder=str(out / "buckets"), config=config
                )
            ],
            config.num_buckets,
            args.workers,
        ),
        "clusters": executor(
            "clusters",
            [
                MinhashDedupCluster(
                    input_folder=str(out / "buckets"), output_folder=str(out / "remove_ids"), config=config
                )
            ],
            1,
            1,
        ),
        "filter": executor(
            "filter",
            [
                reader(),
                MinhashDedupFilter(
                    input_folder=str(out / "remove_ids"),
                    exclusion_writer=JsonlWriter(str(out / "removed")),
                ),
                JsonlWriter(output_folder=str(out / "output")),
            ],
            args.tasks,
            args.workers,
        ),
    }


def _stat(stats, step_index: int, key: str) -> int | None:
    try:
        s = stats.stats[step_index].stats
    except (AttributeError, IndexError):
        return None
    return int(s[key].total) if key in s else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, required=True, help='JSONL, one {"id":..., "text":...} per line')
    ap.add_argument("--workers", type=int, default=1, help="processes running tasks at once (default 1)")
    ap.add_argument("--tasks", type=int, default=None, help="input files/tasks for stages 1 and 4 (default: --workers)")
    ap.add_argument("--out", type=Path, required=True, help="work folder (this script's old outputs are removed)")
    ap.add_argument("--ngram", type=int, default=5, help="word n-gram size (default 5)")
    ap.add_argument("--bands", type=int, default=14, help="LSH bands = datatrove num_buckets (default 14)")
    ap.add_argument("--rows", type=int, default=8, help="hashes per band = hashes_per_bucket (default 8)")
    args = ap.parse_args(argv)
    if args.tasks is None:
        args.tasks = args.workers
    for name in ("workers", "tasks", "ngram", "bands", "rows"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    src = args.input.resolve()
    if not src.is_file():
        ap.error(f"not a file: {src}")

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for d in _OUR_DIRS:
        shutil.rmtree(out / d, ignore_errors=True)
    for f in _OUR_FILES:
        (out / f).unlink(missing_ok=True)

    from importlib.metadata import version

    config = MinhashConfig(
        hash_config=HashConfig(precision=64),
        num_buckets=args.bands,
        hashes_per_bucket=args.rows,
        n_grams=args.ngram,
    )

    t0 = time.perf_counter()
    lines = split_input(src, out / "input", args.tasks)
    split_seconds = time.perf_counter() - t0

    stage_seconds: dict[str, float] = {}
    stage_stats = {}
    with stdout_to_stderr():
        executors = build_stages(args, out, config)
        for stage in STAGES:
            start = time.perf_counter()
            stage_stats[stage] = executors[stage].run()
            stage_seconds[stage] = time.perf_counter() - start
            print(f"[datatrove_minhash] stage {stage}: {stage_seconds[stage]:.3f} s", file=sys.stderr)
    seconds = sum(stage_seconds.values())

    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    removed = sorted(read_ids(out / "removed"))
    kept = read_ids(out / "output")
    removed_file = out / "removed_ids.txt"
    removed_file.write_text("".join(f"{i}\n" for i in removed), encoding="utf-8")

    sig_stats, filter_stats = stage_stats["signatures"], stage_stats["filter"]
    docs_in = _stat(filter_stats, 0, "documents")  # documents JsonlReader yielded in stage 4
    if docs_in is None:
        docs_in = len(kept) + len(removed)
    if len(kept) + len(removed) != docs_in:
        print(
            f"[datatrove_minhash] WARNING: kept {len(kept)} + removed {len(removed)} != docs read {docs_in}",
            file=sys.stderr,
        )
    result = {
        "tool": "datatrove",
        "version": version("datatrove"),
        "docs_in": docs_in,
        "docs_kept": len(kept),
        "docs_removed": len(removed),
        "seconds": round(seconds, 3),
        "stage_seconds": {k: round(v, 3) for k, v in stage_seconds.items()},
        "docs_per_s": round(docs_in / seconds, 2) if seconds > 0 else None,
        "peak_rss_mb": round(max(rss_self, rss_children), 1),
        "peak_rss_self_mb": round(rss_self, 1),
        "peak_rss_children_mb": round(rss_children, 1),
        "removed_ids_file": str(removed_file),
        # extras, for reading the numbers above
        "input_lines": lines,
        "docs_signed": _stat(sig_stats, 1, "total"),  # docs MinhashDedupSignature saw (incl. < ngram words)
        "duplicate_pairs": _stat(stage_stats["buckets"], 0, "total_matches"),
        "split_seconds": round(split_seconds, 3),  # splitting --input into task files; not in "seconds"
        "workers": args.workers,
        "tasks": args.tasks,
        "ngram": args.ngram,
        "bands": args.bands,
        "rows": args.rows,
        "hash": str(config.hash_config),
        "xxhash_version": version("xxhash"),
    }
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return result


if __name__ == "__main__":
    main()
