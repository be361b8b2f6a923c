"""The crawler cannot be turned against its host: address/port policy, DNS pinning, body bombs.

The address check is tested as a function on literal addresses and with stub resolvers; the
crawl path against real HTTP servers on 127.0.0.1 (free ports), with the allow-list off and on.
Nothing is sent beyond 127.0.0.1: public addresses appear only in checks that never connect.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_crawl_safety.py
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import threading
import time
import tracemalloc
import zlib
from collections import Counter
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

import brotli
import httpcore
import pytest

from crawl2model.config import ConfigError, CrawlConfig, load_config
from tasks.address_guard import (AddressPolicy, Blocked, GuardedBackend, checked_addresses, non_public_kind,
                                 parse_allow_entry)
from tasks.bounded_decode import RATIO_FLOOR, STEP, BoundedDecoder, DecompressionBomb, TooLarge
from tasks.crawl import crawl, load_or_crawl, main

PAGE = b"<html><body>" + b"a page of words " * 30 + b"</body></html>"
BOMB_BYTES = 128 << 20  # what the bombs decode to: 128 MiB of zeros


@lru_cache(maxsize=None)
def bomb(encoding: str) -> bytes:
    zeros = bytes(1 << 20)
    if encoding == "gzip":
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        return b"".join(c.compress(zeros) for _ in range(BOMB_BYTES >> 20)) + c.flush()
    c = brotli.Compressor(quality=5)
    return b"".join(c.process(zeros) for _ in range(BOMB_BYTES >> 20)) + c.finish()


class Server:
    """127.0.0.1 on a free port; records each request's path and headers."""

    def __init__(self, close_connections: bool = False, robots_to: str | None = None):
        self.robots_to = robots_to  # robots.txt redirects there when set
        self.hits: Counter[str] = Counter()
        self.headers: list[dict] = []
        self.close_connections = close_connections
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str) -> str:
        return self.base + path

    def _handler(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for name, value in {"Content-Type": "text/html", **(headers or {})}.items():
                    self.send_header(name, value)
                if srv.close_connections:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                srv.hits[self.path] += 1
                srv.headers.append(dict(self.headers))
                try:
                    if self.path == "/robots.txt" and srv.robots_to:
                        self.send(301, headers={"Location": srv.robots_to})
                    elif self.path == "/robots.txt":
                        self.send(200, b"User-agent: *\nDisallow: /private/\n", {"Content-Type": "text/plain"})
                    elif self.path.startswith(("/page/", "/private/")):
                        self.send(200, PAGE)
                    elif self.path.startswith("/away?to="):
                        self.send(302, headers={"Location": unquote(self.path.partition("=")[2])})
                    elif self.path in ("/bomb-gzip", "/bomb-br"):
                        encoding = self.path.rpartition("-")[2]
                        self.send(200, bomb(encoding), {"Content-Encoding": encoding})
                    elif self.path == "/br":
                        self.send(200, brotli.compress(PAGE), {"Content-Encoding": "br"})
                    else:
                        self.send(404, b"unknown")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def tripwire(monkeypatch):
    """Every socket httpx opens goes through httpcore.SyncBackend.connect_tcp: if a bug let a
    refused address through, the test fails here instead of sending a packet off this machine."""
    real = httpcore.SyncBackend.connect_tcp

    def only_loopback(self, host, port, *args, **kwargs):
        if host != "127.0.0.1":
            raise AssertionError(f"the crawler tried to connect to {host}:{port}")
        return real(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", only_loopback)


@pytest.fixture
def servers():
    made = []

    def make(**kwargs) -> Server:
        made.append(Server(**kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()


def config(**overrides) -> CrawlConfig:
    settings = dict(delay_seconds=0, concurrency=2, per_host_concurrency=2, connect_timeout=2.0, read_timeout=2.0,
                    max_redirects=3, contact_url="https://example.org/crawl-contact")
    return CrawlConfig(**{**settings, **overrides})


def reasons(result) -> dict[str, str]:
    return {f.url: f.reason for f in result.failures}


# --- the address check on literal addresses ---------------------------------------------

BLOCKED = {
    "127.0.0.1": "loopback", "127.8.9.10": "loopback", "0.0.0.0": "unspecified", "169.254.169.254": "link-local",
    "224.0.0.1": "multicast", "239.255.255.250": "multicast", "10.1.2.3": "private", "172.16.0.1": "private",
    "172.31.255.254": "private", "192.168.1.1": "private", "100.64.0.1": "shared", "240.0.0.1": "reserved",
    "255.255.255.255": "reserved", "192.0.2.7": "private",  # documentation range
    "::1": "loopback", "::": "unspecified", "fc00::1": "private", "fd12:3456::1": "private",
    "fe80::1": "link-local", "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback", "::ffff:10.0.0.1": "private", "::ffff:169.254.1.1": "link-local",
    "2002:7f00:1::": "loopback",  # 6to4 carrying 127.0.0.1
    "64:ff9b::a00:1": "private",  # NAT64 carrying 10.0.0.1
}
PUBLIC = ["93.184.216.34", "8.8.8.8", "172.32.0.1", "192.169.0.1", "2606:4700::1111", "2a00:1450:4001::200e",
          "::ffff:93.184.216.34", "64:ff9b::5db8:d822"]


@pytest.mark.parametrize("address, kind", BLOCKED.items())
def test_non_public_addresses_are_refused(address, kind):
    with pytest.raises(Blocked) as refused:
        AddressPolicy.build().check(address, 80)
    assert refused.value.reason == "blocked-address"
    assert kind in refused.value.detail and "curate.crawl.allow" in refused.value.detail


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass_on_allowed_ports_only(address):
    policy = AddressPolicy.build()
    assert non_public_kind(ipaddress.ip_address(address)) is None
    policy.check(address, 80)
    policy.check(address, 443)
    with pytest.raises(Blocked) as refused:
        policy.check(address, 25)
    assert refused.value.reason == "blocked-port" and "[80, 443]" in refused.value.detail
    AddressPolicy.build(ports=[8080]).check(address, 8080)


def test_allow_entries_open_exactly_what_they_name():
    policy = AddressPolicy.build(allow=["127.0.0.1:8080", "10.0.0.0/8", "[::1]:*", "192.168.5.5:*"])
    policy.check("127.0.0.1", 8080)
    policy.check("::ffff:127.0.0.1", 8080)  # the mapped form is the same address
    policy.check("10.200.3.4", 443)  # no port in the entry: the policy's ports
    policy.check("::1", 9999)
    policy.check("192.168.5.5", 22)
    for address, port, reason in [("127.0.0.1", 8081, "blocked-port"), ("127.0.0.2", 8080, "blocked-address"),
                                  ("10.0.0.1", 22, "blocked-port"), ("11.0.0.1", 22, "blocked-port"),
                                  ("192.168.5.6", 80, "blocked-address"), ("2002:7f00:1::", 8080, "blocked-address")]:
        with pytest.raises(Blocked) as refused:
            policy.check(address, port)
        assert refused.value.reason == reason, (address, port)
    with pytest.raises(Blocked, match="allow-listed on port 8080 only"):
        policy.check("127.0.0.1", 9000)


@pytest.mark.parametrize("entry", ["localhost:8080", "example.com", "10.0.0.1/8", "127.0.0.1:0", "127.0.0.1:http",
                                   "[::1", "[::1]8080", "", "1.2.3.4:70000"])
def test_bad_allow_entries_are_config_errors(entry):
    with pytest.raises(ValueError, match="allow entry"):
        parse_allow_entry(entry)
    with pytest.raises(ConfigError, match="curate.crawl.allow"):
        load_config(overrides=[f"curate.crawl.allow={json.dumps([entry])}"])


def test_config_ports_and_contact_are_validated():
    assert load_config(overrides=["curate.crawl.ports=[8080]"]).curate.crawl.ports == [8080]
    with pytest.raises(ConfigError, match="curate.crawl.ports"):
        load_config(overrides=["curate.crawl.ports=[0]"])
    with pytest.raises(ConfigError, match="curate.crawl.contact_url"):
        load_config(overrides=["curate.crawl.contact_url=not a url"])
    assert CrawlConfig().user_agent_header == "crawl2model/0.1 (+https://github.com/crawl2model/crawl2model)"


# --- names, resolved by stub resolvers ----------------------------------------------------

def stub(*answers_per_call: list[str]):
    """A resolver giving the next answer list on each call (the last one again once spent)."""
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return list(answers_per_call[min(len(calls), len(answers_per_call)) - 1])

    resolve.calls = calls
    return resolve


def test_a_name_is_judged_by_every_address_it_resolves_to():
    policy = AddressPolicy.build()
    assert [str(a) for a in checked_addresses("public.test", 443, policy, stub(["93.184.216.34"]))] == ["93.184.216.34"]
    for answers in (["10.0.0.7"], ["93.184.216.34", "10.0.0.7"], ["::ffff:127.0.0.1"], ["fe80::1%eth0"]):
        with pytest.raises(Blocked) as refused:
            checked_addresses("intranet.test", 443, policy, stub(answers))
        assert refused.value.reason == "blocked-address"
        assert refused.value.detail.startswith("intranet.test resolves to ")


def test_the_connection_goes_to_the_checked_address(servers):
    """One lookup per connection, and the socket opens to that answer: a rebinding second answer
    (10.0.0.5 here) is never used for the connection that was checked, and is refused when a
    later connection looks the name up again."""
    site = servers()
    policy = AddressPolicy.build(allow=[f"127.0.0.1:{site.port}"])
    resolver = stub(["127.0.0.1"], ["10.0.0.5"])
    backend = GuardedBackend(policy, resolver)
    stream = backend.connect_tcp("rebind.test", site.port, timeout=2)
    try:
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", site.port)
    finally:
        stream.close()
    assert resolver.calls == ["rebind.test"]
    with pytest.raises(Blocked, match="rebind.test resolves to 10.0.0.5"):
        backend.connect_tcp("rebind.test", site.port, timeout=2)
    assert resolver.calls == ["rebind.test", "rebind.test"]


def test_crawl_by_name_keeps_the_host_header_and_checks_each_connection(servers, tmp_path):
    site = servers(close_connections=True)  # every request a new connection, so a new lookup
    resolver = stub(["127.0.0.1"], ["127.0.0.1"], ["10.0.0.5"])  # robots.txt, page 1, then rebound
    cfg = config(allow=[f"127.0.0.1:{site.port}"], concurrency=1, per_host_concurrency=1)
    urls = [f"http://rebind.test:{site.port}/page/{n}" for n in (1, 2)]
    result = crawl(urls, tmp_path, cfg, resolver=resolver)
    assert result.fetched == 1 and reasons(result) == {urls[1]: "blocked-address"}
    assert "rebind.test resolves to 10.0.0.5" in result.failures[0].detail and not result.failures[0].quarantined
    assert len(resolver.calls) == 3 and site.hits == Counter({"/robots.txt": 1, "/page/1": 1})
    assert {h["Host"] for h in site.headers} == {f"rebind.test:{site.port}"}


# --- the crawl path against 127.0.0.1 -----------------------------------------------------

def test_allow_list_off_refuses_loopback_without_a_request(servers, tmp_path):
    site = servers()
    urls = [site.url("/page/1"), f"http://localhost:{site.port}/page/2", f"http://2130706433:{site.port}/page/3",
            f"http://[::ffff:127.0.0.1]:{site.port}/page/4", f"http://0.0.0.0:{site.port}/page/5"]
    # the default policy: the test server's port is not 80/443
    result = crawl(urls, tmp_path / "default", config())
    assert set(reasons(result).values()) == {"blocked-port"} and result.fetched == 0
    # with its port allowed, the address is what is refused, also behind a name or another spelling
    result = crawl(urls, tmp_path / "port-ok", config(ports=[site.port]))
    assert reasons(result) == {u: "blocked-address" for u in urls}
    assert "localhost resolves to 127.0.0.1: 127.0.0.1 is loopback" in reasons_detail(result)[urls[1]]
    assert "2130706433 resolves to 127.0.0.1: " in reasons_detail(result)[urls[2]]
    assert not any(f.quarantined for f in result.failures)
    assert sum(site.hits.values()) == 0  # not even robots.txt
    rows = json.loads((tmp_path / "port-ok" / "crawl.json").read_text())["failures"]
    assert {r["reason"] for r in rows} == {"blocked-address"} and rows[0]["stage"] == "crawl"


def reasons_detail(result) -> dict[str, str]:
    return {f.url: f.detail for f in result.failures}


def test_allow_list_on_fetches_and_names_the_project(servers, tmp_path):
    site = servers()
    urls = [site.url("/page/1"), f"http://localhost:{site.port}/page/2", site.url("/br"), site.url("/private/x")]
    result = crawl(urls, tmp_path, config(allow=[f"127.0.0.1:{site.port}"]))
    assert result.fetched == 3 and reasons(result) == {urls[3]: "robots-disallowed"}
    assert site.hits["/robots.txt"] == 2  # once per origin (127.0.0.1 and localhost), not per URL
    agents = {h["User-Agent"] for h in site.headers}
    assert agents == {"crawl2model/0.1 (+https://example.org/crawl-contact)"}
    assert {h["Accept-Encoding"] for h in site.headers} == {"gzip, deflate, br"}


def test_a_port_not_allowed_is_refused(servers, tmp_path):
    allowed, other = servers(), servers()
    urls = [allowed.url("/page/1"), other.url("/page/1")]
    result = crawl(urls, tmp_path, config(allow=[f"127.0.0.1:{allowed.port}"]))
    assert result.fetched == 1 and reasons(result) == {urls[1]: "blocked-port"}
    assert sum(other.hits.values()) == 0


def test_a_redirect_to_a_refused_target_is_refused_at_the_redirect(servers, tmp_path):
    site, other = servers(), servers()
    resolver = stub(["10.0.0.5"])  # internal.test; 127.0.0.1 literals do not ask the resolver

    def away(target: str) -> str:
        return site.url("/away?to=" + quote(target, safe=""))

    targets = {
        other.url("/page/1"): "blocked-port",  # loopback on a port not allow-listed
        "http://10.0.0.5/page/1": "blocked-address",
        "http://[::ffff:192.168.0.1]/x": "blocked-address",
        "http://internal.test/page/1": "blocked-address",  # a name that resolves to 10.0.0.5
        "http://169.254.169.254/latest/meta-data/": "blocked-address",
        "file:///etc/passwd": "not-http",
        site.url("/page/ok"): None,  # an allowed target is still followed
    }
    urls = [away(t) for t in targets]
    result = crawl(urls, tmp_path, config(allow=[f"127.0.0.1:{site.port}"]), resolver=resolver)
    assert reasons(result) == {away(t): r for t, r in targets.items() if r}
    assert result.fetched == 1
    for failure in result.failures:
        assert "/away?to=" in failure.detail, failure.detail  # the chain shows where it came from
    assert sum(other.hits.values()) == 0
    assert resolver.calls == ["internal.test"]



def test_a_robots_txt_redirect_to_a_refused_target_counts_as_no_robots_txt(servers, tmp_path):
    site = servers(robots_to="http://10.0.0.5/robots.txt")
    result = crawl([site.url("/private/x")], tmp_path, config(allow=[f"127.0.0.1:{site.port}"]))
    assert result.fetched == 1 and site.hits == Counter({"/robots.txt": 1, "/private/x": 1})


def test_a_slow_dns_answer_times_out_as_connect(servers, tmp_path):
    site = servers()

    def slow(host: str, port: int) -> list[str]:
        time.sleep(3.0)  # far past connect_timeout: the crawl must give up long before this answers
        return ["127.0.0.1"]

    started = time.monotonic()
    result = crawl([f"http://slow.test:{site.port}/page/1"], tmp_path,
                   config(allow=[f"127.0.0.1:{site.port}"], connect_timeout=0.2), resolver=slow)
    assert [f.reason for f in result.failures] == ["timeout"] and "resolving slow.test" in result.failures[0].detail
    assert time.monotonic() - started < 2.0 and sum(site.hits.values()) == 0  # margin for a loaded machine

@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_decompression_bombs_are_refused_without_inflating_them(servers, tmp_path, encoding):
    site = servers()
    bomb(encoding)  # made before measuring
    url = site.url(f"/bomb-{encoding}")
    tracemalloc.start()
    try:
        result = crawl([url], tmp_path / "ratio", config(allow=[f"127.0.0.1:{site.port}"], max_bytes=200_000_000))
        ratio_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        # with the ratio cap out of the way, the size cap stops it, still without a 128 MiB buffer
        result2 = crawl([url], tmp_path / "size", config(allow=[f"127.0.0.1:{site.port}"], max_bytes=4_000_000,
                                                         max_decompressed_ratio=1e9))
        size_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [f.reason for f in result.failures] == ["decompression-bomb"]
    assert [f.reason for f in result2.failures] == ["too-large"]
    assert result.failures[0].quarantined
    # measured: ~8 and ~5 MiB; httpx's own decoders (iter_bytes) peak at 141 MiB (gzip) and 128 MiB (br)
    assert ratio_peak < 16 << 20, ratio_peak
    assert size_peak < 16 << 20, size_peak


def test_bounded_decoder_by_itself():
    text = b"some words that compress " * 2000
    for encoded, name in [(gzip.compress(text), "gzip"), (zlib.compress(text), "deflate"),
                          (zlib.compress(text)[2:-4], "deflate"), (brotli.compress(text), "br"),
                          (brotli.compress(gzip.compress(text)), "gzip, br")]:
        decoder = BoundedDecoder(name, max_output=len(text), max_ratio=1e9)
        out = b"".join(decoder.feed(encoded[i:i + 100]) for i in range(0, len(encoded), 100)) + decoder.flush()
        assert out == text, name
        with pytest.raises(TooLarge):
            small = BoundedDecoder(name, max_output=len(text) - 1, max_ratio=1e9)
            small.feed(encoded)
            small.flush()
    raw = BoundedDecoder("compress", 10, 1)  # unknown: passed through raw, still capped
    assert not raw.decoded and raw.feed(b"0123456789") == b"0123456789"
    with pytest.raises(TooLarge):
        raw.feed(b"x")
    whole = BoundedDecoder("gzip", 10**9, 100)
    with pytest.raises(DecompressionBomb):
        whole.feed(bomb("gzip"))  # all 130 KB at once: stops once past 100x of them, not at 128 MiB
    assert whole.produced <= 100 * len(bomb("gzip")) + STEP
    chunked = BoundedDecoder("gzip", 10**9, 100)
    with pytest.raises(DecompressionBomb):
        for i in range(0, len(bomb("gzip")), 4096):  # as a network delivers it
            chunked.feed(bomb("gzip")[i:i + 4096])
    assert chunked.produced <= RATIO_FLOOR + STEP


def test_a_cached_refusal_is_retried_once_allowed(servers, tmp_path):
    site = servers()
    urls = [site.url("/page/1")]
    refused = load_or_crawl(urls, tmp_path, config())
    assert [f.reason for f in refused.failures] == ["blocked-port"]
    allowed_cfg = config(allow=[f"127.0.0.1:{site.port}"])
    fetched = load_or_crawl(urls, tmp_path, allowed_cfg)
    assert fetched.fetched == 1 and site.hits["/page/1"] == 1
    assert load_or_crawl(urls, tmp_path, allowed_cfg) == fetched and site.hits["/page/1"] == 1  # cached
    assert load_or_crawl(urls, tmp_path, config()).fetched == 1  # what was fetched stays fetched


def test_command_line_has_the_allow_flag(servers, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "--allow ADDR[:PORT]" in capsys.readouterr().out
    site = servers()
    listing = tmp_path / "urls.txt"
    listing.write_text(site.url("/page/1") + "\n")
    assert main([str(listing), str(tmp_path / "refused")]) == 0
    assert capsys.readouterr().out.startswith("blocked-port\t")
    assert main([str(listing), str(tmp_path / "ok"), "--allow", f"127.0.0.1:{site.port}"]) == 0
    assert capsys.readouterr().out == "" and site.hits["/page/1"] == 1
    with pytest.raises(SystemExit):
        main([str(listing), str(tmp_path / "bad"), "--allow", "localhost"])
    assert "allow entry 'localhost'" in capsys.readouterr().err


def test_the_bundled_sample_is_crawled_through_its_allow_entry(tmp_path):
    from flows.sample import prepare_sample
    from tasks.crawl import cached_crawl, read_url_list

    cfg = load_config(overrides=["sample.packages=[sqlalchemy]", "sample.max_mb=0.1"], data_root=tmp_path)
    assert cfg.curate.crawl.allow == []  # the user's config is not widened
    urls_file = prepare_sample.fn(cfg, show_progress=False)
    result = cached_crawl(read_url_list(urls_file), cfg.data_root / "crawl", cfg.curate.crawl)
    assert result is not None and result.fetched >= 2
    assert [f.reason for f in result.failures] == ["robots-disallowed"]  # /private/drafts.html only
    manifest = json.loads((result.warc_paths[0].parent / "crawl.json").read_text())
    assert manifest["safety"]["allow"] == [f"127.0.0.1:{urlsplit(read_url_list(urls_file)[0]).port}"]
