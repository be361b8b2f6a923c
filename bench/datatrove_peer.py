"""datatrove peer of the curation benchmark: the same stages as crawl2model's curation, run by
huggingface/datatrove 0.10.1, on the same WARC files and the same worker count.

Runs INSIDE the peer venv made by bench/setup_peer_venv.sh (datatrove pins trafilatura<1.12),
not in the project's .venv. bench/peer.py (run_datatrove) drives it; by hand:

    bash bench/setup_peer_venv.sh
    bench/.venvs/datatrove/bin/python bench/datatrove_peer.py --workers 2 --out bench/out/datatrove \\
        /work/shared/data/warc/*.warc.gz

Pipeline (a LocalPipelineExecutor, tasks = number of WARC files, workers = --workers):

    WarcReader -> Trafilatura(favour_precision=True, timeout=10) -> Py3LangidEnglishFilter
    -> GopherRepetitionFilter() -> GopherQualityFilter() -> C4QualityFilter(filter_no_terminal_punct=False)
    -> FineWebQualityFilter() -> JsonlWriter(--out)

Prints ONE JSON line on stdout:
    {"tool": "datatrove", "version": ..., "docs_in": ..., "docs_out": ..., "seconds": ...,
     "docs_per_s": ..., "peak_rss_mb": ..., ...extra keys, see main()}
docs_in counts the documents WarcReader yielded (HTML `response` records that decoded; requests,
metadata, warcinfo and non-HTML responses are skipped by WarcReader itself, uncounted); the
numbers of WARC records and of `response` records are given separately as "warc_records" and
"warc_responses". NB: WarcReader also skips responses whose WARC-Identified-Payload-Type header
is present but empty, as in every record of clueweb-quirk.warc.gz (`"" != "text/html"`). Everything else (datatrove's
loguru logs, progress) goes to stderr, and datatrove's per-task logs and stats.json go to
--out/logs. Output documents are --out/NNNNN.jsonl.gz, one file per task; stale ones from an
earlier run, and --out/logs, are removed first (tasks are never skipped as "already completed").

Word and sentence splitting in the Gopher/C4/FineWeb filters: for English datatrove 0.10.1 uses
spacy.blank("en") plus spaCy's rule-based "sentencizer" (utils/word_tokenizers.py and
assets/tokenizer_assignment.csv), which ship inside the spacy wheel: nothing is downloaded, and
nltk/punkt is not used for English.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from pathlib import Path

# Nothing here needs the Hugging Face hub; make sure nothing tries to reach it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datatrove.data import Document  # noqa: E402
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from peer import stdout_to_stderr  # noqa: E402  (bench/ is on sys.path when this runs as a script)
from datatrove.pipeline.extractors import Trafilatura  # noqa: E402
from datatrove.pipeline.filters import (  # noqa: E402
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter  # noqa: E402
from datatrove.pipeline.readers import WarcReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402

LANGUAGES = ("en",)
MIN_LANGUAGE_SCORE = 0.65
LANGID_MAX_CHARS = 20_000
_OUTPUT_FILE = re.compile(r"^\d{5}\.jsonl(\.gz)?$")


def _load_identifier():
    """py3langid's model, loaded once per process (~0.5 s), as crawl2model does (tasks/language.py).

    datatrove deep-copies the pipeline for every task, so a per-instance model would be loaded
    again for each task (each WARC file); the cache lives on the py3langid module so that it is
    shared whether this file runs as __main__ or is imported, and survives dill's pickling of
    this class into the pool workers."""
    from py3langid import langid

    ident = getattr(langid, "_c2m_bench_identifier", None)
    if ident is None:
        ident = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
        langid._c2m_bench_identifier = ident
    return ident


class Py3LangidEnglishFilter(BaseFilter):
    """Keep documents whose py3langid language is English with a normalised score >= 0.65.

    Stands in for datatrove's own LanguageFilter, which loads fastText lid.176 weights from the
    Hugging Face hub at run time; that cannot work on a machine without internet, and using the
    identifier crawl2model uses (tasks/language.py: py3langid 0.4, norm_probs=True, score >= 0.65,
    first 20,000 characters with newlines turned into spaces) makes both sides do the same work.
    Like datatrove's LanguageFilter it records the language and score in the metadata.
    """

    name = "🌍 Language ID (py3langid)"
    _requires_dependencies = ["py3langid"]

    def __init__(self, languages=LANGUAGES, language_threshold: float = MIN_LANGUAGE_SCORE, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages = set(languages)
        self.language_threshold = language_threshold
        self._identifier = None  # loaded lazily, in the worker (keeps the pickled pipeline small)

    @property
    def identifier(self):
        if self._identifier is None:
            self._identifier = _load_identifier()
        return self._identifier

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang, score = self.identifier.classify(doc.text[:LANGID_MAX_CHARS].replace("\n", " "))
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = float(score)
        if lang not in self.languages:
            return False, "wrong_language"
        if score < self.language_threshold:
            return False, "low_language_score"
        return True


def build_executor(warcs: list[Path], workers: int, out_dir: Path) -> LocalPipelineExecutor:
    data_folder = Path(os.path.commonpath([str(w.parent) for w in warcs]))
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    paths_file = logs / "input_paths.txt"
    paths_file.write_text("".join(f"{w.relative_to(data_folder)}\n" for w in warcs))
    pipeline = [
        WarcReader(str(data_folder), paths_file=str(paths_file)),
        Trafilatura(favour_precision=True, timeout=10),
        Py3LangidEnglishFilter(),
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),
        FineWebQualityFilter(),
        JsonlWriter(str(out_dir)),
    ]
    return LocalPipelineExecutor(
        pipeline=pipeline,
        tasks=len(warcs),
        workers=workers,
        logging_dir=str(logs),
        skip_completed=False,
        # "fork" rather than datatrove's default "forkserver": with forkserver the pool workers are
        # children of the fork server, which is only reaped at exit, so getrusage(RUSAGE_CHILDREN)
        # would never see them and peak_rss_mb would miss the workers.
        start_method="fork",
    )


def count_warc_records(warcs: list[Path]) -> tuple[int, int]:
    """(all records, `response` records) in the files, for reading docs_in against."""
    from warcio.archiveiterator import ArchiveIterator

    records = responses = 0
    for path in warcs:
        try:
            with open(path, "rb") as f:
                for record in ArchiveIterator(f):
                    records += 1
                    responses += record.rec_type == "response"
        except Exception as e:  # a damaged file: count what could be read
            print(f"[datatrove_peer] {path}: {type(e).__name__}: {e}", file=sys.stderr)
    return records, responses


def peak_rss_mb() -> float:
    """Peak RSS of the biggest process: this one or any waited-for descendant (pool workers and
    the trafilatura sandbox processes they start). ru_maxrss is in KiB on Linux."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(self_kb, children_kb) / 1024, 1)


def _step_counts(executor, stats) -> dict:
    """Per step (keyed by class name): documents in/forwarded/dropped and the drop reasons."""
    counts = {}
    for cls, step in zip((type(s).__name__ for s in executor.pipeline), stats.stats):
        s = step.stats
        row = {k: int(s[k].total) for k in ("documents", "total", "forwarded", "dropped") if k in s}
        reasons = {k[len("dropped_"):]: int(v.total) for k, v in s.items() if k.startswith("dropped_")}
        if reasons:
            row["dropped_by"] = reasons
        counts[cls] = row
    return counts


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, required=True, help="processes running tasks at once")
    ap.add_argument("--out", type=Path, required=True, help="output folder (jsonl.gz + logs/)")
    ap.add_argument("warcs", type=Path, nargs="+", help="WARC files (.warc or .warc.gz); one task each")
    args = ap.parse_args(argv)

    warcs = [w.resolve() for w in args.warcs]
    missing = [str(w) for w in warcs if not w.is_file()]
    if missing:
        ap.error(f"not a file: {', '.join(missing)}")
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():
        if old.is_file() and _OUTPUT_FILE.match(old.name):
            old.unlink()
    if (out_dir / "logs").is_dir():
        import shutil

        shutil.rmtree(out_dir / "logs")

    from importlib.metadata import version

    with stdout_to_stderr():
        executor = build_executor(warcs, args.workers, out_dir)
        start = time.perf_counter()
        stats = executor.run()
        seconds = time.perf_counter() - start
        warc_records, warc_responses = count_warc_records(warcs)  # outside the timed run

    steps = _step_counts(executor, stats)
    first, last = stats.stats[0].stats, stats.stats[-1].stats
    docs_in = int(first["documents"].total) if "documents" in first else 0
    docs_out = int(last["total"].total) if "total" in last else 0
    result = {
        "tool": "datatrove",
        "version": version("datatrove"),
        "docs_in": docs_in,
        "docs_out": docs_out,
        "seconds": round(seconds, 3),
        "docs_per_s": round(docs_in / seconds, 2) if seconds > 0 else None,
        "peak_rss_mb": peak_rss_mb(),
        # extras, for reading the numbers above
        "workers": args.workers,
        "tasks": len(warcs),
        "warc_records": warc_records,
        "warc_responses": warc_responses,
        "trafilatura_version": version("trafilatura"),
        "steps": steps,
    }
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return result


if __name__ == "__main__":
    main()
