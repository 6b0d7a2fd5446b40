"""Retry policy for runbook steps: which failures are worth another attempt, and how long
to wait before it (exponential backoff with full jitter, within a budget).

An action is expected to raise :class:`~orchestrator.actions.base.RetryableError` or
:class:`~orchestrator.actions.base.ActionFailed`. Anything else that escapes it is
classified here as a second line of defence: an AWS throttling code, a 5xx, a timeout or a
connection error is retryable; everything else (a bug, access denied, a missing resource)
is not, because repeating it cannot help and only burns the RTO budget.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass

from orchestrator.actions.base import ActionError
from orchestrator.signals.aws_clients import THROTTLING_ERROR_CODES, error_code

# Exception class names (from botocore, aiohttp, the standard library) that mean "the
# request may not have reached the service, or the answer did not come back": retryable.
_TRANSIENT_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ProxyConnectionError",
        "ServerDisconnectedError",
        "ClientConnectorError",
        "ClientOSError",
        "ServerTimeoutError",
    }
)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff
    and Jitter"): the n-th retry waits a uniform random time in [0, min(cap, base * 2**(n-1))].
    Full jitter spreads the retries of concurrent steps (and of other AWS clients hitting the
    same throttled API) instead of synchronising them."""

    base: float = 1.0
    cap: float = 30.0

    def __post_init__(self) -> None:
        for name in ("base", "cap"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"Backoff.{name} must be a positive number, got {value!r}")
        if self.cap < self.base:
            raise ValueError(f"Backoff.cap ({self.cap}) must not be below base ({self.base})")

    def ceiling(self, retry: int) -> float:
        """The largest wait before retry number ``retry`` (1 for the first retry)."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        # min() before the power would overflow for large retry numbers.
        exponent = min(retry - 1, 64)
        return float(min(self.cap, self.base * 2.0**exponent))

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.ceiling(retry))


@dataclass(frozen=True, slots=True)
class Failure:
    """How one failed attempt is journaled."""

    error: str
    retryable: bool


def classify(exc: BaseException) -> Failure:
    """Whether another attempt may succeed, and a short message for the journal."""
    if isinstance(exc, ActionError):
        # Actions word their own errors for the journal; the class adds nothing.
        return Failure(str(exc).strip() or type(exc).__name__, exc.retryable)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Failure(_message(exc) or "timed out", True)
    code = error_code(exc)
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        retryable = code in THROTTLING_ERROR_CODES or (isinstance(status, int) and status >= 500)
        # Only the AWS error code: a ClientError's message may quote request data.
        return Failure(f"{code} (HTTP {status})", retryable)
    if type(exc).__name__ in _TRANSIENT_NAMES or isinstance(exc, ConnectionError):
        return Failure(code, True)
    return Failure(f"unexpected error: {_message(exc)}", False)


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
