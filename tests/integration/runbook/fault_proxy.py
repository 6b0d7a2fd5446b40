"""A tiny fault-injecting HTTP proxy in front of the moto server, on loopback.

Requests are forwarded unchanged, except that an AWS query-protocol operation (the
``Action=`` of the form body, as Auto Scaling, RDS and SNS use) with faults queued answers
with the next queued fault instead: what real AWS sends when it throttles, fails or
refuses. Each fault is used once; ``seen`` counts the operations that arrived.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web

FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=15.0)
_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass(frozen=True)
class Fault:
    status: int
    code: str
    message: str


THROTTLING = Fault(400, "Throttling", "Rate exceeded")
UNAVAILABLE = Fault(503, "ServiceUnavailable", "Service is unavailable, try again later")
ACCESS_DENIED = Fault(403, "AccessDenied", "User is not authorized to perform this action")


def _error_body(fault: Fault) -> str:
    return (
        '<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
        f"<Error><Type>Sender</Type><Code>{fault.code}</Code>"
        f"<Message>{fault.message}</Message></Error>"
        "<RequestId>fault-proxy</RequestId></ErrorResponse>"
    )


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: defaultdict[str, deque[Fault]] = defaultdict(deque)
        self.seen: Counter[str] = Counter()
        self.url = ""
        self.session: aiohttp.ClientSession | None = None

    def inject(self, operation: str, *faults: Fault) -> None:
        self.faults[operation].extend(faults)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        operation = ""
        if request.method == "POST":
            form = parse_qs(body.decode("utf-8", "replace"))
            operation = form.get("Action", [""])[0]
        self.seen[operation] += 1
        queue = self.faults.get(operation)
        if queue:
            fault = queue.popleft()
            return web.Response(
                status=fault.status, text=_error_body(fault), content_type="text/xml"
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        assert self.session is not None, "the proxy is not running"
        async with self.session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=upstream.status, body=payload, headers=out)


@asynccontextmanager
async def fault_proxy(upstream: str) -> AsyncIterator[FaultProxy]:
    """A running proxy on 127.0.0.1 (a port the kernel picks), stopped on exit."""
    proxy = FaultProxy(upstream)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    async with aiohttp.ClientSession(timeout=FORWARD_TIMEOUT) as session:
        proxy.session = session
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        try:
            await site.start()
            port = runner.addresses[0][1]
            proxy.url = f"http://127.0.0.1:{port}"
            yield proxy
        finally:
            await runner.cleanup()
