"""Crawl a list of URLs politely into WARC files, so a URL list is ingested like any other crawl.

    from tasks.crawl import load_or_crawl, read_url_list
    result = load_or_crawl(read_url_list(Path("urls.txt")), data_root / "crawls", cfg.curate.crawl)
    result.warc_paths    # crawl-00000.warc.gz, ... : hand them to tasks.ingest like any WARC
    result.failures      # one Rejection (stage "crawl") per URL not written

    python -m tasks.crawl urls.txt out_dir/        # the same from a shell (--help: allow-list, ports)

Politeness: robots.txt is fetched once per host and honoured for our user agent (also for
every redirect target); at most `per_host_concurrency` requests are in flight per host and
their starts are at least max(`delay_seconds`, robots Crawl-delay) apart. Cookies are never
kept, so a page does not depend on what was fetched before it. The User-Agent is
`user_agent (+contact_url)`, e.g. "crawl2model/0.1 (+https://github.com/crawl2model/crawl2model)".

Safety (tasks.address_guard, tasks.bounded_decode): only http(s), only `ports` (80, 443), only
public addresses: every connection (first request, robots.txt, each redirect hop) resolves the
host once, refuses it when any answer is loopback/private/link-local/multicast/reserved/
unspecified (IPv4-mapped and 6to4 IPv6 included), and connects to that checked address (the
lookup times out with connect_timeout). Local servers are crawled only through `allow` entries
("127.0.0.1:8080"). A robots.txt that redirects to a refused target counts as none. Environment
proxies are ignored (a proxy would resolve and connect for us). Bodies are streamed, never read whole: the
decoded size is capped at `max_bytes` and the decoded/encoded ratio at `max_decompressed_ratio`
while gzip/deflate/br is decoded step by step, so a bomb is stopped after ~1 MiB of output.

Output: out_dir/crawl-00000.warc.gz, ... each a warcinfo record then `response` records
(status line, headers, body) in the order of the input list, and `crawl.json`, written last,
saying what was fetched and why the rest was not. Bodies are stored decoded: Content-Encoding
and Transfer-Encoding are renamed to X-Crawler-* (as Common Crawl does) and Content-Length
is the stored body's length. `load_or_crawl` keys a directory on the URL list and the
settings that change what is fetched, so the same list is crawled once.

Failure reasons: invalid-url, not-http, duplicate-url, robots-disallowed, blocked-address (a
non-public address, also one a name resolves to or a redirect points at), blocked-port,
http-<status>, too-many-redirects, too-large (Content-Length or decoded body over max_bytes),
decompression-bomb, timeout (also a body still arriving after connect_timeout + 4 x read_timeout),
connection-error, fetch-error (anything else, e.g. a broken gzip body). The policy refusals
(not-http, blocked-*, robots-disallowed) are not quarantined: nothing was wrong with a page.
A cached crawl that refused URLs as blocked-*/decompression-bomb is crawled again when the safety
settings (allow, ports, max_decompressed_ratio) change; other settings keep their cache key.
A host whose robots.txt answers 5xx/429 is treated as disallowing all; one whose robots.txt
cannot be reached at all fails its URLs as timeout/connection-error, which says more.
"""

from __future__ import annotations

import http.cookiejar
import io
import json
import os
import re
import shutil
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.robotparser import RobotFileParser

import httpx
from prefect import task
from prefect.cache_policies import NONE
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from crawl2model.config import CrawlConfig, stable_hash
from tasks.address_guard import AddressPolicy, Blocked, Resolver, guarded_transport, system_resolver
from tasks.bounded_decode import ACCEPT_ENCODING, BodyDecodeError, BoundedDecoder, DecompressionBomb, TooLarge
from tasks.records import Rejection

STAGE = "crawl"
MANIFEST = "crawl.json"
SPOOL = "spool.warc.gz.tmp"  # responses in the order they finish, copied into the WARCs at the end
ROBOTS_MAX_BYTES = 500 * 1024  # Google reads the first 500 KiB of a robots.txt
ROBOTS_MAX_REDIRECTS = 5  # as Google; more is treated like a missing robots.txt
ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
NOT_QUARANTINED = {"invalid-url", "not-http", "duplicate-url", "robots-disallowed", "blocked-address", "blocked-port"}
SAFETY_REASONS = {"blocked-address", "blocked-port", "decompression-bomb"}  # answers that depend on safety settings
_HOST_CHARS = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]+")  # hostname after IDNA, or an IPv6 address


@dataclass
class CrawlResult:
    warc_paths: list[Path]  # in order
    urls: int  # URLs asked for
    fetched: int  # responses written to the WARCs
    failures: list[Rejection] = field(default_factory=list)  # one per URL not written, in input order
    seconds: float = 0.0  # wall time of the crawl that made it


class _Failed(Exception):
    """Why a URL was not fetched; becomes its Rejection."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class _Fetched:
    url: str  # final URL, after redirects
    fetched_at: datetime
    http_version: str
    status: int
    reason_phrase: str
    headers: list[tuple[str, str]]
    body: bytes


def rejection(url: str, reason: str, detail: str) -> Rejection:
    quarantined = reason not in NOT_QUARANTINED and not re.fullmatch(r"http-4\d\d", reason)
    return Rejection(STAGE, reason, detail, url=url, quarantined=quarantined)


def check_url(raw: str) -> httpx.URL:
    """The URL to request (fragment dropped), or _Failed(invalid-url | not-http)."""
    try:
        url = httpx.URL(raw.strip())
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise _Failed("invalid-url", f"{raw!r}: {exc}") from None
    if not url.scheme:
        raise _Failed("invalid-url", f"{raw!r} has no scheme (expected http:// or https://)")
    if url.scheme not in ("http", "https"):
        raise _Failed("not-http", f"{raw!r}: scheme {url.scheme!r} is not http or https")
    host = url.raw_host.decode("ascii", "replace").lower()
    if not host or not _HOST_CHARS.fullmatch(host):
        raise _Failed("invalid-url", f"{raw!r}: bad or missing host")
    if url.port is not None and not 0 < url.port < 65536:
        raise _Failed("invalid-url", f"{raw!r}: port {url.port} out of range")
    return url.copy_with(fragment=None)


# --- politeness -------------------------------------------------------------------------


class _Host:
    """One host: at most `slots` requests in flight, request starts at least `delay` apart."""

    def __init__(self, slots: int, delay: float):
        self.slots = threading.Semaphore(slots)
        self.delay = delay  # raised to the robots Crawl-delay once that is known
        self._lock = threading.Lock()
        self._last_start = float("-inf")

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self.slots:
            with self._lock:  # reserve a start time, then wait for it outside the lock
                now = time.monotonic()
                start = max(now, self._last_start + self.delay)
                self._last_start = start
            if start > now:
                time.sleep(start - now)
            yield


@dataclass
class _Robots:
    lock: threading.Lock = field(default_factory=threading.Lock)
    parser: RobotFileParser | None = None
    failure: _Failed | None = None  # robots.txt unreachable: every URL of the origin fails so
    note: str = ""  # how the rules were decided, for the detail of a disallowed URL


class _Fetcher:
    """Fetches one URL at a time per thread; shares the client, host gates and robots cache."""

    def __init__(self, client: httpx.Client, cfg: CrawlConfig, policy: AddressPolicy):
        self.client, self.cfg, self.policy = client, cfg, policy
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}
        self._robots: dict[str, _Robots] = {}
        # read_timeout bounds each wait for bytes; this bounds a body that trickles in forever
        self.body_deadline = cfg.connect_timeout + 4 * cfg.read_timeout

    def host(self, url: httpx.URL) -> _Host:
        with self._lock:
            if url.host not in self._hosts:
                self._hosts[url.host] = _Host(self.cfg.per_host_concurrency, self.cfg.delay_seconds)
            return self._hosts[url.host]

    def fetch(self, url: httpx.URL) -> _Fetched:
        """GET url following redirects by hand (address and robots checked at each hop); raises _Failed."""
        chain = [str(url)]
        try:
            return self.follow(url, chain)
        except Blocked as exc:  # at the first hop or a redirect; the connection itself was never made
            via = f"; redirect chain: {' -> '.join(chain)}" if len(chain) > 1 else ""
            raise _Failed(exc.reason, f"{exc.detail}{via}") from None

    def follow(self, url: httpx.URL, chain: list[str]) -> _Fetched:
        while True:
            self.policy.check_url(url)  # port and literal addresses, before any DNS or robots.txt
            self.check_robots(url, chain)
            with self.host(url).turn():
                fetched_at = datetime.now(timezone.utc)
                with self.client.stream("GET", url) as response:
                    if response.has_redirect_location:
                        location = response.headers["location"]
                    else:
                        return self.read(response, url, fetched_at, chain)
            if len(chain) > self.cfg.max_redirects:
                raise _Failed("too-many-redirects",
                              f"more than {self.cfg.max_redirects} redirects: {' -> '.join(chain)} -> {location}")
            try:
                url = check_url(str(url.join(location)))
            except (_Failed, httpx.InvalidURL) as exc:
                reason = exc.reason if isinstance(exc, _Failed) else "invalid-url"
                raise _Failed(reason, f"redirect to {location!r} ({exc}); chain: {' -> '.join(chain)}") from None
            chain.append(str(url))

    def read(self, response: httpx.Response, url: httpx.URL, fetched_at: datetime, chain: list[str]) -> _Fetched:
        via = f" (redirects: {' -> '.join(chain)})" if len(chain) > 1 else ""
        if not response.is_success:
            raise _Failed(f"http-{response.status_code}", f"HTTP {response.status_code} {response.reason_phrase}{via}")
        cap = self.cfg.max_bytes
        decoder = BoundedDecoder(response.headers.get("content-encoding", ""), cap, self.cfg.max_decompressed_ratio)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:  # encoded bytes over the cap: decoded ones would be too
            raise _Failed("too-large", f"Content-Length {declared} is over max_bytes={cap}{via}")
        deadline = time.monotonic() + self.body_deadline
        body = bytearray()
        try:
            for raw in response.iter_raw():  # as received; decoded here a bounded step at a time
                for piece in decoder.pieces(raw):
                    body += piece
                if time.monotonic() > deadline:
                    raise _Failed("timeout", f"body still arriving after {self.body_deadline:g}s{via}")
            body += decoder.flush()
        except TooLarge:
            raise _Failed("too-large", f"body over max_bytes={cap}, stopped reading{via}") from None
        except DecompressionBomb as exc:
            raise _Failed("decompression-bomb", f"{exc}, stopped reading{via}") from None
        except BodyDecodeError as exc:
            raise _Failed("fetch-error", f"cannot decode the {response.headers.get('content-encoding')!r} body: "
                                         f"{exc}{via}") from None
        return _Fetched(str(url), fetched_at, response.http_version, response.status_code,
                        response.reason_phrase, stored_headers(response, len(body), decoder.decoded), bytes(body))

    # --- robots.txt ---

    def check_robots(self, url: httpx.URL, chain: list[str]) -> None:
        robots = self.robots_for(url)
        via = f"; redirect chain: {' -> '.join(chain)}" if len(chain) > 1 else ""
        if robots.failure is not None:
            raise _Failed(robots.failure.reason, f"{robots.failure.detail}; not fetching {url}{via}")
        if not robots.parser.can_fetch(self.cfg.user_agent, str(url)):
            raise _Failed("robots-disallowed", f"{robots.note} disallows {url}{via}")

    def robots_for(self, url: httpx.URL) -> _Robots:
        origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        with self._lock:
            robots = self._robots.setdefault(origin, _Robots())
        with robots.lock:  # the first thread fetches, the others wait for its answer
            if robots.parser is None and robots.failure is None:
                self.load_robots(origin, robots)
                delay = robots.parser.crawl_delay(self.cfg.user_agent) if robots.parser else None
                if delay:
                    host = self.host(url)
                    host.delay = max(host.delay, float(delay))
        return robots

    def load_robots(self, origin: str, robots: _Robots) -> None:
        """Google's rules: 2xx parse, other 4xx allow all, 5xx/429 disallow all."""
        robots.parser = parser = RobotFileParser()
        url = httpx.URL(origin + "/robots.txt")
        robots.note = f"{url}"
        hops = 0
        try:
            for hops in range(ROBOTS_MAX_REDIRECTS + 1):
                with self.host(url).turn(), self.client.stream("GET", url) as response:
                    if response.has_redirect_location:
                        url = url.join(response.headers["location"])
                        continue
                    status = response.status_code
                    if response.is_success:
                        parser.parse(read_robots(response, self.cfg).decode("utf-8", "replace").splitlines())
                    elif status == 429 or status >= 500:
                        parser.disallow_all = True
                        robots.note = f"{url} answered HTTP {status}, so the host"
                    else:
                        parser.allow_all = True
                    return
            parser.allow_all = True  # too many redirects: as if there were no robots.txt
        except Blocked as exc:
            if hops == 0:  # the origin itself is refused: so is every URL of it
                robots.parser, robots.failure = None, _Failed(exc.reason, f"robots.txt {url}: {exc.detail}")
            else:  # robots.txt redirected somewhere we do not go: as if there were none
                robots.note = f"{url} (refused: {exc.detail})"
                parser.allow_all = True
        except httpx.TimeoutException as exc:
            robots.parser, robots.failure = None, _Failed("timeout", f"robots.txt {url}: {type(exc).__name__}: {exc}")
        except (httpx.TransportError, OSError) as exc:
            robots.parser, robots.failure = None, _Failed(
                "connection-error", f"robots.txt {url} unreachable: {type(exc).__name__}: {exc}")
        except Exception as exc:  # a broken gzip body, a bad redirect: no rules we can trust
            robots.parser, robots.failure = None, _Failed("fetch-error", f"robots.txt {url}: {type(exc).__name__}: {exc}")


def read_robots(response: httpx.Response, cfg: CrawlConfig) -> bytes:
    """The first ROBOTS_MAX_BYTES of a robots.txt, decoded within that bound (a bomb is cut short)."""
    decoder = BoundedDecoder(response.headers.get("content-encoding", ""), ROBOTS_MAX_BYTES, cfg.max_decompressed_ratio)
    text = bytearray()
    try:
        for raw in response.iter_raw():
            text += decoder.feed(raw)
        text += decoder.flush()
    except (TooLarge, DecompressionBomb):
        pass  # as Google: what was read so far counts (a broken stream fails the host as fetch-error)
    return bytes(text[:ROBOTS_MAX_BYTES])


def stored_headers(response: httpx.Response, body_length: int, decoded: bool) -> list[tuple[str, str]]:
    """Headers as received, made true of the decoded body we store (see the module docstring)."""
    headers = []
    for raw_name, raw_value in response.headers.raw:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        lower = name.lower()
        if lower in ("transfer-encoding", "content-length") or (lower == "content-encoding" and decoded):
            name = "X-Crawler-" + name
        headers.append((name, value))
    headers.append(("Content-Length", str(body_length)))
    return headers


# --- the crawl --------------------------------------------------------------------------


def crawl(
    urls: Sequence[str],
    out_dir: Path,
    cfg: CrawlConfig,
    progress: Callable[[int, int], None] | None = None,
    resolver: Resolver = system_resolver,
) -> CrawlResult:
    """Fetch every URL once into out_dir/crawl-NNNNN.warc.gz, then write out_dir/crawl.json.

    resolver: (host, port) -> addresses; the system's DNS unless a test stubs it."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_outputs(out_dir)
    total = len(urls)
    failures: dict[int, Rejection] = {}
    jobs: list[tuple[int, httpx.URL]] = []
    first_seen: dict[str, int] = {}
    for i, raw in enumerate(urls):
        try:
            url = check_url(raw)
        except _Failed as exc:
            failures[i] = rejection(raw, exc.reason, exc.detail)
            continue
        if str(url) in first_seen:
            failures[i] = rejection(raw, "duplicate-url", f"same URL as entry {first_seen[str(url)] + 1} of the list")
            continue
        first_seen[str(url)] = i
        jobs.append((i, url))
    done = len(failures)
    if progress and done:
        progress(done, total)

    spool_path = out_dir / SPOOL
    spooled: dict[int, tuple[int, int]] = {}  # input index -> (offset, length) in the spool
    policy = AddressPolicy.build(cfg.ports, cfg.allow)
    client = httpx.Client(
        headers={"User-Agent": cfg.user_agent_header, "Accept": ACCEPT, "Accept-Encoding": ACCEPT_ENCODING},
        timeout=httpx.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout, write=cfg.read_timeout,
                              pool=cfg.connect_timeout + cfg.read_timeout),
        transport=guarded_transport(policy, resolver, httpx.Limits(max_connections=cfg.concurrency,
                                                                   max_keepalive_connections=cfg.concurrency)),
        follow_redirects=False,
        trust_env=False,  # an environment proxy would resolve and connect past the address check
        cookies=http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
    )
    fetcher = _Fetcher(client, cfg, policy)
    pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="crawl")
    try:
        with client, open(spool_path, "wb") as spool:
            writer = WARCWriter(spool, gzip=True)
            queue = interleave_by_host(jobs)
            pending: set = set()
            while True:
                while len(pending) < 4 * cfg.concurrency and (job := next(queue, None)):
                    pending.add(pool.submit(fetch_one, fetcher, *job))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    i, outcome = future.result()
                    if isinstance(outcome, _Failed):
                        failures[i] = rejection(urls[i], outcome.reason, outcome.detail)
                    else:
                        start = spool.tell()
                        write_response(writer, outcome)
                        spooled[i] = (start, spool.tell() - start)
                    done += 1
                    if progress:
                        progress(done, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    warc_paths = assemble_warcs(out_dir, spool_path, [spooled[i] for i in sorted(spooled)], cfg)
    spool_path.unlink()
    result = CrawlResult(warc_paths, total, len(spooled), [failures[i] for i in sorted(failures)],
                         round(time.perf_counter() - started, 3))
    assert result.urls == result.fetched + len(result.failures)
    write_manifest(out_dir, result, cfg)
    return result


def fetch_one(fetcher: _Fetcher, index: int, url: httpx.URL) -> tuple[int, _Fetched | _Failed]:
    """Runs in a worker thread; never raises, so every URL ends as a page or a failure."""
    try:
        return index, fetcher.fetch(url)
    except _Failed as exc:
        return index, exc
    except Blocked as exc:  # pragma: no cover - fetch() turns these into _Failed
        return index, _Failed(exc.reason, exc.detail)
    except httpx.TimeoutException as exc:
        return index, _Failed("timeout", f"{type(exc).__name__}: {str(exc) or 'timed out'}")
    except httpx.TransportError as exc:
        return index, _Failed("connection-error", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # DecodingError (a broken gzip body) and anything unforeseen
        return index, _Failed("fetch-error", f"{type(exc).__name__}: {exc}")


def interleave_by_host(jobs: list[tuple[int, httpx.URL]]) -> Iterator[tuple[int, httpx.URL]]:
    """One URL of each host in turn, so workers are not all queued behind one host's delay."""
    queues: dict[str, deque] = {}
    for job in jobs:
        queues.setdefault(job[1].host, deque()).append(job)
    while queues:
        for host in list(queues):
            yield queues[host].popleft()
            if not queues[host]:
                del queues[host]


# --- WARC output ------------------------------------------------------------------------


def write_response(writer: WARCWriter, page: _Fetched) -> None:
    http_headers = StatusAndHeaders(f"{page.status} {page.reason_phrase}".strip(), page.headers,
                                    protocol=page.http_version)
    date = page.fetched_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    record = writer.create_warc_record(page.url, "response", payload=io.BytesIO(page.body),
                                       length=len(page.body), http_headers=http_headers,
                                       warc_headers_dict={"WARC-Date": date})
    writer.write_record(record)


def assemble_warcs(out_dir: Path, spool_path: Path, ranges: list[tuple[int, int]], cfg: CrawlConfig) -> list[Path]:
    """Copy spooled records (each its own gzip member) into files of warc_records_per_file."""
    paths = []
    per_file = cfg.warc_records_per_file
    with open(spool_path, "rb") as spool:
        for n, start in enumerate(range(0, len(ranges), per_file)):
            path = out_dir / f"crawl-{n:05d}.warc.gz"
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as out:
                writer = WARCWriter(out, gzip=True)
                writer.write_record(writer.create_warcinfo_record(path.name, {
                    "software": "crawl2model tasks.crawl (httpx, warcio)",
                    "format": "WARC File Format 1.0",
                    "http-header-user-agent": cfg.user_agent_header,
                    "robots": "obey",
                    "description": "bodies stored decoded; X-Crawler-Content-Encoding/-Length/Transfer-Encoding "
                                   "hold the original headers",
                }))
                for offset, length in ranges[start:start + per_file]:
                    spool.seek(offset)
                    out.write(spool.read(length))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            paths.append(path)
    return paths


# --- manifest and cache -----------------------------------------------------------------


def remove_outputs(out_dir: Path) -> None:
    """Remove what an earlier crawl into out_dir left; the manifest first, so it never lies."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for pattern in ("crawl-*.warc.gz", "crawl-*.warc.gz.tmp", SPOOL, MANIFEST + ".tmp"):
        for path in out_dir.glob(pattern):
            path.unlink()


def write_manifest(out_dir: Path, result: CrawlResult, cfg: CrawlConfig) -> None:
    manifest = {
        "urls": result.urls,
        "fetched": result.fetched,
        "failures": [asdict(f) for f in result.failures],
        "warc_files": [p.name for p in result.warc_paths],
        "seconds": result.seconds,
        "settings": fetch_settings(cfg),
        "safety": safety_settings(cfg),
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_dir / MANIFEST)


def load_result(out_dir: Path, cfg: CrawlConfig | None = None) -> CrawlResult | None:
    """The CrawlResult of a finished crawl in out_dir, or None when it is missing or incomplete,
    or (given cfg) when it refused URLs under other safety settings than cfg's."""
    try:
        manifest = json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))
        paths = [Path(out_dir) / name for name in manifest["warc_files"]]
        failures = [Rejection(**f) for f in manifest["failures"]]
        result = CrawlResult(paths, manifest["urls"], manifest["fetched"], failures, manifest.get("seconds", 0.0))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(p.is_file() for p in paths) or result.urls != result.fetched + len(failures):
        return None
    if cfg is not None and any(f.reason in SAFETY_REASONS for f in failures) \
            and manifest.get("safety") != safety_settings(cfg):
        return None  # e.g. 127.0.0.1 was refused, and is now allow-listed
    return result


def fetch_settings(cfg: CrawlConfig) -> dict:
    """The settings that change what a crawl fetches (not politeness or speed)."""
    return {"user_agent": cfg.user_agent_header, "max_bytes": cfg.max_bytes, "max_redirects": cfg.max_redirects}


def safety_settings(cfg: CrawlConfig) -> dict:
    """The settings behind blocked-*/decompression-bomb answers (kept out of the cache key)."""
    return {"allow": sorted(cfg.allow), "ports": sorted(cfg.ports), "max_decompressed_ratio": cfg.max_decompressed_ratio}


def crawl_key(urls: Sequence[str], cfg: CrawlConfig) -> str:
    return stable_hash({"urls": list(urls), **fetch_settings(cfg)})


def crawl_dir(urls: Sequence[str], crawl_root: Path, cfg: CrawlConfig) -> Path:
    """Where the crawl of this list with these settings lives (done or not)."""
    return Path(crawl_root) / crawl_key(urls, cfg)[:16]


def cached_crawl(urls: Sequence[str], crawl_root: Path, cfg: CrawlConfig) -> CrawlResult | None:
    """The finished crawl of this list, without any network request; None if there is none."""
    return load_result(crawl_dir(urls, crawl_root, cfg), cfg)


def load_or_crawl(
    urls: Sequence[str],
    crawl_root: Path,
    cfg: CrawlConfig,
    progress: Callable[[int, int], None] | None = None,
) -> CrawlResult:
    """The finished crawl of this list under crawl_root/<key>/, crawling it first if needed."""
    out_dir = crawl_dir(urls, crawl_root, cfg)
    cached = load_result(out_dir, cfg)
    if cached is not None:
        if progress:
            progress(cached.urls, cached.urls)
        return cached
    if out_dir.exists():  # a crawl killed half-way: start it over
        shutil.rmtree(out_dir)
    return crawl(urls, out_dir, cfg, progress)


@task(name="crawl-url-list", cache_policy=NONE, task_run_name="crawl {label}")
def crawl_url_list(label: str, urls: list[str], crawl_root: Path, cfg: CrawlConfig) -> CrawlResult:
    """The Prefect task around load_or_crawl: one URL list, from its cache when crawled before."""
    return load_or_crawl(urls, crawl_root, cfg)


# --- URL list files ---------------------------------------------------------------------

URL_LIST_SUFFIXES = (".txt", ".urls", ".lst")
_HTTP_URL = re.compile(r"https?://\S+", re.IGNORECASE)


def _list_lines(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_url_list(path: Path) -> list[str]:
    """One URL per line; blank lines and lines starting with '#' are skipped."""
    return _list_lines(Path(path).read_text(encoding="utf-8-sig", errors="replace"))


def looks_like_url_list(path: Path, sniff_lines: int = 5) -> bool:
    """A .txt/.urls/.lst file whose first non-comment lines (up to 5) are all http(s) URLs."""
    path = Path(path)
    if path.suffix.lower() not in URL_LIST_SUFFIXES or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024 + 1)
    except OSError:
        return False
    text = head[: 64 * 1024].decode("utf-8-sig", "replace")  # the cut may split a character
    if len(head) > 64 * 1024:
        text = text.rpartition("\n")[0]  # drop the line cut in the middle
    lines = _list_lines(text)[:sniff_lines]
    return bool(lines) and all(_HTTP_URL.fullmatch(line) for line in lines)


def main(argv: list[str]) -> int:
    import argparse

    from pydantic import ValidationError

    parser = argparse.ArgumentParser(
        prog="python -m tasks.crawl", formatter_class=argparse.RawDescriptionHelpFormatter, description="Crawl a URL list politely into WARC files (see the module docstring).\n"
        "Only public addresses on --port ports are fetched unless --allow names them.",
        epilog="example: python -m tasks.crawl urls.txt out/ --allow 127.0.0.1:8000   (a local test server)")
    parser.add_argument("urls", type=Path, help="file with one URL per line ('#' comments)")
    parser.add_argument("out_dir", type=Path, help="where crawl-NNNNN.warc.gz and crawl.json go")
    parser.add_argument("--allow", action="append", default=[], metavar="ADDR[:PORT]",
                        help='crawl this private/loopback address or network anyway: "127.0.0.1:8000", '
                             '"10.0.0.0/8", "[::1]:*" (any port); repeatable')
    parser.add_argument("--port", action="append", type=int, dest="ports", metavar="PORT",
                        help="a port public hosts may be crawled on (repeatable; default 80 and 443)")
    parser.add_argument("--contact-url", help="sent in the User-Agent so site owners can reach you")
    parser.add_argument("--delay", type=float, help="seconds between requests to one host (default 1)")
    args = parser.parse_args(argv)
    settings = {"allow": args.allow, "ports": args.ports, "contact_url": args.contact_url, "delay_seconds": args.delay}
    try:
        cfg = CrawlConfig(**{k: v for k, v in settings.items() if v is not None})
    except ValidationError as exc:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    try:
        urls = read_url_list(args.urls)
    except OSError as exc:
        parser.error(f"cannot read {args.urls}: {exc}")
    result = crawl(urls, args.out_dir, cfg,
                   progress=lambda done, total: print(f"\r{done}/{total}", end="", file=sys.stderr))
    print(f"\n{result.fetched} of {result.urls} fetched into {len(result.warc_paths)} WARC file(s)", file=sys.stderr)
    for failure in result.failures:
        print(f"{failure.reason}\t{failure.url}\t{failure.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
