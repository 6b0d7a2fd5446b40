"""Two more fault modes of the sandbox's AWS proxy (:mod:`.fault_proxy`), for the chaos suite
and ``failoverd sandbox fault``:

* ``aws-errors 30%`` — that share of every AWS call (all services, chosen at random with a
  seedable generator) is answered by the proxy, without reaching the emulator, with AWS's
  throttling error or a server error (``500 InternalFailure`` / ``503 ServiceUnavailable``,
  in the protocol's own error shape): ``30%:throttle`` or ``30%:5xx`` for one kind only,
  ``@SEED`` to repeat a run, ``off``. botocore retries both (standard mode), the executor
  retries steps, and ``failoverd_aws_api_retries_total`` / ``..._calls_total{outcome}`` show
  it.
* ``blackhole REGION`` — every call signed for that region (its credential scope) is held
  unanswered: the client's read time-out ends it, as with a region whose endpoints cannot be
  reached. Global services that sign for us-east-1 (Route 53, IAM, CloudFront,
  Organizations) are left alone: their loss is the ``control-plane-down`` fault. ``off``
  ends it (held calls are then cut).

The server errors are returned *instead of* forwarding: the call did not happen, as when an
overloaded front end refuses it. (AWS can also fail a call that did land; the actions'
check-before-act covers that, tested with the store and process faults.)
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from dataclasses import dataclass

from aiohttp import web

from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.aws_faults")

_REGION_OF_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
# Global control planes signing for us-east-1: never blackholed here (control-plane-down).
GLOBAL_SERVICES = frozenset({"route53", "iam", "cloudfront", "organizations"})
KINDS = ("throttle", "5xx")
HOLD_CAP = 300.0  # seconds a blackholed call is held at most


class AwsFaultError(ValueError):
    """A fault argument that cannot be understood; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class ErrorRate:
    """``rate`` (0-1) of all calls fail with one of ``kinds``; ``seed`` makes it repeatable."""

    rate: float
    kinds: tuple[str, ...] = KINDS
    seed: int | None = None


def parse_error_rate(arg: str) -> ErrorRate | None:
    """``30%``, ``0.3``, ``30%:5xx``, ``30%:throttle``, each optionally ``@SEED``; ``off``
    (None)."""
    text = arg.strip().lower()
    if text in ("off", "none", "0", "0%"):
        return None
    text, _, seed_text = text.partition("@")
    rate_text, _, kind = text.partition(":")
    try:
        rate = float(rate_text[:-1]) / 100 if rate_text.endswith("%") else float(rate_text)
        seed = int(seed_text) if seed_text else None
    except ValueError:
        raise AwsFaultError(
            f"aws-errors: expected a share like 30% or 0.3, optionally :throttle or :5xx and"
            f" @SEED, or off; got {arg!r}"
        ) from None
    if not 0 < rate <= 1:
        raise AwsFaultError(f"aws-errors: the share must be above 0 and at most 100%, got {arg!r}")
    if kind and kind not in KINDS:
        raise AwsFaultError(f"aws-errors: the kind must be throttle or 5xx, got {kind!r}")
    return ErrorRate(rate, (kind,) if kind else KINDS, seed)


def parse_region(arg: str, fault: str) -> str | None:
    text = arg.strip()
    if text in ("off", "none"):
        return None
    if not _REGION.match(text):
        raise AwsFaultError(f"{fault}: expected a region (us-east-1) or off, got {arg!r}")
    return text


def scope_of(request: web.Request) -> tuple[str, str] | None:
    """(region, service) of a SigV4-signed request, or None."""
    found = _REGION_OF_SCOPE.search(request.headers.get("Authorization", ""))
    return (found[1], found[2]) if found else None


def server_error(request: web.Request, status: int, code: str) -> web.Response:
    """A 5xx AWS error in the request's protocol (JSON for ``x-amz-json``, else XML)."""
    request_id = str(uuid.uuid4())
    headers = {"x-amzn-RequestId": request_id}
    message = "We encountered an internal error. Please try again."
    if "x-amz-json" in request.headers.get("Content-Type", ""):
        headers["x-amzn-ErrorType"] = code
        return web.json_response(
            {"__type": code, "message": message},
            status=status,
            headers=headers,
            content_type="application/x-amz-json-1.1",
        )
    body = (
        '<?xml version="1.0"?>\n'
        f"<ErrorResponse><Error><Type>Receiver</Type><Code>{code}</Code>"
        f"<Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return web.Response(status=status, text=body, content_type="text/xml", headers=headers)


class AwsChaos:
    """The state of both faults; :meth:`intercept` is the proxy's hook (one event loop, so
    every change is atomic). Counts what it did, for the tests and the chaos report."""

    def __init__(self) -> None:
        self.errors: ErrorRate | None = None
        self.blackholed: str | None = None
        self.injected: dict[str, int] = {"throttle": 0, "5xx": 0, "blackhole": 0}
        self._rng = random.Random()
        self._lifted = asyncio.Event()
        self._lifted.set()

    def describe(self) -> dict[str, object]:
        errors = self.errors
        return {
            "errors": None
            if errors is None
            else {"rate": errors.rate, "kinds": list(errors.kinds), "seed": errors.seed},
            "blackholed": self.blackholed,
            "injected": dict(self.injected),
        }

    def set_errors(self, spec: ErrorRate | None) -> str:
        self.errors = spec
        if spec is None:
            log.info("sandbox_aws_errors_off")
            return "aws-errors off: no call fails on purpose"
        self._rng = random.Random(spec.seed)
        log.info("sandbox_aws_errors_on", rate=spec.rate, kinds=list(spec.kinds), seed=spec.seed)
        return f"{spec.rate:.0%} of AWS calls fail ({' or '.join(spec.kinds)})"

    def set_blackhole(self, region: str | None) -> str:
        self.blackholed = region
        if region is None:
            self._lifted.set()
            log.info("sandbox_blackhole_off")
            return "blackhole off: every region's endpoints answer"
        self._lifted.clear()
        log.info("sandbox_blackhole_on", region=region)
        return f"{region}: its AWS endpoints do not answer (calls time out); global ones do"

    async def intercept(
        self, request: web.Request, service: str | None
    ) -> web.StreamResponse | None:
        """The answer the fault gives instead of the emulator's, or None to go on."""
        scope = scope_of(request)
        region = scope[0] if scope else None
        if (
            self.blackholed is not None
            and region == self.blackholed
            and (service or "") not in GLOBAL_SERVICES
        ):
            self.injected["blackhole"] += 1
            return await self._hold(request)
        spec = self.errors
        if spec is None or self._rng.random() >= spec.rate:
            return None
        kind = self._rng.choice(spec.kinds)
        self.injected[kind] += 1
        if kind == "throttle":
            # Imported here: fault_proxy imports this module.
            from orchestrator.sandbox.fault_proxy import throttling_response

            return throttling_response(request)
        status, code = self._rng.choice(((500, "InternalFailure"), (503, "ServiceUnavailable")))
        return server_error(request, status, code)

    async def _hold(self, request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(HOLD_CAP):
                while not self._lifted.is_set():
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        break  # the client gave up: nobody waits for an answer
                    try:
                        async with asyncio.timeout(0.5):
                            await self._lifted.wait()
                    except TimeoutError:
                        continue
        except TimeoutError:
            pass
        if request.transport is not None:
            request.transport.abort()  # never answered, even after the fault ends
        return web.Response(status=504)  # goes nowhere: the connection is gone
