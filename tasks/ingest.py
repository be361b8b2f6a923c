"""Ingest: turn inputs (WARC files, folders of HTML files) into shards, and shards into `Page`s.

    from tasks.ingest import plan_shards, read_shard
    for shard in plan_shards([Path("crawl.warc.gz"), Path("pages/")], html_batch_size=500, salt=cfg_hash):
        for item in read_shard(shard, max_record_bytes=50_000_000):
            ...  # a Page, or a Rejection (stage "ingest") for what could not be read

A shard is one WARC file or a batch of HTML files; its key hashes the input bytes and the
config, so the same input under the same config is recognised on every run. Readers never
raise on bad input: broken records become `Rejection`s with a reason (`truncated`,
`malformed-record`, `unsupported-format`, `too-large`, `unreadable`) and the rest is read.
WARC/ARC/HTML is told apart by file name first, then by sniffing the bytes.
URL lists are not read here: `tasks.crawl` fetches them into WARC files first.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from fastwarc.warc import ArchiveIterator, WarcRecordType

from tasks.records import Page, Rejection

STAGE = "ingest"
WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")
_DOCUMENT_RECORDS = (WarcRecordType.response, WarcRecordType.resource)


@dataclass(frozen=True)
class Shard:
    key: str  # hash of input bytes + config: the cache key of everything made from this shard
    kind: str  # "warc" | "html"
    paths: tuple[str, ...]
    label: str  # short name for progress output

    @property
    def bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.paths)


def file_digest(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _is_warc_name(path: Path) -> bool:
    return path.name.lower().endswith(WARC_SUFFIXES)


def list_input_files(path: Path) -> list[Path]:
    """The files under `path` (or `path` itself), sorted, skipping hidden files and folders."""
    if path.is_file():
        return [path]
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


class InputError(ValueError):
    """An input the user named that cannot be used (missing, empty folder): fix and re-run."""


@dataclass
class ResolvedInputs:
    files: list[Path]  # WARC and HTML files, in the order given
    url_lists: list[tuple[str, list[str]]]  # (label, URLs) to crawl first


def resolve_inputs(items: list[str]) -> ResolvedInputs:
    """Sort what the user named into files and URL lists; every problem raises InputError up front."""
    from tasks.crawl import looks_like_url_list, read_url_list

    if not items:
        raise InputError("no input given: name WARC files, folders of HTML files, URL lists or URLs")
    resolved = ResolvedInputs([], [])
    for item in map(str, items):
        if item.startswith(("http://", "https://")):
            resolved.url_lists.append((item, [item]))
            continue
        path = Path(item)
        if not path.exists():
            raise InputError(f"input {item!r} does not exist")
        if path.is_file() and looks_like_url_list(path):
            resolved.url_lists.append((path.name, read_url_list(path)))
            continue
        files = list_input_files(path)
        if not files:
            raise InputError(f"input folder {item!r} holds no files")
        resolved.files.extend(files)
    return resolved


def plan_shards(files: list[Path], html_batch_size: int, salt: str) -> list[Shard]:
    """Group input files into shards: each WARC alone, other files in sorted batches."""
    shards: list[Shard] = []
    seen: set[str] = set()
    html: list[Path] = []
    for path in files:
        if _is_warc_name(path):
            key = hashlib.sha256(f"warc|{file_digest(path)}|{salt}".encode()).hexdigest()[:24]
            if key not in seen:  # the same bytes under another name are the same shard
                seen.add(key)
                shards.append(Shard(key, "warc", (str(path),), path.name))
        else:
            html.append(path)
    for start in range(0, len(html), html_batch_size):
        batch = html[start : start + html_batch_size]
        h = hashlib.sha256(f"html|{salt}".encode())
        for path in batch:
            h.update(f"|{path.name}|{file_digest(path)}".encode())
        label = f"{batch[0].parent.name}/{batch[0].name} (+{len(batch) - 1})"
        shards.append(Shard(h.hexdigest()[:24], "html", tuple(str(p) for p in batch), label))
    return shards


def read_shard(shard: Shard, max_record_bytes: int) -> Iterator[Page | Rejection]:
    reader = read_warc if shard.kind == "warc" else read_html_file
    for path in shard.paths:
        yield from reader(path, max_record_bytes)


# --- HTML files ---------------------------------------------------------------------------


def read_html_file(path: str, max_record_bytes: int) -> Iterator[Page | Rejection]:
    url = Path(path).resolve().as_uri()
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                body = f.read(max_record_bytes + 1)  # never inflate more than the cap
        else:
            with open(path, "rb") as f:
                body = f.read(max_record_bytes + 1)
        mtime = datetime.fromtimestamp(os.path.getmtime(path), timezone.utc).isoformat()
    except (OSError, EOFError, zlib.error) as exc:
        yield Rejection(STAGE, "unreadable", f"{type(exc).__name__}: {exc}", url=url, source=path, quarantined=True)
        return
    if len(body) > max_record_bytes:
        yield Rejection(STAGE, "too-large", f"more than {max_record_bytes} bytes", url=url, source=path, quarantined=True)
        return
    yield Page(url=url, source=path, body=body, fetched_at=mtime)


# --- WARC files ---------------------------------------------------------------------------


def _open_magic(path: str) -> bytes:
    """The first bytes of the file, gunzipped when it is gzip."""
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            return f.read(64)
    except (OSError, EOFError, zlib.error):
        return b""


def gzip_end_is_clean(path: str) -> bool:
    """True unless the file is gzip and its stream stops mid-member (or has garbage after it).

    Neither fastwarc nor warcio reports a truncated gzip WARC: they stop reading silently and
    every record after the cut vanishes. Walking the members once more (C zlib, output
    discarded in bounded pieces) tells."""
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return True
        f.seek(0)
        decomp = zlib.decompressobj(31)
        in_member = False
        try:
            while chunk := f.read(1 << 20):
                while chunk:
                    decomp.decompress(chunk, 1 << 24)
                    in_member = not decomp.eof
                    if decomp.eof:  # member complete: the rest starts the next one
                        chunk = decomp.unused_data
                        decomp = zlib.decompressobj(31)
                    else:
                        chunk = decomp.unconsumed_tail
        except zlib.error:
            return False
        return not in_member


def read_warc(path: str, max_record_bytes: int) -> Iterator[Page | Rejection]:
    if _open_magic(path).startswith(b"filedesc://"):
        yield Rejection(STAGE, "unsupported-format", "ARC file (the pre-2008 format); convert it to WARC",
                        source=path, quarantined=True)
        return
    records = 0
    position = 0
    try:
        for record in ArchiveIterator(path, parse_http=True, auto_decode="all", fsspec_args=False):
            records += 1
            position = record.stream_pos
            if record.record_type not in _DOCUMENT_RECORDS:
                continue  # warcinfo, request, metadata, revisit: not documents
            yield _page_from_record(record, path, max_record_bytes)
    except Exception as exc:  # fastwarc raises OSError (and others) on a broken record
        yield Rejection(STAGE, "malformed-record",
                        f"{type(exc).__name__}: {exc} after {records} records (byte {position}); the rest of the file is unreadable",
                        source=f"{path}#{position}", quarantined=True)
        return
    if not gzip_end_is_clean(path):
        yield Rejection(STAGE, "truncated",
                        f"gzip stream ends mid-member after {records} records (last at byte {position}); records after it are lost",
                        source=f"{path}#{position}", quarantined=True)


def _page_from_record(record, path: str, max_record_bytes: int) -> Page | Rejection:
    url = record.headers.get("WARC-Target-URI", "").strip("<> ")
    source = f"{path}#{record.stream_pos}"
    if record.content_length > max_record_bytes:
        return Rejection(STAGE, "too-large", f"record of {record.content_length} bytes", url=url, source=source,
                         quarantined=True)
    try:
        body = record.reader.read()
    except Exception as exc:
        return Rejection(STAGE, "malformed-record", f"{type(exc).__name__}: {exc}", url=url, source=source,
                         quarantined=True)
    date = record.record_date
    if record.record_type == WarcRecordType.response and record.is_http:
        content_type, charset = record.http_content_type, record.http_charset
    else:
        content_type, charset = record.headers.get("Content-Type"), None
    return Page(
        url=url,
        source=source,
        body=body,
        fetched_at=date.astimezone(timezone.utc).isoformat() if date else None,
        content_type=content_type,
        charset=charset,
    )
