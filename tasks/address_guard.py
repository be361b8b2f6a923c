"""Where the crawler may connect: public addresses on allowed ports, plus an explicit allow-list.

    from tasks.address_guard import AddressPolicy, Blocked, guarded_transport
    policy = AddressPolicy.build(ports=[80, 443], allow=["127.0.0.1:8080"])
    policy.check("10.0.0.1", 80)            # raises Blocked("blocked-address", "10.0.0.1 is private ...")
    client = httpx.Client(transport=guarded_transport(policy), trust_env=False)

The check runs where the socket is opened (an httpcore network backend), so it covers every
connection the client makes: the first request, robots.txt, every redirect hop. A host name is
resolved once, every address it resolves to is checked (one refused address refuses the name,
since DNS rebinding hands out a mix), and the socket is opened to a checked address literal, so
a second DNS answer cannot swap in another one; TLS SNI and the Host header keep the name.

Refused unless allow-listed: loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7),
link-local (169.254/16, fe80::/10), multicast, unspecified (0.0.0.0, ::), reserved, shared
(100.64/10), documentation and benchmark ranges, i.e. anything not globally routable; IPv6
forms that carry an IPv4 address (::ffff:a.b.c.d, 6to4 2002::/16, NAT64 64:ff9b::/96) are
judged by that address. Ports: only those of `ports` (default 80, 443).

Allow-list entries (config `curate.crawl.allow`): an address or network, optionally with a port:
"127.0.0.1:8080" (that port only), "10.0.0.0/8" (on `ports` only), "[::1]:*" (any port).

Tests: .venv/bin/python -m pytest -q tests/test_crawl_safety.py
"""

from __future__ import annotations

import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]  # (host, port) -> address strings, in preference order
ANY_PORT = "*"

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"),)
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; Python does not call it private
_DNS_POOL = ThreadPoolExecutor(4, thread_name_prefix="crawl-dns")  # so a lookup can time out


class Blocked(Exception):
    """A target the policy refuses; reason is blocked-address or blocked-port."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class AllowEntry:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | str | None  # None: the policy's ports; ANY_PORT: every port

    def matches(self, ip: IPAddress) -> bool:
        return ip.version == self.network.version and ip in self.network

    def admits(self, port: int, ports: frozenset[int]) -> bool:
        return self.port == ANY_PORT or self.port == port or (self.port is None and port in ports)


def parse_allow_entry(text: str) -> AllowEntry:
    """ "127.0.0.1", "10.0.0.0/8", "127.0.0.1:8080", "[::1]:8080", "[fc00::/7]:*", "::1" -> AllowEntry."""
    raw = text.strip()
    port_text = None
    if raw.startswith("["):
        addr, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"allow entry {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:] if rest else None
    else:
        try:  # a bare address or network, IPv6 ones included
            return AllowEntry(ipaddress.ip_network(raw), None)
        except ValueError:
            addr, sep, port_text = raw.rpartition(":")
            if not sep:
                addr, port_text = raw, None
    try:
        network = ipaddress.ip_network(addr)
    except ValueError as exc:
        raise ValueError(f"allow entry {text!r}: {exc} (addresses or networks only, not host names)") from None
    if port_text is None or port_text == ANY_PORT:
        return AllowEntry(network, port_text)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"allow entry {text!r}: port {port_text!r} is not 1-65535 or '*'")
    return AllowEntry(network, int(port_text))


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), else None."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def non_public_kind(ip: IPAddress) -> str | None:
    """Why ip is not a public unicast address ("loopback", "private", ...), or None when it is."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        kind = non_public_kind(inner)
        return f"{kind} ({ip} carries {inner})" if kind else None
    for kind, flag in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                       ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                       ("reserved", ip.is_reserved), ("shared (100.64/10)", ip in _SHARED),
                       ("site-local", getattr(ip, "is_site_local", False)), ("private", ip.is_private)):
        if flag:
            return kind
    return None if ip.is_global else "not globally routable"


def _normal(ip: IPAddress) -> IPAddress:
    """::ffff:a.b.c.d is a.b.c.d (so an IPv4 allow entry covers it)."""
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip


@dataclass(frozen=True)
class AddressPolicy:
    ports: frozenset[int]
    allow: tuple[AllowEntry, ...] = ()

    @classmethod
    def build(cls, ports: Iterable[int] = (80, 443), allow: Iterable[str] = ()) -> "AddressPolicy":
        return cls(frozenset(ports), tuple(parse_allow_entry(a) for a in allow))

    def check(self, address: str | IPAddress, port: int) -> None:
        """Raise Blocked unless the crawler may connect to address:port."""
        ip = _normal(ipaddress.ip_address(address) if isinstance(address, str) else address)
        listed = [e for e in self.allow if e.matches(ip)]
        if any(e.admits(port, self.ports) for e in listed):
            return
        if listed:
            ports = sorted({str(e.port) if e.port is not None else "/".join(map(str, sorted(self.ports)))
                            for e in listed})
            raise Blocked("blocked-port", f"{ip} is allow-listed on port {', '.join(ports)} only, not {port}")
        kind = non_public_kind(ip)
        if kind:
            raise Blocked("blocked-address", f"{ip} is {kind}; add it to curate.crawl.allow to crawl it")
        if port not in self.ports:
            raise Blocked("blocked-port", f"port {port} is not one of curate.crawl.ports {sorted(self.ports)}")

    def may_use_port(self, port: int) -> bool:
        """False when no address at all may be reached on port (a check needing no DNS)."""
        return port in self.ports or any(e.port in (port, ANY_PORT) for e in self.allow)

    def check_url(self, url: httpx.URL) -> None:
        """The checks that need no DNS: the port, and the address when the host is a literal."""
        port = url.port or (443 if url.scheme == "https" else 80)
        if not self.may_use_port(port):
            raise Blocked("blocked-port", f"port {port} of {url} is not one of curate.crawl.ports {sorted(self.ports)}")
        ip = ip_literal(url.host)
        if ip is not None:
            self.check(ip, port)


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def system_resolver(host: str, port: int) -> list[str]:
    """getaddrinfo's addresses for host (in its order, without repeats)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def checked_addresses(host: str, port: int, policy: AddressPolicy, resolver: Resolver = system_resolver,
                      timeout: float | None = None) -> list[IPAddress]:
    """Resolve host once and check every answer; the addresses to connect to, or Blocked."""
    literal = ip_literal(host)
    if literal is not None:
        answers: Sequence[str] = [str(literal)]
    else:
        try:
            answers = _DNS_POOL.submit(resolver, host, port).result(timeout)
        except FutureTimeout:
            raise httpcore.ConnectTimeout(f"resolving {host} took over {timeout:g}s") from None
        except OSError as exc:  # socket.gaierror: no such name
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    addresses = []
    for answer in answers:
        try:
            ip = ipaddress.ip_address(answer.split("%")[0])  # drop an IPv6 zone (fe80::1%eth0)
        except ValueError:
            raise httpcore.ConnectError(f"{host} resolved to {answer!r}, not an address") from None
        try:
            policy.check(ip, port)
        except Blocked as exc:
            named = f"{host} resolves to {ip}: {exc.detail}" if literal is None else exc.detail
            raise Blocked(exc.reason, named) from None
        addresses.append(ip)
    if not addresses:
        raise httpcore.ConnectError(f"{host} resolved to no address")
    return addresses


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, but every TCP connection goes to a checked address literal."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver = system_resolver):
        self.policy, self.resolver = policy, resolver
        self.inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        started = time.monotonic()
        addresses = checked_addresses(host, port, self.policy, self.resolver, timeout)
        error: Exception | None = None
        for ip in addresses:  # each already checked; connecting to the literal does no DNS
            left = None if timeout is None else max(0.001, timeout - (time.monotonic() - started))
            try:
                return self.inner.connect_tcp(str(ip), port, left, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    def connect_unix_socket(self, *args, **kwargs):
        raise Blocked("blocked-address", "unix sockets are never crawled")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, policy: AddressPolicy, resolver: Resolver, limits: httpx.Limits):
        super().__init__(trust_env=False, limits=limits)  # no proxy from the environment: it would connect for us
        self._pool = httpcore.ConnectionPool(  # as HTTPTransport makes it, plus our network backend
            ssl_context=httpx.create_ssl_context(),  # certifi, or SSL_CERT_FILE/SSL_CERT_DIR when set
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy, resolver),
        )


def guarded_transport(policy: AddressPolicy, resolver: Resolver = system_resolver,
                      limits: httpx.Limits = httpx.Limits()) -> httpx.HTTPTransport:
    """An httpx transport whose every connection passes `policy` (see the module docstring)."""
    return _GuardedTransport(policy, resolver, limits)
