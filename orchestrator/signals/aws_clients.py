"""aiobotocore clients for the signal readers: bounded in time, retried with a budget, counted.

Every reader that talks to AWS gets its clients from one :class:`AwsClients` factory, so that
timeouts, retries and the ``failoverd_aws_api_calls_total`` accounting are the same
everywhere. A reader opens one client per region and keeps it for its lifetime (the reader
owns it and closes it on the way out, by leaving the ``async with``).

Retries are botocore's ``standard`` mode: exponential backoff with full jitter, capped
attempts, and a client-side retry quota (a token bucket that stops retrying when most calls
fail) as the budget. Each attempt is bounded by ``connect_timeout`` + ``read_timeout``;
callers still wrap a whole operation in ``asyncio.timeout`` because several attempts plus
backoff can add up.

Credentials come from the standard chain (environment, profile, container/instance role)
unless given explicitly; the sandbox gives the emulator's fake ones. They are never logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import AioSession  # type: ignore[import-untyped]

from orchestrator.telemetry import AWS_API_CALLS, AWS_API_RETRIES

OK = "ok"
ERROR = "error"
THROTTLED = "throttled"

# The error codes AWS services use for throttling (botocore's standard retry mode knows the
# same set); a throttled call says "slow down", not "the region is broken".
THROTTLING_ERROR_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True, slots=True)
class AwsClientConfig:
    """How clients are made. ``endpoint_url`` overrides AWS's endpoint for every service and
    region (the sandbox points it at the emulator); leave it None in production."""

    endpoint_url: str | None = None
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    max_attempts: int = 3
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"AwsClientConfig.{name} must be a positive number, got {value!r}")
        if not (isinstance(self.max_attempts, int) and 1 <= self.max_attempts <= 10):
            raise ValueError(
                f"AwsClientConfig.max_attempts must be an integer from 1 to 10, "
                f"got {self.max_attempts!r}"
            )
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "AwsClientConfig needs both access_key_id and secret_access_key, or neither "
                "(to use the standard credential chain)"
            )
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("AwsClientConfig.session_token needs access_key_id too")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"AwsClientConfig.endpoint_url must start with http:// or https://, "
                f"got {self.endpoint_url!r}"
            )


def classify_outcome(status_code: int, error_code: str | None) -> str:
    """``ok``, ``throttled`` or ``error`` for one finished call (a label of AWS_API_CALLS)."""
    if status_code < 300:
        return OK
    if status_code == 429 or (error_code is not None and error_code in THROTTLING_ERROR_CODES):
        return THROTTLED
    return ERROR


def error_code(exc: BaseException) -> str:
    """A short, bounded name for what went wrong with a call: the AWS error code for an
    error response (``Throttling``, ``AccessDenied``...), else the exception's class name
    (``EndpointConnectionError``, ``TimeoutError``...). Never the message, which may quote
    request data."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if isinstance(code, str) and code:
            return code
    return type(exc).__name__


# Set per call by count_calls' wrapper, in the calling task's context: whether the event
# handlers have counted the call, so that a cancelled call is counted once and only once.
_COUNTED: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "failoverd_aws_call_counted", default=None
)


class _CallCounter:
    """botocore event handlers that count each logical call once, after its retries."""

    def __init__(self, service: str) -> None:
        self.service = service

    def after_call(self, http_response: Any, parsed: Any, model: Any, **_: Any) -> None:
        code: str | None = None
        if isinstance(parsed, dict):
            err = parsed.get("Error")
            if isinstance(err, dict):
                raw = err.get("Code")
                code = raw if isinstance(raw, str) else None
        outcome = classify_outcome(int(http_response.status_code), code)
        self._count(model.name, outcome)
        meta = parsed.get("ResponseMetadata") if isinstance(parsed, dict) else None
        retries = meta.get("RetryAttempts") if isinstance(meta, dict) else None
        if isinstance(retries, int) and retries > 0:
            AWS_API_RETRIES.labels(self.service, model.name).inc(retries)

    def after_call_error(self, event_name: str, **_: Any) -> None:
        # No response at all (connection refused, timeout, no credentials): an error.
        self._count(event_name.rsplit(".", 1)[-1], ERROR)

    def _count(self, operation: str, outcome: str) -> None:
        AWS_API_CALLS.labels(self.service, operation, outcome).inc()
        flag = _COUNTED.get()
        if flag is not None:
            flag[0] = True


def count_calls(client: Any, service: str) -> Any:
    """Count every call made through the aiobotocore ``client`` in AWS_API_CALLS
    (``aws_service`` = ``service``) by outcome, once per logical call after botocore's
    retries: ``ok``, ``throttled`` or ``error`` (an error response, no response at all, or a
    call cancelled by its caller's deadline before any answer). Returns ``client``. Every
    client failoverd makes goes through this (AwsClients.client; the Health poller's own
    clients too)."""
    counter = _CallCounter(service)
    # Registered on this client's own emitter (botocore copies it per client), so nothing
    # else is counted twice. 'after-call' fires once per call, after retries, for success
    # and error responses alike; 'after-call-error' when there was no response at all.
    client.meta.events.register("after-call", counter.after_call)
    client.meta.events.register("after-call-error", counter.after_call_error)
    # Neither event fires for a call cancelled mid-flight (asyncio.timeout around it): the
    # instance attribute shadows the method, and paginators call through it too.
    make_api_call = client._make_api_call

    async def counted(operation_name: str, api_params: Any) -> Any:
        flag = [False]
        reset = _COUNTED.set(flag)
        try:
            return await make_api_call(operation_name, api_params)
        except asyncio.CancelledError:
            if not flag[0]:
                AWS_API_CALLS.labels(service, operation_name, ERROR).inc()
            raise
        finally:
            _COUNTED.reset(reset)

    client._make_api_call = counted
    return client


@asynccontextmanager
async def counted_client(
    creator: AbstractAsyncContextManager[Any], service: str
) -> AsyncIterator[Any]:
    """``async with counted_client(session.create_client(...), service) as client``: a client
    made outside :class:`AwsClients` (the Health poller's), counted like the others."""
    async with creator as client:
        yield count_calls(client, service)


class AwsClients:
    """Makes aiobotocore clients. Cheap to create; holds one session (shared credentials
    cache). ``client()`` does no network I/O itself unless the credential chain has to
    look credentials up (e.g. the instance metadata service), which botocore bounds."""

    def __init__(self, config: AwsClientConfig | None = None) -> None:
        self.config = config or AwsClientConfig()
        self._session = AioSession()
        self._botocore_config = AioConfig(
            connect_timeout=self.config.connect_timeout,
            read_timeout=self.config.read_timeout,
            # total_max_attempts counts the first try; botocore's max_attempts would not.
            retries={"mode": "standard", "total_max_attempts": self.config.max_attempts},
            # Loading the service model is file I/O: keep it off the event loop.
            warm_up_loader_caches=True,
        )

    @asynccontextmanager
    async def client(self, service: str, region: str) -> AsyncIterator[Any]:
        """An open client for ``service`` (e.g. ``cloudwatch``) in ``region``; closed when
        the block ends. Every call through it is counted in AWS_API_CALLS by outcome."""
        if not _SERVICE.match(service):
            raise ValueError(f"not an AWS service name: {service!r}")
        if not _REGION.match(region):
            raise ValueError(f"not an AWS region: {region!r} (expected e.g. us-east-1)")
        cfg = self.config
        creator = self._session.create_client(
            service,
            region_name=region,
            endpoint_url=cfg.endpoint_url,
            config=self._botocore_config,
            aws_access_key_id=cfg.access_key_id,
            aws_secret_access_key=cfg.secret_access_key,
            aws_session_token=cfg.session_token,
        )
        async with creator as client:
            yield count_calls(client, service)


class _Regional(Protocol):
    @property
    def region(self) -> str: ...

    @property
    def interval(self) -> float: ...


W = TypeVar("W", bound=_Regional)


async def run_regional_loops(
    clients: AwsClients,
    service: str,
    watches: Iterable[W],
    loop: Callable[[Any, float, list[W]], Coroutine[Any, Any, None]],
    name: str,
) -> None:
    """Run ``loop(client, interval, watches)`` for each (region, interval) group, with one
    client per region for the whole run; returns only by cancellation (an empty set of
    watches still waits, as a signal source's contract says)."""
    groups: dict[tuple[str, float], list[W]] = {}
    for w in watches:
        groups.setdefault((w.region, w.interval), []).append(w)
    async with AsyncExitStack() as stack:
        by_region: dict[str, Any] = {}
        for region in sorted({region for region, _ in groups}):
            by_region[region] = await stack.enter_async_context(clients.client(service, region))
        async with asyncio.TaskGroup() as tg:
            for (region, interval), group in sorted(groups.items()):
                tg.create_task(
                    loop(by_region[region], interval, group),
                    name=f"{name}-{region}-{interval:g}s",
                )
            await asyncio.Event().wait()
