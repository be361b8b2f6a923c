"""Decode a Content-Encoding (gzip, deflate, br) chunk by chunk with a cap on size and ratio.

    from tasks.bounded_decode import BoundedDecoder, ACCEPT_ENCODING
    decoder = BoundedDecoder(response.headers.get("content-encoding", ""), max_output=10_000_000, max_ratio=100)
    for raw in response.iter_raw():
        body += decoder.feed(raw)         # TooLarge / DecompressionBomb before memory grows,
                                          # BodyDecodeError on a broken stream
    body += decoder.flush()

httpx's own decoders inflate each network chunk whole: 64 KiB of gzip can become 64 MiB and a
few hundred bytes of brotli can become gigabytes before a caller sees the first byte. Here
every step asks zlib (max_length) or brotli (output_buffer_limit) for at most what is left of
the cap, so memory stays near `max_output`. A body whose decoded size passes RATIO_FLOOR at
more than `max_ratio` times the encoded bytes read so far is a DecompressionBomb; real pages
compress 3-20x. Encodings we cannot decode (compress, zstd) pass through raw, still capped.

Tests: .venv/bin/python -m pytest -q tests/test_crawl_safety.py
"""

from __future__ import annotations

import zlib
from typing import Iterator

RATIO_FLOOR = 1 << 20  # below 1 MiB decoded the ratio is not judged: small pages can compress very well
STEP = 256 << 10  # most bytes one decompress call may return, so the caps are checked often

try:
    import brotli

    brotli.Decompressor().process(b"", output_buffer_limit=1)  # the bounded API (brotli >= 1.2)
except (ImportError, TypeError, AttributeError):  # pragma: no cover - depends on what is installed
    brotli = None

ACCEPT_ENCODING = "gzip, deflate, br" if brotli else "gzip, deflate"


class TooLarge(Exception):
    pass


class DecompressionBomb(Exception):
    pass


class BodyDecodeError(Exception):
    """The body is not valid in its Content-Encoding (a broken gzip stream)."""


_DECODE_ERRORS = (zlib.error, brotli.error) if brotli else (zlib.error,)


class _Zlib:
    """gzip (wbits 31) or deflate (zlib-wrapped, falling back to raw as browsers and httpx do)."""

    def __init__(self, wbits: int):
        self.wbits, self.started = wbits, False
        self.d = zlib.decompressobj(wbits)

    def feed(self, data: bytes, limit: int) -> bytes:
        data = self.d.unconsumed_tail + data if self.d.unconsumed_tail else data
        if self.d.eof:  # anything after the end of the stream is ignored, as httpx does
            return b""
        try:
            out = self.d.decompress(data, limit)
        except zlib.error:
            if self.wbits != zlib.MAX_WBITS or self.started:
                raise
            self.wbits, self.d = -zlib.MAX_WBITS, zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate
            out = self.d.decompress(data, limit)
        self.started = True
        return out

    def more(self) -> bool:
        return bool(self.d.unconsumed_tail) and not self.d.eof


class _Brotli:
    def __init__(self):
        self.d = brotli.Decompressor()

    def feed(self, data: bytes, limit: int) -> bytes:
        return self.d.process(data, output_buffer_limit=limit)

    def more(self) -> bool:
        return not self.d.can_accept_more_data()  # output is waiting: call again with b""


def _stage(encoding: str):
    if encoding in ("gzip", "x-gzip"):
        return _Zlib(zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        return _Zlib(zlib.MAX_WBITS)
    if encoding == "br" and brotli:
        return _Brotli()
    return None


class BoundedDecoder:
    """Decodes one body; `decoded` is False when an encoding is unknown and bytes pass raw."""

    def __init__(self, content_encoding: str, max_output: int, max_ratio: float):
        encodings = [e.strip().lower() for e in content_encoding.split(",") if e.strip()]
        encodings = [e for e in encodings if e != "identity"]
        stages = [_stage(e) for e in reversed(encodings)]  # the last applied is undone first
        self.decoded = all(s is not None for s in stages)
        self.stages = stages if self.decoded else []
        self.max_output, self.max_ratio = max_output, max_ratio
        self.raw_in = self.produced = 0

    def feed(self, raw: bytes) -> bytes:
        return b"".join(self.pieces(raw))

    def flush(self) -> bytes:
        return self.feed(b"") if self.stages else b""

    def pieces(self, raw: bytes) -> Iterator[bytes]:
        """feed(), as pieces of at most STEP bytes (the caller holds no more than it keeps)."""
        self.raw_in += len(raw)
        try:
            yield from self._push(0, raw)
        except _DECODE_ERRORS as exc:
            raise BodyDecodeError(f"{type(exc).__name__}: {exc}") from None

    def _budget(self) -> int:
        return max(1, min(STEP, self.max_output - self.produced + 1))  # one byte over is enough to know

    def _push(self, i: int, data: bytes) -> Iterator[bytes]:
        if i == len(self.stages):
            self._count(len(data))
            yield data
            return
        stage = self.stages[i]
        piece = stage.feed(data, self._budget())
        while True:
            if piece:
                yield from self._push(i + 1, piece)
            if not stage.more():
                return
            piece = stage.feed(b"", self._budget())

    def _count(self, n: int) -> None:
        self.produced += n
        if self.produced > self.max_output:
            raise TooLarge(f"decoded body over {self.max_output} bytes")
        if self.stages and self.produced > RATIO_FLOOR and self.produced > self.max_ratio * self.raw_in:
            raise DecompressionBomb(f"{self.raw_in} encoded bytes decoded to over {self.produced} "
                                    f"(more than {self.max_ratio:g}x)")
