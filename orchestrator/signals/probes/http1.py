"""A minimal HTTP/1.1 GET over a fresh TCP connection, for plain ``http://`` probes.

Why not aiohttp here: a probe opens a new connection every time, sends one fixed request
and reads one response, and the daemon runs thousands of them. aiohttp's general machinery
(connector, happy-eyeballs, request/response objects, stream readers) costs more CPU per
probe than the probe's own networking; measured in ``bench/probes.py`` it kept us under
twice blackbox_exporter's probes per CPU-second. This client is an asyncio ``Protocol``
(lighter than streams: no reader/writer objects, no extra wake-ups) that parses only what a
probe checks: the status line, the framing headers and at most ``body_limit`` body bytes.

Scope, on purpose: ``GET``, ``Connection: close``, no proxies, no keep-alive. ``https://``
and redirects are left to aiohttp by the caller. Responses may use Content-Length, chunked
framing or end at close, and may be gzip/deflate-compressed (we never ask for it).
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from typing import cast

MAX_HEAD_BYTES = 64 * 1024


class MalformedResponse(Exception):
    """The peer answered, but not with an HTTP/1.x response we can read."""


class ClosedEarly(Exception):
    """The connection ended before a complete response head arrived."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    location: str | None
    body: bytes  # decoded (de-chunked, decompressed), at most the body limit


def build_request(host_header: str, target: str, headers: dict[str, str], agent: str) -> bytes:
    """The request bytes, built once per target. ``ValueError`` for header injection."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host_header}",
        f"User-Agent: {agent}",
        "Accept: */*",
        "Connection: close",
    ]
    overridden = {name.lower() for name in headers}
    lines = [
        line
        for line in lines
        if line.split(":", 1)[0].lower() not in overridden or line.startswith("GET ")
    ]
    for name, value in headers.items():
        if not name or any(c in name for c in ":\r\n \t") or any(c in value for c in "\r\n"):
            raise ValueError(f"invalid header {name!r}: names and values must be one line")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ResponseReader(asyncio.Protocol):
    """Sends ``request`` once connected and resolves ``waiter`` with a :class:`Response`
    (or an exception) as soon as enough has been read; closes the transport when done."""

    __slots__ = (
        "_body_limit",
        "_buffer",
        "_head",
        "_need_body",
        "_request",
        "_transport",
        "waiter",
    )

    def __init__(
        self, request: bytes, waiter: asyncio.Future[Response], need_body: bool, body_limit: int
    ) -> None:
        self._request = request
        self.waiter = waiter
        self._need_body = need_body
        self._body_limit = body_limit
        self._buffer = bytearray()
        self._head: tuple[int, dict[bytes, bytes]] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection always hands a protocol a full (read/write) Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.waiter.done():
            return
        self._buffer += data
        try:
            if self._head is None and not self._parse_head():
                return
            self._maybe_finish(eof=False)
        except MalformedResponse as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        if not self.waiter.done():
            try:
                if self._head is None and not self._parse_head():
                    raise ClosedEarly("connection closed before a complete response")
                self._maybe_finish(eof=True)
            except (MalformedResponse, ClosedEarly) as exc:
                self._fail(exc)
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.waiter.done():
            if self._head is not None and exc is None:
                self._finish()
            elif exc is not None:
                self.waiter.set_exception(exc)
            else:
                self.waiter.set_exception(
                    ClosedEarly("connection closed before a complete response")
                )

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: Exception) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def _parse_head(self) -> bool:
        """Parse the status line and headers once they are complete; skip 1xx heads."""
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise MalformedResponse("response head larger than 64 KiB")
                return False
            lines = bytes(self._buffer[:end]).split(b"\r\n")
            del self._buffer[: end + 4]
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise MalformedResponse(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
            status = int(parts[1])
            if not 100 <= status <= 599:
                raise MalformedResponse(f"status {status} out of range")
            if 100 <= status < 200 and status != 101:
                continue  # an interim response (100 Continue, 103 Early Hints)
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise MalformedResponse(f"malformed header line: {line[:60]!r}")
                headers[name.strip().lower()] = value.strip()
            self._head = (status, headers)
            return True

    def _maybe_finish(self, eof: bool) -> None:
        assert self._head is not None
        status, headers = self._head
        if not self._need_body or status in (204, 304) or eof:
            self._finish()
            return
        length = headers.get(b"content-length")
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body, complete = dechunk(bytes(self._buffer), self._body_limit)
            if complete or len(body) >= self._body_limit:
                self._finish()
        elif length is not None:
            try:
                expected = int(length)
            except ValueError:
                raise MalformedResponse(f"bad Content-Length {length[:20]!r}") from None
            if len(self._buffer) >= min(expected, self._body_limit):
                self._finish()
        elif len(self._buffer) >= self._body_limit:
            self._finish()

    def _finish(self) -> None:
        assert self._head is not None
        status, headers = self._head
        body = b""
        if self._need_body:
            try:
                body = _decode_body(bytes(self._buffer), headers, self._body_limit)
            except MalformedResponse as exc:
                self._fail(exc)
                return
        location = headers.get(b"location")
        if not self.waiter.done():
            self.waiter.set_result(
                Response(status, location.decode("latin-1") if location else None, body)
            )
        self.close()


def _decode_body(raw: bytes, headers: dict[bytes, bytes], limit: int) -> bytes:
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        raw, _ = dechunk(raw, limit)
    else:
        length = headers.get(b"content-length")
        if length is not None and length.isdigit():
            raw = raw[: int(length)]
    encoding = headers.get(b"content-encoding", b"identity").lower()
    if encoding in (b"gzip", b"x-gzip", b"deflate"):
        wbits = 16 + zlib.MAX_WBITS if encoding != b"deflate" else zlib.MAX_WBITS
        try:
            decoder = zlib.decompressobj(wbits)
            # max_length bounds the output: a small compressed body cannot blow up memory.
            return decoder.decompress(raw, limit)
        except zlib.error as exc:
            raise MalformedResponse(
                f"cannot decompress a {encoding.decode()} body: {exc}"
            ) from None
    if encoding != b"identity":
        raise MalformedResponse(f"unsupported Content-Encoding {encoding.decode('latin-1')!r}")
    return raw[:limit]


def dechunk(raw: bytes, limit: int) -> tuple[bytes, bool]:
    """Decode chunked framing up to ``limit`` bytes: (body so far, whether the last chunk
    arrived). Lenient: a chunk cut short keeps what arrived."""
    out = bytearray()
    pos = 0
    while pos < len(raw) and len(out) < limit:
        end = raw.find(b"\r\n", pos)
        if end < 0:
            break
        size_text = raw[pos:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise MalformedResponse(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            return bytes(out), True
        out += raw[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out[:limit]), False
