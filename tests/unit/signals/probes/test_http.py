"""HTTP(S) probes against real loopback servers: every failure reason, and the checks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.engine.observation import FailureKind
from orchestrator.signals.probes import HttpProber, ProbeContext
from tests.unit.signals.probes.conftest import Pki, server_ssl

BIG_LIMIT = 4096
PEERS = web.AppKey("peers", list[int])  # client ports seen by /ok


def _app() -> web.Application:
    peers: list[int] = []

    async def ok(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            peers.append(peer[1])
        return web.Response(text='{"status":"ok","version":"1.2.3"}')

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="maintenance")

    async def big(request: web.Request) -> web.Response:
        # The marker sits after the probe's body limit: a bounded read must not see it.
        return web.Response(text="x" * (BIG_LIMIT * 4) + "MARKER")

    async def needs_header(request: web.Request) -> web.Response:
        if request.headers.get("X-Probe") != "yes":
            return web.Response(status=403)
        return web.Response(text="hello probe")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    app = web.Application()
    app[PEERS] = peers
    app.router.add_get("/ok", ok)
    app.router.add_get("/unavailable", unavailable)
    app.router.add_get("/big", big)
    app.router.add_get("/needs-header", needs_header)
    app.router.add_get("/moved", moved)
    return app


@pytest_asyncio.fixture
async def http_server() -> AsyncIterator[TestServer]:
    async with TestServer(_app(), host="127.0.0.1", port=0) as server:
        yield server


@pytest_asyncio.fixture
async def https_server(pki: Pki) -> AsyncIterator[str]:
    """An HTTPS server with a certificate from the test CA; yields its base URL."""
    runner = web.AppRunner(_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl(pki.valid))
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


@pytest.fixture(params=[True, False], ids=["http1", "aiohttp"])
def lean(request: pytest.FixtureRequest) -> bool:
    """Plain http:// probes run through both clients: the lean one and aiohttp."""
    return bool(request.param)


def prober(ctx: ProbeContext, **kwargs: object) -> HttpProber:
    kwargs.setdefault("timeout", 2.0)
    return HttpProber(ctx, **kwargs)  # type: ignore[arg-type]


async def test_success_checks_status_and_body(
    lean: bool, plain_context: ProbeContext, http_server: TestServer
) -> None:
    p = prober(
        plain_context, lean=lean, body_contains='"status":"ok"', body_regex=r'"version":"1\.\d+'
    )
    result = await p.probe(_url(http_server, "/ok"))
    assert result.ok, result
    assert result.reason is None
    assert 0 < result.latency < 2.0


async def test_each_probe_opens_a_new_connection(
    lean: bool, plain_context: ProbeContext, http_server: TestServer
) -> None:
    p = prober(plain_context, lean=lean)
    for _ in range(3):
        assert (await p.probe(_url(http_server, "/ok"))).ok
    peers = http_server.app[PEERS]
    assert len(set(peers)) == 3, f"client ports {peers}: a connection was reused"


async def test_unexpected_status_is_status(
    lean: bool, plain_context: ProbeContext, http_server: TestServer
) -> None:
    result = await prober(plain_context, lean=lean).probe(_url(http_server, "/unavailable"))
    assert not result.ok
    assert result.reason is FailureKind.STATUS
    assert "503" in result.detail


async def test_expected_status_set_accepts_listed_codes(
    lean: bool, plain_context: ProbeContext, http_server: TestServer
) -> None:
    p = prober(plain_context, lean=lean, expect_status=[200, 503])
    assert (await p.probe(_url(http_server, "/unavailable"))).ok


async def test_missing_substring_is_body(
    lean: bool, plain_context: ProbeContext, http_server: TestServer
) -> None:
    result = await prober(plain_context, lean=lean, body_contains='"status":"down"').probe(
        _url(http_server, "/ok")
    )
    assert (result.ok, result.reason) == (False, FailureKind.BODY)
    assert "status" in result.detail


async def test_regex_mismatch_is_body(
    lean: bool, plain_context: ProbeContext, http_server: TestServer
) -> None:
    result = await prober(plain_context, lean=lean, body_regex=r'"version":"2\.').probe(
        _url(http_server, "/ok")
    )
    assert (result.ok, result.reason) == (False, FailureKind.BODY)


async def test_body_is_read_only_up_to_the_limit(
    lean: bool, plain_context: ProbeContext, http_server: TestServer
) -> None:
    bounded = prober(plain_context, lean=lean, body_contains="MARKER", max_body_bytes=BIG_LIMIT)
    result = await bounded.probe(_url(http_server, "/big"))
    assert (result.ok, result.reason) == (False, FailureKind.BODY)
    roomy = prober(plain_context, lean=lean, body_contains="MARKER", max_body_bytes=BIG_LIMIT * 8)
    assert (await roomy.probe(_url(http_server, "/big"))).ok


async def test_custom_headers_are_sent(
    lean: bool, plain_context: ProbeContext, http_server: TestServer
) -> None:
    url = _url(http_server, "/needs-header")
    assert (await prober(plain_context, lean=lean).probe(url)).reason is FailureKind.STATUS
    assert (await prober(plain_context, lean=lean, headers={"X-Probe": "yes"}).probe(url)).ok


async def test_redirects_are_followed(
    lean: bool, plain_context: ProbeContext, http_server: TestServer
) -> None:
    result = await prober(plain_context, lean=lean, body_contains="status").probe(
        _url(http_server, "/moved")
    )
    assert result.ok, result


async def test_an_expected_redirect_is_checked_not_followed(
    lean: bool, plain_context: ProbeContext, http_server: TestServer
) -> None:
    url = _url(http_server, "/moved")
    assert (await prober(plain_context, lean=lean, expect_status=[302]).probe(url)).ok
    result = await prober(plain_context, lean=lean, expect_status=[301]).probe(url)
    assert (result.ok, result.reason) == (False, FailureKind.STATUS)
    assert "status 302" in result.detail


async def test_refused_port_is_connect(
    lean: bool, plain_context: ProbeContext, refused_port: int
) -> None:
    result = await prober(plain_context, lean=lean).probe(f"http://127.0.0.1:{refused_port}/")
    assert (result.ok, result.reason) == (False, FailureKind.CONNECT)


async def test_unresolvable_name_is_dns(lean: bool, plain_context: ProbeContext) -> None:
    result = await prober(plain_context, lean=lean).probe("http://no-such-host.failoverd.invalid/")
    assert (result.ok, result.reason) == (False, FailureKind.DNS)


async def test_silent_server_is_timeout_within_the_bound(
    lean: bool, plain_context: ProbeContext, silent_port: int
) -> None:
    started = time.monotonic()
    result = await prober(plain_context, lean=lean, timeout=0.3).probe(
        f"http://127.0.0.1:{silent_port}/"
    )
    elapsed = time.monotonic() - started
    assert (result.ok, result.reason) == (False, FailureKind.TIMEOUT)
    assert 0.3 <= elapsed < 1.0
    assert result.latency == pytest.approx(0.3, abs=0.2)


async def test_https_untrusted_certificate_fails_tls_when_verifying(
    plain_context: ProbeContext, https_server: str
) -> None:
    result = await prober(plain_context).probe(f"{https_server}/ok")
    assert (result.ok, result.reason) == (False, FailureKind.TLS)
    assert "certificate" in result.detail.lower()


async def test_https_without_verification_accepts_the_certificate(
    plain_context: ProbeContext, https_server: str
) -> None:
    result = await prober(plain_context, tls_verify=False, body_contains="ok").probe(
        f"{https_server}/ok"
    )
    assert result.ok, result


async def test_https_verifies_against_a_trusted_ca(
    probe_context: ProbeContext, https_server: str
) -> None:
    assert (await prober(probe_context).probe(f"{https_server}/ok")).ok


async def test_plain_http_to_a_tls_port_is_not_a_success(
    plain_context: ProbeContext, https_server: str
) -> None:
    result = await prober(plain_context, timeout=1.0).probe(
        https_server.replace("https://", "http://") + "/ok"
    )
    # The TLS server hangs up on the plain request: the connection failed, not the status.
    assert (result.ok, result.reason) == (False, FailureKind.CONNECT)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("ftp://example.com/", "http:// or https://"),
        ("example.com/healthz", "http:// or https://"),
        ("http:///nohost", "no host"),
    ],
)
def test_malformed_urls_are_refused(target: str, message: str) -> None:
    p = HttpProber(ProbeContext(), timeout=1.0)
    with pytest.raises(ValueError, match=message):
        p.validate(target)


def test_bad_settings_are_refused() -> None:
    ctx = ProbeContext()
    with pytest.raises(ValueError, match="timeout must be positive"):
        HttpProber(ctx, timeout=0)
    with pytest.raises(ValueError, match="body_regex"):
        HttpProber(ctx, timeout=1.0, body_regex="(unclosed")
    with pytest.raises(ValueError, match="expect_status"):
        HttpProber(ctx, timeout=1.0, expect_status=[])


async def test_context_must_be_open() -> None:
    ctx = ProbeContext()
    with pytest.raises(RuntimeError, match="not open"):
        _ = ctx.session
    async with ctx:
        assert not ctx.session.closed
        await ctx.open()  # idempotent
    await ctx.close()  # idempotent
    with pytest.raises(RuntimeError, match="not open"):
        _ = ctx.session
