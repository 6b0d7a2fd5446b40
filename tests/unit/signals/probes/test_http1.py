"""The lean HTTP/1.1 client behind plain http:// probes, against hand-written responses.

Each test starts a raw loopback server that answers every connection with fixed bytes, so
the framing cases a real server library would never produce on demand (chunked bodies split
anywhere, interim responses, garbage, early close, a server that keeps the connection open)
can be checked exactly.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from orchestrator.engine.observation import FailureKind
from orchestrator.signals.probes import HttpProber, ProbeContext
from orchestrator.signals.probes.http1 import MalformedResponse, build_request, dechunk
from orchestrator.signals.probes.targets import redact

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEAD_OK = b"HTTP/1.1 200 OK\r\n"


class RawServer:
    """Answers each connection with ``handler``; keeps the requests it read."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.handler: Reply | None = None
        self.server: asyncio.Server | None = None
        self.port = 0

    def reply(self, *parts: bytes, close: bool = True, pause: float = 0.0) -> None:
        """Send ``parts`` (with ``pause`` seconds between them), then close or stay open."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for i, part in enumerate(parts):
                if i and pause:
                    await asyncio.sleep(pause)
                writer.write(part)
                await writer.drain()
            if not close:
                await reader.read()  # until the client hangs up
            writer.close()

        self.handler = handler

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            assert self.handler is not None
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()

    def url(self, path: str = "/healthz") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest_asyncio.fixture
async def raw() -> AsyncIterator[RawServer]:
    server = RawServer()
    server.server = await asyncio.start_server(server._handle, "127.0.0.1", 0)
    server.port = server.server.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        server.server.close()
        await server.server.wait_closed()


def prober(ctx: ProbeContext, **kwargs: object) -> HttpProber:
    kwargs.setdefault("timeout", 2.0)
    return HttpProber(ctx, lean=True, **kwargs)  # type: ignore[arg-type]


def length_response(body: bytes, extra: bytes = b"") -> bytes:
    return HEAD_OK + b"Content-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_request_is_a_plain_get_with_our_headers(
    plain_context: ProbeContext, raw: RawServer
) -> None:
    raw.reply(length_response(b"ok"))
    p = prober(plain_context, headers={"X-Probe": "yes", "User-Agent": "custom/1"})
    assert (await p.probe(raw.url("/healthz?deep=1"))).ok
    request = raw.requests[0].decode()
    lines = request.split("\r\n")
    assert lines[0] == "GET /healthz?deep=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{raw.port}" in lines
    assert "Connection: close" in lines and "X-Probe: yes" in lines
    assert "User-Agent: custom/1" in lines and "failoverd-probe" not in request


async def test_status_only_probe_does_not_wait_for_the_body(
    plain_context: ProbeContext, raw: RawServer
) -> None:
    # The head arrives, the body never does and the server keeps the connection open.
    raw.reply(HEAD_OK + b"Content-Length: 1000\r\n\r\n", close=False)
    started = time.monotonic()
    assert (await prober(plain_context, timeout=1.0).probe(raw.url())).ok
    assert time.monotonic() - started < 0.5


async def test_content_length_body_completes_without_waiting_for_close(
    plain_context: ProbeContext, raw: RawServer
) -> None:
    raw.reply(length_response(b'{"status":"ok"}'), close=False)
    result = await prober(plain_context, timeout=1.0, body_contains='"ok"').probe(raw.url())
    assert result.ok, result


async def test_chunked_body_split_across_chunks_and_reads(
    plain_context: ProbeContext, raw: RawServer
) -> None:
    raw.reply(
        HEAD_OK + b"Transfer-Encoding: chunked\r\n\r\n",
        b'7\r\n{"statu\r\n',
        b'8;ext=1\r\ns":"ok"}\r\n',
        b"0\r\n\r\n",
        pause=0.02,
        close=False,
    )
    result = await prober(plain_context, timeout=1.0, body_regex=r'"status":"ok"').probe(raw.url())
    assert result.ok, result


async def test_gzip_body_is_decompressed_for_body_checks(
    plain_context: ProbeContext, raw: RawServer
) -> None:
    raw.reply(length_response(gzip.compress(b"all systems go"), b"Content-Encoding: gzip\r\n"))
    assert (await prober(plain_context, body_contains="systems go").probe(raw.url())).ok


async def test_body_until_close_and_interim_response(
    plain_context: ProbeContext, raw: RawServer
) -> None:
    raw.reply(b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD_OK + b"\r\nready", pause=0.01)
    assert (await prober(plain_context, body_contains="ready").probe(raw.url())).ok


async def test_garbage_is_status(plain_context: ProbeContext, raw: RawServer) -> None:
    raw.reply(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    result = await prober(plain_context).probe(raw.url())
    assert (result.ok, result.reason) == (False, FailureKind.STATUS)
    assert "status line" in result.detail


async def test_endless_head_is_status(plain_context: ProbeContext, raw: RawServer) -> None:
    raw.reply(HEAD_OK + b"X-Filler: " + b"a" * 70_000, close=False)
    result = await prober(plain_context).probe(raw.url())
    assert (result.ok, result.reason) == (False, FailureKind.STATUS)


async def test_close_before_a_response_is_connect(
    plain_context: ProbeContext, raw: RawServer
) -> None:
    raw.reply(b"HTTP/1.1 200")  # cut off inside the status line
    result = await prober(plain_context).probe(raw.url())
    assert (result.ok, result.reason) == (False, FailureKind.CONNECT)


async def test_redirect_is_followed_to_the_final_status(
    plain_context: ProbeContext, raw: RawServer
) -> None:
    raw.reply(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
    result = await prober(plain_context, timeout=1.0).probe(raw.url())
    # It redirects to itself, forever: aiohttp gives up, which is a status failure.
    assert (result.ok, result.reason) == (False, FailureKind.STATUS)
    assert len(raw.requests) > 2


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid header"):
        HttpProber(ProbeContext(), timeout=1.0, headers={"X-A": "1\r\nX-Evil: 2"})
    with pytest.raises(ValueError, match="invalid header"):
        build_request("h", "/", {"Bad Name": "v"}, "ua")


def test_dechunk() -> None:
    raw = b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n"
    assert dechunk(raw, 100) == (b"Wikipedia", True)
    assert dechunk(raw[:12], 100) == (b"Wiki", False)
    assert dechunk(raw, 6) == (b"Wikipe", False)
    with pytest.raises(MalformedResponse, match="chunk size"):
        dechunk(b"zz\r\nabc\r\n", 100)


async def test_url_credentials_become_basic_auth(
    plain_context: ProbeContext, raw: RawServer
) -> None:
    raw.reply(length_response(b"ok"))
    url = raw.url().replace("http://", "http://probe:s3cret@")
    assert (await prober(plain_context).probe(url)).ok
    assert b"Authorization: Basic cHJvYmU6czNjcmV0\r\n" in raw.requests[0]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://probe:s3cret@api.test/x", "http://***@api.test/x"),
        (
            "cannot reach https://u@h:8443/ and http://a:b@c/",
            "cannot reach https://***@h:8443/ and http://***@c/",
        ),
        ("db.test:5432", "db.test:5432"),
        ("mail me at ops@example.com", "mail me at ops@example.com"),
        (
            "https://api.test/health?token=abc&sig=x#top",
            "https://api.test/health?token=***&sig=***#top",
        ),
        ("status 302 to http://h/login?next=/x", "status 302 to http://h/login?next=***"),
    ],
)
def test_redact_hides_url_credentials(text: str, shown: str) -> None:
    assert redact(text) == shown
