"""URL filter: drop pages by URL before any parsing work.

    from tasks.url_filter import UrlFilter
    check = UrlFilter(cfg.curate.url_filter)
    rejection = check(page)   # None = keep, else a Rejection (stage "url_filter")

Reasons: `invalid-url`, `not-http` (any scheme but http/https; `file:` URLs of local HTML inputs
pass), `blocked-domain` (the domain or any subdomain of a configured block list entry),
`banned-word` (a configured word appears as a token of the URL), `duplicate-url` (the same URL
already seen in this shard; across shards the warehouse does the same check when it stores).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from crawl2model.config import UrlFilterConfig
from tasks.records import Page, Rejection

STAGE = "url_filter"
_URL_TOKENS = re.compile(r"[a-z0-9]+")


def domain_of(url: str) -> str:
    """Lower-case host name of a URL ('' when there is none)."""
    try:
        return (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""


def load_blocked_domains(cfg: UrlFilterConfig) -> set[str]:
    domains = {d.strip().lower().lstrip(".") for d in cfg.blocked_domains if d.strip()}
    if cfg.blocked_domains_file:
        for line in Path(cfg.blocked_domains_file).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip().lower().lstrip(".")
            if line:
                domains.add(line)
    return domains


class UrlFilter:
    def __init__(self, cfg: UrlFilterConfig):
        self.blocked = load_blocked_domains(cfg)
        self.banned = {w.lower() for w in cfg.banned_url_words}
        self.seen: set[str] = set()

    def _blocked_domain(self, host: str) -> str | None:
        parts = host.split(".")
        for i in range(len(parts)):
            candidate = ".".join(parts[i:])
            if candidate in self.blocked:
                return candidate
        return None

    def __call__(self, page: Page) -> Rejection | None:
        url = page.url

        def reject(reason: str, detail: str = "") -> Rejection:
            return Rejection(STAGE, reason, detail, url=url, source=page.source, doc_id=page.doc_id)

        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").rstrip(".")
            parts.port  # raises ValueError on a bad port
        except ValueError as exc:
            return reject("invalid-url", str(exc))
        if parts.scheme == "file" and not page.source.partition("#")[2]:
            pass  # a local HTML file given as input: nothing to check but duplicates
        elif parts.scheme not in ("http", "https"):
            return reject("not-http", f"scheme {parts.scheme!r}" if parts.scheme else "no scheme")
        elif not host or any(c.isspace() for c in url):
            return reject("invalid-url", "no host" if not host else "whitespace in URL")
        else:
            if blocked := self._blocked_domain(host):
                return reject("blocked-domain", blocked)
            if banned := self.banned.intersection(_URL_TOKENS.findall(url.lower())):
                return reject("banned-word", ",".join(sorted(banned)))
        if url in self.seen:
            return reject("duplicate-url")
        self.seen.add(url)
        return None
