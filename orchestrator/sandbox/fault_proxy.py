"""A loopback HTTP proxy in front of moto that can throttle one AWS service on demand.

The daemon's ``aws.endpoint_url`` points here; every request (method, path, query, headers,
body) is forwarded to moto and its response relayed unchanged, except while a service is
throttled: then the proxy answers itself with AWS's own throttling error for that protocol,
so botocore raises ``ClientError`` with code ``Throttling`` (XML protocols) or
``ThrottlingException`` (JSON protocols) exactly as it would against AWS, and the daemon's
retries are exercised for real.

The service is read from the SigV4 ``Authorization`` header's credential scope
(``.../<region>/<service>/aws4_request``); a request without one under Route 53's REST root
``/2013-04-01/`` counts as ``route53``.

``set_control_plane_down(region)`` takes down every AWS API the sandbox serves for one
region — a request whose credential scope names it — and, when that region is the home of
the global control planes (us-east-1), Route 53's API, IAM, STS's global endpoint, CloudFront
and Organizations with it (they sign for us-east-1). Each API fails the way it did in the
us-east-1 events of December 2021 (network congestion: elevated errors and latencies, Route
53's API impaired for hours while DNS answers went on) and October 2025 (DynamoDB's endpoint
name resolving to nothing, EC2 launches refused, IAM and STS errors):

* Route 53, CloudFront, Organizations: the request is held unanswered (a time-out for the
  client) until the fault ends, when it goes through late;
* DynamoDB: the connection is closed without an answer (a client that cannot resolve or
  reach the endpoint);
* EC2: ``RequestLimitExceeded`` (HTTP 503), as launches were refused in 2025;
* IAM, STS and every other API (RDS, Auto Scaling, ECS, CloudWatch, SNS...): 503
  ``ServiceUnavailable`` in the protocol's own error shape.

Data planes elsewhere are untouched, and so is everything that does not pass the proxy (the
sandbox's DNS answers and region endpoints).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from orchestrator.sandbox.aws_faults import AwsChaos
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.fault_proxy")

UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=3)
_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[a-z0-9-]+/([a-z0-9-]+)/aws4_request")
_SCOPE_REGION = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/[a-z0-9-]+/aws4_request")
# control-plane-down: how each API fails (see the module docstring); the rest answer 503.
HELD_SERVICES = frozenset({"route53", "cloudfront", "organizations"})
CLOSED_SERVICES = frozenset({"dynamodb"})
HOLD_CAP = 300.0  # seconds a held request waits at most
_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
ROUTE53_ROOT = "/2013-04-01/"
# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones aiohttp recomputes for the new message.
_NOT_FORWARDED = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
    )
)


class ThrottleSpecError(ValueError):
    """A throttle request that cannot be understood; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class ThrottleSpec:
    """``service`` throttled for the next ``count`` calls, or until turned off (None);
    ``service`` None turns throttling off."""

    service: str | None
    count: int | None = None


def parse_throttle(arg: str) -> ThrottleSpec:
    """``route53`` (until off), ``route53:5`` (the next 5 calls), ``off`` or ``none``."""
    text = arg.strip().lower()
    if text in ("off", "none"):
        return ThrottleSpec(None)
    service, sep, count_text = text.partition(":")
    if not _SERVICE_NAME.match(service):
        raise ThrottleSpecError(
            f"throttle: expected an AWS service name (route53), optionally :<count>, or off;"
            f" got {arg!r}"
        )
    if not sep:
        return ThrottleSpec(service)
    if not count_text.isdigit() or int(count_text) < 1:
        raise ThrottleSpecError(
            f"throttle: the count after ':' must be a positive integer, got {count_text!r}"
        )
    return ThrottleSpec(service, int(count_text))


def service_of(request: web.Request) -> str | None:
    """The AWS service a request is for (see the module docstring), or None."""
    found = _SCOPE.search(request.headers.get("Authorization", ""))
    if found:
        return found[1]
    if request.path.startswith(ROUTE53_ROOT):
        return "route53"
    return None


def throttling_response(request: web.Request) -> web.Response:
    """AWS's throttling error in the request's protocol: JSON for ``x-amz-json`` requests,
    otherwise the XML ``ErrorResponse`` that REST-XML and query protocols share."""
    request_id = str(uuid.uuid4())
    headers = {"x-amzn-RequestId": request_id}
    if "x-amz-json" in request.headers.get("Content-Type", ""):
        headers["x-amzn-ErrorType"] = "ThrottlingException"
        return web.json_response(
            {"__type": "ThrottlingException", "message": "Rate exceeded"},
            status=400,
            headers=headers,
            content_type="application/x-amz-json-1.1",
        )
    body = (
        '<?xml version="1.0"?>\n'
        "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
        "<Message>Rate exceeded</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return web.Response(status=400, text=body, content_type="text/xml", headers=headers)


def error_response(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """An AWS error in the request's protocol: JSON for ``x-amz-json`` requests, EC2's own
    ``Response/Errors`` for EC2's query API, else the ``ErrorResponse`` of REST-XML and query
    protocols."""
    request_id = str(uuid.uuid4())
    headers = {"x-amzn-RequestId": request_id}
    if "x-amz-json" in request.headers.get("Content-Type", ""):
        headers["x-amzn-ErrorType"] = code
        return web.json_response(
            {"__type": code, "message": message},
            status=status,
            headers=headers,
            content_type=request.headers.get("Content-Type", "application/x-amz-json-1.1"),
        )
    if service_of(request) == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
    else:
        body = (
            '<?xml version="1.0"?>\n'
            f"<ErrorResponse><Error><Type>Receiver</Type><Code>{code}</Code>"
            f"<Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    return web.Response(status=status, text=body, content_type="text/xml", headers=headers)


class FaultProxy:
    """The proxy on 127.0.0.1 (kernel-chosen port) in front of ``upstream``. ``set_throttle``
    is atomic (one event loop) and idempotent; ``stop`` is idempotent. Upstream calls are
    bounded by :data:`UPSTREAM_TIMEOUT`; an upstream failure is answered 502, never raised."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.endpoint_url = ""
        self.chaos = AwsChaos()  # aws-errors and blackhole (orchestrator.sandbox.aws_faults)
        self.throttled: ThrottleSpec = ThrottleSpec(None)
        self.remaining: int | None = None
        self.throttled_calls = 0
        self.control_plane_down: str | None = None  # a region whose APIs fail
        self.refused_calls = 0
        self._control_plane_up = asyncio.Event()
        self._control_plane_up.set()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # auto_decompress off: bodies are relayed byte for byte with their Content-Encoding.
        self._http = aiohttp.ClientSession(timeout=UPSTREAM_TIMEOUT, auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.endpoint_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        http, self._http = self._http, None
        if runner is not None:
            await runner.cleanup()
        if http is not None:
            await http.close()

    def set_throttle(self, spec: ThrottleSpec) -> str:
        """Apply ``spec`` (replacing any earlier one); a sentence saying what is now true."""
        self.throttled = spec
        self.remaining = spec.count
        log.info("sandbox_throttle_set", service=spec.service, count=spec.count)
        if spec.service is None:
            return "throttling off: every AWS call reaches the emulator"
        if spec.count is None:
            return f"{spec.service}: every call is throttled until `throttle off`"
        return f"{spec.service}: the next {spec.count} calls are throttled"

    def set_control_plane_down(self, region: str | None) -> str:
        """Fail every API of ``region`` as the module docstring says (None: none). Held
        requests go through when it ends. A sentence saying what is now true."""
        self.control_plane_down = region
        if region is None:
            self._control_plane_up.set()
            log.info("sandbox_control_plane_up")
            return "control planes up: every AWS API answers again"
        self._control_plane_up.clear()
        log.info("sandbox_control_plane_down", region=region)
        return (
            f"{region}: every AWS API for {region} fails (Route 53, CloudFront, Organizations"
            " time out; DynamoDB closes connections; EC2 answers RequestLimitExceeded; the rest"
            " 503)" + (", Route 53's API and IAM included" if region == "us-east-1" else "")
        )

    def _down_for(self, request: web.Request) -> str | None:
        """The service of a request that the control-plane-down fault refuses, or None."""
        region = self.control_plane_down
        if region is None:
            return None
        found = _SCOPE_REGION.search(request.headers.get("Authorization", ""))
        service = service_of(request) or "unknown"
        signed_for = found[1] if found else ("us-east-1" if service == "route53" else None)
        return service if signed_for == region else None

    async def _refuse(self, request: web.Request, service: str) -> web.StreamResponse:
        self.refused_calls += 1
        if service in HELD_SERVICES:
            # Unanswered: the client's read time-out ends it, or the fault's end lets it on.
            try:
                async with asyncio.timeout(HOLD_CAP):
                    while not self._control_plane_up.is_set():
                        transport = request.transport
                        if transport is None or transport.is_closing():
                            return web.Response(status=504)  # nobody waits for it now
                        try:
                            async with asyncio.timeout(0.5):
                                await self._control_plane_up.wait()
                        except TimeoutError:
                            continue
            except TimeoutError:
                return web.Response(status=504, text="fault proxy: held past its cap")
            return await self._forward(request, service)
        if service in CLOSED_SERVICES:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never reaches the client
        code = "RequestLimitExceeded" if service == "ec2" else "ServiceUnavailable"
        return error_response(request, 503, code, "Service Unavailable")

    def _take_throttle(self, service: str | None) -> bool:
        if service is None or service != self.throttled.service:
            return False
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.throttled, self.remaining = ThrottleSpec(None), None
        self.throttled_calls += 1
        return True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        service = service_of(request)
        faulted = await self.chaos.intercept(request, service)
        if faulted is not None:
            return faulted
        if self._take_throttle(service):
            log.info("sandbox_call_throttled", service=service, path=request.path)
            return throttling_response(request)
        down = self._down_for(request)
        if down is not None:
            return await self._refuse(request, down)
        return await self._forward(request, service)

    async def _forward(self, request: web.Request, service: str | None) -> web.StreamResponse:
        assert self._http is not None, "FaultProxy.start() was not called"
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED
        )
        body = await request.read()
        try:
            async with self._http.request(
                request.method,
                URL(self.upstream + request.rel_url.raw_path_qs, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            ) as upstream:
                payload = await upstream.read()
                out = CIMultiDict(
                    (k, v) for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED
                )
                return web.Response(status=upstream.status, body=payload, headers=out)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("sandbox_proxy_upstream_failed", service=service, error=repr(exc))
            return web.Response(status=502, text=f"fault proxy: upstream failed: {exc!r}")
