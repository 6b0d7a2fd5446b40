"""``webhook``: an HTTP POST of a signed JSON body, to tell another system about a run.

The body is the step's ``body`` with the run's context laid over it (``service``,
``run_id``, ``step``, ``kind``, ``source_region``, ``target_region``, ``sent_at``; those
keys are the daemon's and win over the policy's). Headers:

* ``X-Failoverd-Signature: sha256=<hex>`` — HMAC-SHA256 of the exact body bytes, keyed with
  the first line of ``secret_file`` (no header without a secret file). The timestamp is in
  the signed body, so a receiver can refuse replays of old deliveries;
* ``X-Failoverd-Timestamp`` — the same ``sent_at``, Unix seconds, for quick rejection;
* ``X-Failoverd-Delivery`` — ``<run_id>/<step>``, the same for every attempt: deliveries
  are at least once (a retry after a lost answer sends again), so receivers deduplicate
  on it.

Answers: 2xx is success; 5xx, 408, 429, timeouts and connection errors are retryable; any
other answer (4xx, and 3xx, which is not followed) fails the step. The URL is never logged
nor put in an error (webhook URLs often carry a token), only its scheme and host; nor is
the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel

from orchestrator import netguard
from orchestrator.actions.base import (
    Action,
    ActionFailed,
    ApiDependency,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    RetryableError,
    StepContext,
    typed_params,
)
from orchestrator.policy.actions import Webhook as WebhookParams
from orchestrator.settings import SettingsError, read_secret_file
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions.webhook")

SIGNATURE_HEADER = "X-Failoverd-Signature"
TIMESTAMP_HEADER = "X-Failoverd-Timestamp"
DELIVERY_HEADER = "X-Failoverd-Delivery"
USER_AGENT = "failoverd-webhook"
_RETRYABLE_STATUS = frozenset({408, 429})


def endpoint(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what may be logged. ValueError when ``url`` is
    not an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("webhook URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("webhook URL must be an absolute http:// or https:// URL")
    # Rebuilt from host and port: the netloc may hold user:password.
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def read_secret(path: str) -> bytes:
    """The signing key: the first line of ``path``, under the rules of every secret file
    (:func:`orchestrator.settings.read_secret_file`: the owner's alone, CRLF handled).
    ActionFailed naming the file (never its content) when it cannot be used."""
    try:
        return read_secret_file(Path(path), "webhook secret file").encode()
    except SettingsError as exc:
        raise ActionFailed(str(exc)) from None


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Failoverd-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def build_body(ctx: StepContext, extra: dict[str, str]) -> tuple[bytes, int]:
    """The exact bytes to send (compact, keys sorted: stable for the same input) and the
    timestamp in them."""
    sent_at = int(ctx.clock.now())
    document: dict[str, object] = dict(extra)
    document.update(
        service=ctx.service,
        run_id=ctx.run_id,
        step=ctx.step,
        kind=ctx.kind,
        source_region=ctx.source_region,
        target_region=ctx.target_region,
        sent_at=sent_at,
    )
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode(), sent_at


class Webhook(Action):
    """POST the signed run context to ``url`` (see the module docstring)."""

    name = "webhook"
    params_model = WebhookParams

    async def check(self, ctx: StepContext) -> CheckReport:
        # Never calls the URL: a check must not notify anyone.
        p = typed_params(ctx, WebhookParams)
        findings = []
        try:
            endpoint(p.url)
        except ValueError as exc:
            findings.append(str(exc))
        if problem := netguard.refused_url(p.url):
            findings.append(f"webhook URL: {problem}")
        if p.secret_file is not None:
            try:
                read_secret(p.secret_file)
            except ActionFailed as exc:
                findings.append(str(exc))
        return CheckReport(ready=not findings, findings=tuple(findings))

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, WebhookParams)
        try:
            where = endpoint(p.url)
        except ValueError as exc:
            raise ActionFailed(str(exc)) from None
        if problem := netguard.refused_url(p.url):
            raise ActionFailed(f"webhook to {where}: {problem}")
        # Read at every attempt, so a rotated secret is picked up without a restart.
        secret = read_secret(p.secret_file) if p.secret_file is not None else None
        body, sent_at = build_body(ctx, p.body)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            TIMESTAMP_HEADER: str(sent_at),
            DELIVERY_HEADER: f"{ctx.run_id}/{ctx.step}",
        }
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        remaining = ctx.remaining()
        if remaining <= 0:
            # aiohttp reads a zero timeout as "no timeout": never hand it one.
            raise RetryableError(f"webhook to {where}: no time left in the step")
        timeout = aiohttp.ClientTimeout(total=remaining)
        try:
            # Names are checked as they resolve: what is refused is what would be reached.
            connector = aiohttp.TCPConnector(resolver=netguard.GuardedResolver())
            async with (
                aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
                session.post(p.url, data=body, headers=headers, allow_redirects=False) as reply,
            ):
                status, reason = reply.status, reply.reason or ""
        except TimeoutError as exc:
            raise RetryableError(f"webhook to {where} timed out") from exc
        except aiohttp.InvalidURL as exc:
            raise ActionFailed("webhook URL is not a valid URL") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            # A certificate the receiver does not fix by itself between attempts.
            raise ActionFailed(f"webhook to {where}: TLS certificate rejected") from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, netguard.RefusedAddress):
                raise ActionFailed(f"webhook to {where}: {exc.os_error}") from exc
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise RetryableError(f"webhook to {where}: cannot connect: {reason}") from exc
        except aiohttp.ClientError as exc:
            # Only the class name: some of these quote the request URL in their message.
            raise RetryableError(f"webhook to {where} failed: {type(exc).__name__}") from exc
        answer = f"webhook to {where} answered HTTP {status} {reason}".rstrip()
        if 200 <= status < 300:
            log.info(
                "webhook_delivered",
                service=ctx.service,
                run_id=ctx.run_id,
                step=ctx.step,
                endpoint=where,
                status=status,
            )
            return ExecuteOutcome(changed=True, detail=answer)
        if status >= 500 or status in _RETRYABLE_STATUS:
            raise RetryableError(answer)
        raise ActionFailed(answer)

    async def verify(self, ctx: StepContext) -> None:
        return None  # the 2xx answer was the verification

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        return ()  # an HTTP endpoint of the user's, not AWS

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        return []
