"""HTTP(S) probes through the shared aiohttp session, one fresh connection each."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from orchestrator.engine.observation import FailureKind
from orchestrator.signals.probes.context import USER_AGENT
from orchestrator.signals.probes.http1 import (
    ClosedEarly,
    MalformedResponse,
    Response,
    ResponseReader,
    build_request,
)
from orchestrator.signals.probes.result import ProbeResult, clip

if TYPE_CHECKING:
    from orchestrator.policy.models import HttpSignal
    from orchestrator.signals.probes.context import ProbeContext

DEFAULT_MAX_BODY_BYTES = 64 * 1024

_TLS_ERRORS = (
    aiohttp.ClientConnectorCertificateError,
    aiohttp.ClientSSLError,
    aiohttp.ServerFingerprintMismatch,
    ssl.SSLError,
)


@lru_cache(maxsize=65536)
def parse_url(target: str) -> URL:
    """An http(s) URL with a host; ``ValueError`` naming what is wrong otherwise."""
    try:
        url = URL(target)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a valid URL: {target!r} ({exc})") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, got {target!r}")
    if not url.host:
        raise ValueError(f"URL has no host: {target!r}")
    return url


class HttpProber:
    """GET a URL; success when the status is expected and the body checks hold.

    Failure reasons: ``dns`` (name does not resolve), ``connect`` (refused, unreachable,
    connection dropped), ``tls`` (handshake or certificate), ``timeout`` (no complete answer
    within ``timeout``), ``status`` (unexpected status, malformed response, redirect loop),
    ``body`` (``body_contains`` / ``body_regex`` not found in the first ``max_body_bytes``).
    Redirects are followed, as blackbox_exporter does, and the final status is checked;
    unless ``expect_status`` lists a 3xx status: then the first answer is checked as is.
    The body is read only when a body check is configured.

    Plain ``http://`` probes use the lean client in :mod:`.http1` (``lean=False`` forces
    aiohttp); ``https://`` probes and redirects go through the context's aiohttp session.
    """

    type = "http"

    def __init__(
        self,
        context: ProbeContext,
        *,
        timeout: float,
        expect_status: Iterable[int] = (200,),
        body_contains: str | None = None,
        body_regex: str | None = None,
        tls_verify: bool = True,
        headers: Mapping[str, str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        lean: bool = True,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        self._context = context
        self.timeout = timeout
        self.expect_status = frozenset(expect_status)
        if not self.expect_status:
            raise ValueError("expect_status must list at least one status code")
        self.body_contains = body_contains
        try:
            self.body_regex = re.compile(body_regex) if body_regex is not None else None
        except re.error as exc:
            raise ValueError(f"body_regex is not a valid regular expression: {exc}") from None
        self.tls_verify = tls_verify
        self.headers = dict(headers or {})
        self.max_body_bytes = max_body_bytes
        self._needs_body = body_contains is not None or body_regex is not None
        self._expected = ",".join(str(s) for s in sorted(self.expect_status))
        self.lean = lean
        # Listing a 3xx status means "expect this redirect", so it is checked, not followed.
        self.follow_redirects = not any(300 <= s < 400 for s in self.expect_status)
        build_request("check", "/", self.headers, USER_AGENT)  # refuse bad headers now
        # Per target, built once: the request bytes, host and port to connect to.
        self._requests: dict[str, tuple[bytes, str, int]] = {}

    @classmethod
    def from_signal(cls, context: ProbeContext, signal: HttpSignal, timeout: float) -> HttpProber:
        return cls(
            context,
            timeout=timeout,
            expect_status=signal.expect_status,
            body_contains=signal.body_contains,
            body_regex=signal.body_regex,
            tls_verify=signal.tls_verify,
            headers=signal.headers,
        )

    def validate(self, target: str) -> None:
        parse_url(target)

    async def probe(self, target: str) -> ProbeResult:
        # Latency is real elapsed network time, whatever clock the daemon runs on.
        start = time.perf_counter()
        try:
            url = parse_url(target)
        except ValueError as exc:
            return ProbeResult.failure(FailureKind.CONNECT, 0.0, str(exc))
        try:
            async with asyncio.timeout(self.timeout):
                if self.lean and url.scheme == "http":
                    response = await self._lean_get(url, target)
                    redirect = 300 <= response.status < 400 and response.location
                    if not (redirect and self.follow_redirects):
                        return self._judge(response.status, response.body, start)
                    # Redirects are rare for health endpoints: follow them the general way.
                status, body = await self._aiohttp_get(url)
                return self._judge(status, body, start)
        except (aiohttp.ClientConnectorDNSError, socket.gaierror) as exc:
            return _fail(FailureKind.DNS, start, exc)
        except _TLS_ERRORS as exc:
            return _fail(FailureKind.TLS, start, exc)
        except aiohttp.ClientConnectorError as exc:
            return _fail(FailureKind.CONNECT, start, exc)
        except TimeoutError:  # before OSError: TimeoutError is one
            return ProbeResult.failure(
                FailureKind.TIMEOUT,
                time.perf_counter() - start,
                f"no complete answer within {self.timeout:g}s",
            )
        except (aiohttp.ClientResponseError, aiohttp.RedirectClientError, MalformedResponse) as exc:
            return _fail(FailureKind.STATUS, start, exc)
        except (aiohttp.ClientError, ClosedEarly, OSError) as exc:
            return _fail(FailureKind.CONNECT, start, exc)

    async def _lean_get(self, url: URL, target: str) -> Response:
        plan = self._requests.get(target)
        if plan is None:
            headers = self.headers
            if url.user is not None and "authorization" not in {h.lower() for h in headers}:
                # Credentials in the URL mean basic auth, as aiohttp (and curl) treat them.
                pair = f"{url.user}:{url.password or ''}".encode()
                headers = {**headers, "Authorization": "Basic " + base64.b64encode(pair).decode()}
            request = build_request(
                url.host_port_subcomponent or "", url.raw_path_qs, headers, USER_AGENT
            )
            if len(self._requests) >= 65536:
                self._requests.clear()  # only ad-hoc use could get here; stay bounded
            # parse_url guarantees a host; yarl fills in the scheme's default port.
            plan = self._requests[target] = (request, url.raw_host or "", url.port or 80)
        request, host, port = plan
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        reader = ResponseReader(request, waiter, self._needs_body, self.max_body_bytes)
        transport, _ = await loop.create_connection(lambda: reader, host, port)
        try:
            return await waiter
        finally:
            transport.close()

    async def _aiohttp_get(self, url: URL) -> tuple[int, bytes | None]:
        ssl_ctx: ssl.SSLContext | bool = True
        if url.scheme == "https":
            ssl_ctx = self._context.ssl_context(self.tls_verify)
        async with self._context.session.get(
            url,
            headers=self.headers or None,
            ssl=ssl_ctx,
            allow_redirects=self.follow_redirects,
        ) as resp:
            if resp.status not in self.expect_status or not self._needs_body:
                return resp.status, None
            return resp.status, await _read_bounded(resp.content, self.max_body_bytes)

    def _judge(self, status: int, body: bytes | None, start: float) -> ProbeResult:
        if status not in self.expect_status:
            return ProbeResult.failure(
                FailureKind.STATUS,
                time.perf_counter() - start,
                f"status {status}, expected {self._expected}",
            )
        if self._needs_body:
            text = (body or b"").decode("utf-8", errors="replace")
            problem = self._body_problem(text)
            if problem is not None:
                return ProbeResult.failure(FailureKind.BODY, time.perf_counter() - start, problem)
        return ProbeResult.success(time.perf_counter() - start)

    def _body_problem(self, text: str) -> str | None:
        if self.body_contains is not None and self.body_contains not in text:
            return clip(f"body does not contain {self.body_contains!r}")
        if self.body_regex is not None and self.body_regex.search(text) is None:
            return clip(f"body does not match /{self.body_regex.pattern}/")
        return None


async def _read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """At most ``limit`` bytes of the body: a huge or endless body must not stall a probe."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _fail(reason: FailureKind, start: float, exc: BaseException) -> ProbeResult:
    text = str(exc) or type(exc).__name__
    return ProbeResult.failure(reason, time.perf_counter() - start, clip(text))
