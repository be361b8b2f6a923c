"""Curate one shard: ingest -> URL filter -> extraction -> language ID -> quality filters.

    from tasks.curate_shard import curate_shard
    out = curate_shard(shard, cfg.curate, snapshot="snap-...")   # plain core, no Prefect/MLflow
    out.documents, out.rejections, out.stats                   # rows for the warehouse

`process_shard` is the thin Prefect task around it: it runs the core in a worker process and
writes the rows as the shard's Parquet files, unless an earlier run already did (the shard key
hashes input bytes and config, so a finished shard is never redone).

Every record that enters a stage leaves it exactly once: passed on, dropped, or quarantined;
stats per stage count the three, so docs_in = docs_out + docs_dropped + docs_quarantined.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from crawl2model.config import CurateConfig
from tasks.extract import Extracted, Extractor
from tasks.ingest import Shard, read_shard
from tasks.language import LanguageFilter
from tasks.quality import QualityFilters
from tasks.records import Page, Rejection
from tasks.url_filter import UrlFilter, domain_of
from warehouse.schema import CURATE_STAGES
from warehouse.shard_files import shard_is_complete, write_shard

SHARD_STAGES = ("ingest", "url_filter", "extract", "language", "quality")


@dataclass
class StageCount:
    docs_in: int = 0
    docs_out: int = 0
    docs_dropped: int = 0
    docs_quarantined: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class ShardOutput:
    documents: list[dict] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)
    counts: dict[str, StageCount] = field(default_factory=lambda: {s: StageCount() for s in SHARD_STAGES})

    def stats(self, snapshot: str, shard: str) -> list[dict]:
        return [
            {"snapshot": snapshot, "shard": shard, "stage": stage, "stage_order": CURATE_STAGES.index(stage),
             **vars(count)}
            for stage, count in self.counts.items()
        ]


def _timestamp(iso: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(iso) if iso else None
    except ValueError:
        return None


class ShardCurator:
    """The stage chain for one shard; `run` feeds every record through it."""

    def __init__(self, cfg: CurateConfig, snapshot: str, shard_key: str):
        self.cfg = cfg
        self.snapshot = snapshot
        self.shard_key = shard_key
        self.url_filter = UrlFilter(cfg.url_filter)
        self.extract = Extractor(cfg.extract)
        self.language = LanguageFilter(cfg.language)
        self.quality = QualityFilters(cfg.quality)
        self.out = ShardOutput()

    def _reject(self, rejection: Rejection, page: Page | None = None) -> None:
        if page is not None:
            rejection.url = rejection.url or page.url
            rejection.source = rejection.source or page.source
            rejection.doc_id = rejection.doc_id or page.doc_id
        count = self.out.counts[rejection.stage]
        if rejection.quarantined:
            count.docs_quarantined += 1
        else:
            count.docs_dropped += 1
        self.out.rejections.append({
            "doc_id": rejection.doc_id, "url": rejection.url, "source": rejection.source,
            "stage": rejection.stage, "reason": rejection.reason, "detail": rejection.detail,
            "quarantined": rejection.quarantined, "snapshot": self.snapshot, "shard": self.shard_key,
        })

    def _enter(self, stage: str, nbytes: int) -> StageCount:
        count = self.out.counts[stage]
        count.docs_in += 1
        count.bytes += nbytes
        return count

    def run(self, records) -> ShardOutput:
        counts = self.out.counts
        clock = time.perf_counter
        records = iter(records)
        while True:
            t0 = clock()
            item = next(records, None)
            counts["ingest"].seconds += clock() - t0
            if item is None:
                return self.out
            self._enter("ingest", len(item.body) if isinstance(item, Page) else 0)
            if isinstance(item, Rejection):
                self._reject(item)
                continue
            counts["ingest"].docs_out += 1
            self.curate_page(item)

    def _step(self, stage: str, nbytes: int, page: Page, run):
        """One stage on one record: counted in, timed, then passed on (its value) or rejected (None).
        `run()` returns (value, rejection or None)."""
        count = self._enter(stage, nbytes)
        t0 = time.perf_counter()
        value, rejection = run()
        count.seconds += time.perf_counter() - t0
        if rejection is not None:
            self._reject(rejection, page)
            return None
        count.docs_out += 1
        return value

    def _quality(self, text: str):
        result = self.quality(text)
        if result.reason:
            return result, Rejection("quality", result.reason, f"{result.filter}: {result.detail}")
        return result, None

    def curate_page(self, page: Page) -> None:
        if self._step("url_filter", len(page.url), page, lambda: (page, self.url_filter(page))) is None:
            return
        extracted = self._step("extract", len(page.body), page, lambda: _split(self.extract(page)))
        if extracted is None:
            return
        text = extracted.text
        language = self._step("language", len(text), page, lambda: _pair(self.language(text)))
        if language is None:
            return
        result = self._step("quality", len(text), page, lambda: self._quality(text))
        if result is None:
            return
        lang, lang_score = language
        self.out.documents.append({
            "doc_id": page.doc_id, "url": page.url, "domain": domain_of(page.url), "source": page.source,
            "fetched_at": _timestamp(page.fetched_at), "title": extracted.title, "date": extracted.date,
            "text": result.text, "lang": lang, "lang_score": lang_score, "chars": len(result.text),
            "quality": result.signals, "snapshot": self.snapshot, "shard": self.shard_key,
        })


def _split(extracted: Extracted | Rejection):
    return (None, extracted) if isinstance(extracted, Rejection) else (extracted, None)


def _pair(verdict: tuple[str, float, Rejection | None]):
    lang, score, rejection = verdict
    return (lang, score), rejection


def curate_shard(shard: Shard, cfg: CurateConfig, snapshot: str) -> ShardOutput:
    return ShardCurator(cfg, snapshot, shard.key).run(read_shard(shard, cfg.ingest.max_record_bytes))


@task(name="curate-shard", retries=2, retry_delay_seconds=2, cache_policy=NONE,
      task_run_name="curate {shard.label}")
def process_shard(shard: Shard, cfg: CurateConfig, snapshot: str, root: Path) -> dict:
    """Curate a shard into its Parquet files (skipped when they already exist)."""
    if not shard_is_complete(root, shard.key):
        out = curate_shard(shard, cfg, snapshot)
        write_shard(root, shard.key, out.documents, out.rejections, out.stats(snapshot, shard.key))
    return {"shard": shard.key, "label": shard.label}
