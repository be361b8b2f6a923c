"""tasks.crawl against a real local HTTP server (127.0.0.1, free port), WARCs read back with fastwarc."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from crawl2model.config import CrawlConfig
from tasks.crawl import _Failed, check_url, crawl, crawl_key, load_or_crawl, looks_like_url_list, read_url_list
from tasks.ingest import gzip_end_is_clean, read_warc
from tasks.records import Page

ROBOTS = "User-agent: *\nDisallow: /private/\n"
GZIP_TEXT = b"<html><body>" + b"compressed words " * 40 + b"</body></html>"


def page_body(path: str) -> bytes:
    return f"<html><head><title>{path}</title></head><body>page at {path}</body></html>".encode()


class Site:
    """A ThreadingHTTPServer with one canned answer per path; counts what clients asked for."""

    def __init__(self, robots_status: int = 200, robots_body: str = ROBOTS):
        self.robots_status, self.robots_body = robots_status, robots_body
        self.hits: Counter[str] = Counter()
        self.starts: list[tuple[float, str]] = []
        self.in_flight = self.max_in_flight = 0
        self.huge_sent = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for name, value in {"Content-Type": "text/html; charset=utf-8", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path
                with site.lock:
                    site.hits[path] += 1
                    site.starts.append((time.monotonic(), path))
                    site.in_flight += 1
                    site.max_in_flight = max(site.max_in_flight, site.in_flight)
                try:
                    self.answer(path)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with site.lock:
                        site.in_flight -= 1

            def answer(self, path: str) -> None:
                if path == "/robots.txt":
                    self.send(site.robots_status, site.robots_body.encode(), {"Content-Type": "text/plain"})
                elif path.startswith(("/page/", "/private/")):
                    self.send(200, page_body(path))
                elif path.startswith("/paced/"):  # takes a while, to see how many are in flight
                    time.sleep(0.15)
                    self.send(200, page_body(path))
                elif path.startswith("/away?to="):  # redirect to another origin
                    self.send(302, headers={"Location": unquote(path.partition("=")[2])})
                elif path == "/redirect":
                    self.send(302, headers={"Location": "/page/target"})
                elif path == "/redirect-private":
                    self.send(301, headers={"Location": site.url("/private/behind-redirect")})
                elif path.startswith("/loop/"):
                    self.send(302, headers={"Location": "/loop/b" if path == "/loop/a" else "/loop/a"})
                elif path == "/missing":
                    self.send(404, b"not here")
                elif path == "/error":
                    self.send(500, b"oops")
                elif path == "/big":  # over max_bytes, announced by Content-Length
                    self.send(200, b"x" * 5000)
                elif path == "/huge":  # 50 MB with no Content-Length: the client must stop by itself
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    chunk = b"y" * 65536
                    for _ in range(800):
                        self.wfile.write(chunk)
                        site.huge_sent += len(chunk)
                elif path == "/slow":  # headers later than the read timeout
                    time.sleep(0.8)
                    self.send(200, page_body(path))
                elif path == "/gzip":
                    self.send(200, gzip.compress(GZIP_TEXT), {"Content-Encoding": "gzip"})
                elif path == "/badgzip":
                    self.send(200, b"this is not gzip at all", {"Content-Encoding": "gzip"})
                elif path == "/chunked":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for part in (b"<html>first half ", b"second half</html>"):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                elif path == "/drop":  # hang up without an answer
                    self.close_connection = True
                else:
                    self.send(404, b"unknown")

        return Handler


@pytest.fixture
def make_site():
    sites = []

    def make(**kwargs) -> Site:
        sites.append(Site(**kwargs))
        return sites[-1]

    yield make
    for site in sites:
        site.close()


@pytest.fixture
def site(make_site) -> Site:
    return make_site()


def config(**overrides) -> CrawlConfig:
    settings = dict(delay_seconds=0, concurrency=4, per_host_concurrency=4, connect_timeout=1.0,
                    read_timeout=0.3, max_bytes=2048, max_redirects=3, warc_records_per_file=2,
                    allow=["127.0.0.1:*"])  # the test servers; tests/test_crawl_safety.py crawls without it
    return CrawlConfig(**{**settings, **overrides})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_back(paths: list[Path]) -> list[tuple[str, bytes, object]]:
    """(target URI, body, http headers) of every response record, in file order."""
    out = []
    for path in paths:
        types = []
        for record in ArchiveIterator(str(path), parse_http=True, auto_decode="all", fsspec_args=False):
            types.append(record.record_type)
            if record.record_type == WarcRecordType.response:  # read it before the iterator moves on
                out.append((record.headers.get("WARC-Target-URI"), record.reader.read(), record.http_headers))
        assert types[0] == WarcRecordType.warcinfo
        assert all(t == WarcRecordType.response for t in types[1:])
    return out


def test_crawl_writes_fetched_pages_and_explains_the_rest(site, tmp_path):
    dead = f"http://127.0.0.1:{closed_port()}/nothing-listens"
    expected_pages = {  # asked-for path -> final path
        "/page/1": "/page/1", "/page/2": "/page/2", "/redirect": "/page/target",
        "/gzip": "/gzip", "/chunked": "/chunked", "/page/3": "/page/3",
    }
    expected_failures = {
        "/private/secret": "robots-disallowed",
        "/redirect-private": "robots-disallowed",
        "/loop/a": "too-many-redirects",
        "/missing": "http-404",
        "/error": "http-500",
        "/big": "too-large",
        "/huge": "too-large",
        "/slow": "timeout",
        "/drop": "connection-error",
        "/badgzip": "fetch-error",
    }
    urls = [site.url(p) for p in list(expected_pages)[:3]]
    urls += [site.url(p) for p in expected_failures]
    urls += [site.url(p) for p in list(expected_pages)[3:]]
    urls += [site.url("/page/1"), "not a url", "ftp://127.0.0.1/file", dead]
    calls = []

    result = crawl(urls, tmp_path / "out", config(), progress=lambda d, t: calls.append((d, t)))

    # counts reconcile, and the page order in the WARCs is the input order
    assert result.urls == len(urls) == result.fetched + len(result.failures)
    assert result.fetched == len(expected_pages)
    assert [p.name for p in result.warc_paths] == ["crawl-00000.warc.gz", "crawl-00001.warc.gz", "crawl-00002.warc.gz"]
    pages = read_back(result.warc_paths)
    assert [uri for uri, _, _ in pages] == [site.url(final) for final in expected_pages.values()]
    bodies = {uri: body for uri, body, _ in pages}
    assert bodies[site.url("/page/1")] == page_body("/page/1")
    assert bodies[site.url("/page/target")] == page_body("/page/target")
    assert bodies[site.url("/gzip")] == GZIP_TEXT
    assert bodies[site.url("/chunked")] == b"<html>first half second half</html>"

    # every other URL has its reason; quarantined only for what could not be processed
    reasons = {f.url: f.reason for f in result.failures}
    for path, reason in expected_failures.items():
        assert reasons[site.url(path)] == reason, path
    assert reasons["not a url"] == "invalid-url"
    assert reasons["ftp://127.0.0.1/file"] == "not-http"
    assert reasons[dead] == "connection-error"
    assert [f.reason for f in result.failures].count("duplicate-url") == 1
    assert all(f.stage == "crawl" for f in result.failures)
    quarantined = {f.reason for f in result.failures if f.quarantined}
    assert quarantined == {"too-many-redirects", "http-500", "too-large", "timeout", "connection-error", "fetch-error"}
    details = {f.url: f.detail for f in result.failures}
    assert "/loop/a -> " in details[site.url("/loop/a")] and "/loop/b" in details[site.url("/loop/a")]
    assert "/private/behind-redirect" in details[site.url("/redirect-private")]

    # what the server saw: robots once, nothing disallowed, duplicates and big bodies not re-read
    assert site.hits["/robots.txt"] == 1
    assert not any(path.startswith("/private/") for path in site.hits)
    assert site.hits["/page/1"] == 1
    assert site.hits["/loop/a"] + site.hits["/loop/b"] == 4  # max_redirects=3: 1 request + 3 redirects
    assert site.huge_sent < 20_000_000  # stopped reading long before the 50 MB end

    assert calls[-1] == (len(urls), len(urls))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    manifest = json.loads((tmp_path / "out" / "crawl.json").read_text())
    assert manifest["fetched"] == result.fetched and manifest["urls"] == len(urls)
    assert manifest["warc_files"] == [p.name for p in result.warc_paths]
    assert len(manifest["failures"]) == len(result.failures)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_stored_records_are_consistent_for_readers(site, tmp_path):
    urls = [site.url("/gzip"), site.url("/chunked"), site.url("/page/1")]
    result = crawl(urls, tmp_path, config(warc_records_per_file=10))
    [path] = result.warc_paths
    for record in ArchiveIterator(str(path), parse_http=True, auto_decode="none", fsspec_args=False):
        if record.record_type != WarcRecordType.response:
            continue
        headers = record.http_headers
        body = record.reader.read()  # nothing decoded: the stored bytes as they are
        assert headers.get("Content-Encoding") is None and headers.get("Transfer-Encoding") is None
        assert int(headers.get("Content-Length")) == len(body)
        assert headers.status_code == 200
        assert record.headers.get("WARC-Date").endswith("Z")
        if record.headers.get("WARC-Target-URI").endswith("/gzip"):
            assert body == GZIP_TEXT and headers.get("X-Crawler-Content-Encoding") == "gzip"
    # and tasks.ingest reads the crawl like any WARC
    assert gzip_end_is_clean(str(path))
    items = list(read_warc(str(path), max_record_bytes=1_000_000))
    assert all(isinstance(i, Page) for i in items)
    assert [i.url for i in items] == urls
    assert items[2].content_type == "text/html" and items[2].charset == "utf-8"


def test_per_host_delay_is_honoured(site, tmp_path):
    urls = [site.url(f"/page/{n}") for n in range(4)]
    crawl(urls, tmp_path, config(delay_seconds=0.2))
    starts = sorted(t for t, _ in site.starts)
    assert len(starts) == 5  # robots.txt + 4 pages, all to one host
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.2 - 0.05, gaps  # allowing for scheduling jitter; without the delay they are ~1 ms


def test_robots_crawl_delay_is_honoured(make_site, tmp_path):
    site = make_site(robots_body="User-agent: *\nCrawl-delay: 1\n")
    crawl([site.url("/page/1")], tmp_path, config(delay_seconds=0))
    (robots_at, first), (page_at, second) = sorted(site.starts)
    assert (first, second) == ("/robots.txt", "/page/1")
    assert page_at - robots_at >= 1 - 0.03


@pytest.mark.parametrize("per_host", [1, 3])
def test_per_host_concurrency_is_capped(site, tmp_path, per_host):
    urls = [site.url(f"/paced/{n}") for n in range(6)]
    result = crawl(urls, tmp_path, config(concurrency=6, per_host_concurrency=per_host, read_timeout=2))
    assert result.fetched == 6
    assert site.max_in_flight == per_host


def test_robots_rules_follow_google(make_site, tmp_path):
    down = make_site(robots_status=503)
    missing = make_site(robots_status=404)
    us_only = make_site(robots_body="User-agent: crawl2model\nDisallow: /\n\nUser-agent: *\nAllow: /\n")
    urls = [down.url("/page/1"), missing.url("/private/x"), us_only.url("/page/1")]
    result = crawl(urls, tmp_path, config())
    assert [uri for uri, _, _ in read_back(result.warc_paths)] == [missing.url("/private/x")]
    [a, b] = result.failures
    assert (a.url, a.reason, a.quarantined) == (down.url("/page/1"), "robots-disallowed", False)
    assert "503" in a.detail
    assert (b.url, b.reason) == (us_only.url("/page/1"), "robots-disallowed")
    assert down.hits == Counter({"/robots.txt": 1}) and us_only.hits == Counter({"/robots.txt": 1})


def test_redirect_targets_obey_their_own_robots(make_site, tmp_path):
    home, other = make_site(), make_site()
    urls = [home.url("/away?to=" + quote(other.url("/private/x"), safe="")),
            home.url("/away?to=" + quote(other.url("/page/1"), safe="")),
            home.url("/redirect")]
    result = crawl(urls, tmp_path, config(max_redirects=1))
    assert [uri for uri, _, _ in read_back(result.warc_paths)] == [other.url("/page/1"), home.url("/page/target")]
    [failure] = result.failures
    assert (failure.url, failure.reason) == (urls[0], "robots-disallowed")
    assert other.url("/private/x") in failure.detail and "/away" in failure.detail
    assert other.hits == Counter({"/robots.txt": 1, "/page/1": 1})
    # max_redirects=0: the first redirect is already one too many
    result = crawl([home.url("/redirect")], tmp_path / "strict", config(max_redirects=0))
    assert [f.reason for f in result.failures] == ["too-many-redirects"]


@pytest.mark.parametrize("raw, expected", [
    ("https://Example.COM:443/a b#frag", "https://example.com/a%20b"),
    ("http://müller.de/ä", "http://xn--mller-kva.de/%C3%A4"),
    ("http://[::1]:8080/x", "http://[::1]:8080/x"),
    ("not a url", "invalid-url"),
    ("//example.com/x", "invalid-url"),
    ("http:///x", "invalid-url"),
    ("http://exa mple.com/", "invalid-url"),
    ("http://example.com:99999/", "invalid-url"),
    ("ftp://example.com/x", "not-http"),
    ("mailto:someone@example.com", "not-http"),
])
def test_check_url(raw, expected):
    try:
        assert str(check_url(raw)) == expected
    except _Failed as exc:
        assert exc.reason == expected


def test_load_or_crawl_reuses_a_finished_crawl(site, tmp_path):
    urls = [site.url("/page/1"), site.url("/missing"), site.url("/redirect")]
    cfg = config()
    first = load_or_crawl(urls, tmp_path, cfg)
    requests = sum(site.hits.values())
    again = load_or_crawl(urls, tmp_path, cfg)
    assert sum(site.hits.values()) == requests  # no network at all
    assert again == first
    assert read_back(again.warc_paths)[1][0] == site.url("/page/target")
    # settings that change what is fetched make a new crawl; politeness settings do not
    assert crawl_key(urls, cfg) != crawl_key(urls, config(max_bytes=4096))
    assert crawl_key(urls, cfg) == crawl_key(urls, config(delay_seconds=3, concurrency=1))
    assert crawl_key(urls, cfg) != crawl_key(list(reversed(urls)), cfg)


def test_load_or_crawl_redoes_a_killed_crawl(site, tmp_path):
    urls = [site.url("/page/1"), site.url("/page/2")]
    cfg = config()
    out = tmp_path / crawl_key(urls, cfg)[:16]
    out.mkdir()
    (out / "crawl-00000.warc.gz").write_bytes(b"half a file")
    (out / "spool.warc.gz.tmp").write_bytes(b"junk")
    result = load_or_crawl(urls, tmp_path, cfg)
    assert site.hits["/page/1"] == site.hits["/page/2"] == 1
    assert result.fetched == 2 and (out / "crawl.json").exists()
    assert [uri for uri, _, _ in read_back(result.warc_paths)] == urls
    assert sorted(p.name for p in out.iterdir()) == ["crawl-00000.warc.gz", "crawl.json"]
    # a finished crawl whose WARC went missing is redone too
    result.warc_paths[0].unlink()
    load_or_crawl(urls, tmp_path, cfg)
    assert site.hits["/page/1"] == 2


def test_read_url_list_and_sniffing(tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text("# my crawl\n\n  https://example.com/a  \nhttp://example.com/b\n# done\n")
    assert read_url_list(listing) == ["https://example.com/a", "http://example.com/b"]
    assert looks_like_url_list(listing)
    prose = tmp_path / "notes.txt"
    prose.write_text("https://example.com/a\nsome words, not a URL\n")
    assert not looks_like_url_list(prose)
    html = tmp_path / "page.html"
    html.write_text("https://example.com/a\n")
    assert not looks_like_url_list(html)
    empty = tmp_path / "empty.lst"
    empty.write_text("# nothing\n")
    assert not looks_like_url_list(empty)
    long_list = tmp_path / "many.urls"  # only the first 64 KB are read
    long_list.write_text("".join(f"https://example.com/{n}\n" for n in range(10_000)))
    assert looks_like_url_list(long_list)
    binary = tmp_path / "blob.urls"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert not looks_like_url_list(binary)
