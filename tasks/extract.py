"""Extraction: raw page bytes -> decoded HTML -> main text with trafilatura, plus title and date.

    from tasks.extract import Extractor
    extract = Extractor(cfg.curate.extract)
    result = extract(page)   # an Extracted, or a Rejection (stage "extract")

Decoding happens here, before trafilatura sees the page (given raw bytes, trafilatura 2.3
guesses a Central European code page for undeclared Latin-1 and turns "à" into "ŕ"). The order
is the WHATWG one: byte-order mark, the HTTP charset, a `<meta>` charset, then UTF-8 if the bytes
are valid UTF-8, else windows-1252 (the web's default for undeclared pages).

Reasons: `too-large` and `not-html` (binary, or no markup) and `timeout` and `extract-error`
are quarantined; `empty` (nothing, or no main text found) is dropped. Title and date come from
the page's own `<title>`/`<meta>` tags read off the parsed tree: trafilatura's full metadata
search (htmldate) would cost ~60% more time per page.
"""

from __future__ import annotations

import codecs
import logging
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from lxml import etree
from trafilatura import bare_extraction
from trafilatura.utils import load_html

from crawl2model.config import ExtractConfig
from tasks.records import Page, Rejection

STAGE = "extract"
# trafilatura logs a warning per page it finds nothing in; the rejection row already says so.
logging.getLogger("trafilatura").setLevel(logging.ERROR)

_BINARY_MAGIC = {
    b"\x89PNG": "PNG image", b"\xff\xd8\xff": "JPEG image", b"GIF8": "GIF image", b"%PDF": "PDF document",
    b"PK\x03\x04": "ZIP archive", b"\x1f\x8b": "gzip data", b"RIFF": "RIFF media", b"\x00\x00\x01\x00": "icon",
}
_BOMS = [(codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)
_MARKUP = re.compile(r"<\s*(html|head|body|p|div|title|article|main|section|span|br|a|h[1-6]|table|ul|!doctype)\b", re.I)
_HTML_TYPES = ("html", "xhtml", "xml")
# WHATWG: these labels all mean windows-1252 on the web.
_WINDOWS_1252_ALIASES = {"iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1", "ascii", "us-ascii", "cp819", "ibm819"}
_DATE_XPATH = (
    "//meta[@property='article:published_time']/@content|//meta[@name='date']/@content"
    "|//meta[@itemprop='datePublished']/@content|//meta[@name='pubdate']/@content|//time[@datetime][1]/@datetime"
)


class DecodeError(ValueError):
    pass


class ExtractionTimeout(BaseException):
    """BaseException so that no `except Exception` inside the extractor swallows it."""


@dataclass(slots=True)
class Extracted:
    text: str
    title: str | None
    date: str | None
    html_chars: int


def sniff_binary(body: bytes) -> str | None:
    """Name of the binary format the bytes start with, or None when they may be text."""
    for magic, name in _BINARY_MAGIC.items():
        if body.startswith(magic):
            return name
    head = body[:1024]
    if b"\x00" in head and not any(body.startswith(bom) for bom, _ in _BOMS):
        return "binary data (NUL bytes)"
    return None


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    if label in _WINDOWS_1252_ALIASES:
        return "cp1252"
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_html(body: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode page bytes the way a browser would; returns (text, codec used)."""
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return body.decode(codec, errors="replace"), codec
    meta = _META_CHARSET.search(body[:4096])
    for codec in (_codec(declared), _codec(meta.group(1).decode("ascii", "replace")) if meta else None):
        if codec in ("utf-16", "utf-16-le", "utf-16-be", "utf-32"):
            continue  # a UTF-16 label on bytes without a BOM is a lie the WHATWG spec also ignores
        if codec:
            try:
                return body.decode(codec), codec
            except UnicodeDecodeError:
                break  # the declaration is wrong: sniff instead
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return body.decode("cp1252", errors="replace"), "cp1252"


def _first(tree, xpath: str) -> str | None:
    try:
        found = tree.xpath(xpath)
    except etree.XPathError:
        return None
    for item in found:
        value = " ".join(str(item).split())
        if value:
            return value[:1000]
    return None


@contextmanager
def time_limit(seconds: float):
    """Raise ExtractionTimeout after `seconds` (main thread only; elsewhere no limit applies)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise ExtractionTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Extractor:
    def __init__(self, cfg: ExtractConfig):
        self.cfg = cfg

    def __call__(self, page: Page) -> Extracted | Rejection:
        cfg = self.cfg

        def reject(reason: str, detail: str = "", quarantined: bool = True) -> Rejection:
            return Rejection(STAGE, reason, detail, url=page.url, source=page.source, doc_id=page.doc_id,
                             quarantined=quarantined)

        body = page.body
        if len(body) > cfg.max_html_bytes:
            return reject("too-large", f"{len(body)} bytes > {cfg.max_html_bytes}")
        if not body.strip():
            return reject("empty", "no bytes" if not body else "whitespace only", quarantined=False)
        if binary := sniff_binary(body):
            return reject("not-html", binary)
        ctype = (page.content_type or "").lower()
        if ctype and not any(t in ctype for t in _HTML_TYPES) and not ctype.startswith("text/plain"):
            return reject("not-html", f"Content-Type {page.content_type}")
        html, _codec_used = decode_html(body, page.charset)
        if not _MARKUP.search(html[:65536]):
            return reject("not-html", "no HTML markup")
        try:
            with time_limit(cfg.timeout_seconds):
                tree = load_html(html)
                if tree is None:
                    return reject("not-html", "unparseable HTML")
                title = _first(tree, "//head/title/text()|//meta[@property='og:title']/@content|//h1//text()")
                date = _first(tree, _DATE_XPATH)
                doc = bare_extraction(
                    tree,
                    url=page.url if page.url.startswith("http") else None,
                    favor_precision=cfg.favor_precision,
                    favor_recall=cfg.favor_recall,
                    include_comments=cfg.include_comments,
                    include_tables=cfg.include_tables,
                )
        except ExtractionTimeout:
            return reject("timeout", f"extraction took more than {cfg.timeout_seconds}s")
        except (Exception, RecursionError) as exc:
            return reject("extract-error", f"{type(exc).__name__}: {exc}"[:500])
        text = (doc.text or "").strip() if doc is not None else ""
        if not text:
            return reject("empty", "no main text found", quarantined=False)
        return Extracted(text=text, title=title, date=date, html_chars=len(html))
