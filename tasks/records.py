"""The records that move between curation stages inside a shard.

A `Page` is what ingest hands on (raw bytes and their provenance); a `Rejection` is what any stage
emits instead of passing a record on, with the stage and reason that end up in the warehouse's
`rejections` table. `quarantined=True` marks records that could not be processed (broken input),
as opposed to records a filter dropped on purpose.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(slots=True)
class Page:
    url: str
    source: str  # file path, plus '#offset' for a WARC record
    body: bytes
    fetched_at: str | None = None  # ISO 8601, UTC
    content_type: str | None = None  # from the HTTP header, when there is one
    charset: str | None = None  # from the HTTP header, when there is one

    @property
    def doc_id(self) -> str:
        """Stable id: the same URL with the same bytes gets the same id on every run."""
        h = hashlib.sha256(self.url.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
        h.update(hashlib.sha256(self.body).digest())
        return h.hexdigest()[:32]


@dataclass(slots=True)
class Rejection:
    stage: str
    reason: str
    detail: str = ""
    url: str | None = None
    source: str | None = None
    doc_id: str | None = None
    quarantined: bool = False  # True: could not be processed; False: a filter dropped it
