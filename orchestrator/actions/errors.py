"""Turning what an AWS call raised into the action contract's two kinds of failure.

One mapping for every action, so that "retry" means the same thing everywhere:

* :class:`~orchestrator.actions.base.RetryableError` — throttling (the codes botocore's
  standard retry mode treats as throttling, HTTP 429), transient codes (``RequestTimeout``,
  ``PriorRequestNotComplete``), any 5xx, timeouts, connection errors and garbled responses.
  By the time such an error reaches an action, botocore has already retried it within the
  client's budget; the executor's own backoff is the next, slower layer.
* :class:`~orchestrator.actions.base.ActionFailed` — everything else: a 4xx such as
  ``AccessDenied``, ``DBInstanceNotFound``, ``InvalidChangeBatch``, bad parameters, missing
  credentials. Another attempt would meet the same answer.

An :class:`~orchestrator.actions.base.ActionError` raised by the action itself passes through
unchanged. Cancellation is never converted. Messages carry the operation, the AWS error code
and AWS's message (which names resources, never credentials).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.parsers import ResponseParserError  # type: ignore[import-untyped]

from orchestrator.actions.base import ActionError, ActionFailed, RetryableError
from orchestrator.signals.aws_clients import THROTTLING_ERROR_CODES

# Codes that say "try again shortly" without being throttling: botocore's transient set, and
# the services' own "busy right now" answers (from their botocore service models: Auto
# Scaling's ScalingActivityInProgressFault and ResourceContentionFault on SetDesiredCapacity
# and UpdateAutoScalingGroup; Application Auto Scaling's ConcurrentUpdateException; SNS's
# KMSThrottlingException when the topic's KMS key is throttled).
TRANSIENT_ERROR_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "ScalingActivityInProgress",
        "ResourceContention",
        "ConcurrentUpdateException",
        "KMSThrottling",
    }
)
RETRYABLE_ERROR_CODES = THROTTLING_ERROR_CODES | TRANSIENT_ERROR_CODES

# No usable answer arrived: the next attempt may get one.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ResponseParserError,
    aiohttp.ClientError,
    TimeoutError,  # asyncio.timeout raises the builtin
    ConnectionError,
)


def _client_error_parts(exc: ClientError) -> tuple[str, str, int | None]:
    response: dict[str, Any] = exc.response if isinstance(exc.response, dict) else {}
    error = response.get("Error") or {}
    code = str(error.get("Code") or "Unknown")
    message = str(error.get("Message") or "").strip()
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code, message, status if isinstance(status, int) else None


def classify(exc: BaseException) -> ActionError:
    """The contract error for ``exc``: an :class:`ActionError` is returned as is; an AWS or
    transport error becomes :class:`RetryableError` or :class:`ActionFailed` (see the module
    docstring). Pure: looks only at the exception. The caller raises the result ``from exc``.
    """
    if isinstance(exc, ActionError):
        return exc
    if isinstance(exc, ClientError):
        code, message, status = _client_error_parts(exc)
        operation = getattr(exc, "operation_name", None) or "AWS call"
        text = f"{operation} failed: {code}" + (f": {message}" if message else "")
        if status is not None:
            text += f" (HTTP {status})"
        server_side = status is not None and (status == 429 or status >= 500)
        if code in RETRYABLE_ERROR_CODES or server_side:
            return RetryableError(text)
        return ActionFailed(text)
    if isinstance(exc, _TRANSPORT_ERRORS):
        detail = str(exc) or type(exc).__name__
        return RetryableError(f"AWS call did not complete: {type(exc).__name__}: {detail}")
    if isinstance(exc, BotoCoreError):
        # ParamValidationError, NoCredentialsError, NoRegionError...: configuration, not luck.
        return ActionFailed(f"AWS call refused before sending: {type(exc).__name__}: {exc}")
    return ActionFailed(f"unexpected error: {type(exc).__name__}: {exc}")


@asynccontextmanager
async def aws_errors() -> AsyncIterator[None]:
    """Re-raise anything the block raises as :func:`classify` says, chained to the original.
    Cancellation (and other BaseExceptions) pass through untouched."""
    try:
        yield
    except asyncio.CancelledError:
        raise
    except ActionError:
        raise
    except Exception as exc:
        raise classify(exc) from exc


def transient_as_pending(
    probe: Callable[[], Awaitable[tuple[bool, str]]],
) -> Callable[[], Awaitable[tuple[bool, str]]]:
    """Wrap a ``verify`` probe so a retryable error (throttled, 5xx, a timeout) counts as
    "not yet" instead of ending the wait: the effect is still on its way, and the poll's
    deadline bounds how long we keep looking. Non-retryable errors still end it."""

    async def wrapped() -> tuple[bool, str]:
        try:
            async with aws_errors():
                return await probe()
        except RetryableError as exc:
            return False, f"transient error: {exc}"

    return wrapped
