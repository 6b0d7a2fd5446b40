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

Cross-account: :meth:`AwsClients.with_role` gives a view whose clients act as an IAM role
(a policy's, a step's or a signal's ``aws.role_arn``), assumed with ``sts:AssumeRole``
through the **regional** STS endpoint of the region being called (the global endpoint,
``sts.amazonaws.com``, lives in us-east-1: a failover away from us-east-1 must not depend on
it). Session credentials from a regional endpoint are valid in every region of the
partition, so they are cached per role (ARN, external id, session name, duration), shared by
every view and client, and refreshed before they expire (see :class:`RoleCredentials`).

:meth:`AwsClients.from_settings` is the one way the daemon, the CLI (readiness, iam-policy,
drill) and the signal readers build clients from the ``aws`` settings.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.credentials import (  # type: ignore[import-untyped]
    AioCredentialResolver,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.session import AioSession  # type: ignore[import-untyped]
from botocore.credentials import CredentialProvider  # type: ignore[import-untyped]

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.partitions import partition_of
from orchestrator.telemetry import AWS_API_CALLS, AWS_API_RETRIES, get_logger

if TYPE_CHECKING:
    from orchestrator.settings import AwsSettings

log = get_logger("failoverd.aws")

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
    # Per service (botocore's name, e.g. "arc-region-switch"): wins over endpoint_url.
    service_endpoints: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    max_attempts: int = 3
    retry_mode: str = "standard"  # botocore's: standard or adaptive (client-side rate limit)
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    # (region, URL) of each endpoint of the ARC cluster, when the settings name them; a
    # step's own cluster_endpoints win (see actions/arc.py).
    arc_cluster_endpoints: tuple[tuple[str, str], ...] = ()

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
        if self.retry_mode not in ("standard", "adaptive"):
            raise ValueError(
                f"AwsClientConfig.retry_mode must be standard or adaptive, got {self.retry_mode!r}"
            )
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "AwsClientConfig needs both access_key_id and secret_access_key, or neither "
                "(to use the standard credential chain)"
            )
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("AwsClientConfig.session_token needs access_key_id too")
        urls = {"endpoint_url": self.endpoint_url}
        urls.update({f"service_endpoints[{k!r}]": v for k, v in self.service_endpoints.items()})
        for name, url in urls.items():
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(
                    f"AwsClientConfig.{name} must start with http:// or https://, got {url!r}"
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


class RoleSpec(Protocol):
    """An IAM role to act as (the policy's ``aws`` section has this shape): its ARN, the
    external id its trust policy may demand, the session name CloudTrail shows, and how
    long each set of session credentials lives (seconds)."""

    @property
    def role_arn(self) -> str: ...

    @property
    def external_id(self) -> str | None: ...

    @property
    def session_name(self) -> str: ...

    @property
    def duration(self) -> float: ...


RoleKey = tuple[str, str | None, str, int]


def role_key(role: RoleSpec) -> RoleKey:
    return (role.role_arn, role.external_id, role.session_name, int(role.duration))


# botocore refreshes temporary credentials 15 minutes (advisory) and 10 minutes (mandatory)
# before they expire; for sessions shorter than an hour those windows would cover most of
# the session's life and call STS on nearly every request. Scaled down for short sessions.
ADVISORY_REFRESH, MANDATORY_REFRESH = 15 * 60.0, 10 * 60.0


def refresh_windows(duration: float) -> tuple[float, float]:
    """(advisory, mandatory) seconds before expiry at which a role's credentials are
    refreshed: botocore's 15 and 10 minutes, at most a quarter and an eighth of the
    session's length."""
    return min(ADVISORY_REFRESH, duration / 4), min(MANDATORY_REFRESH, duration / 8)


class _FixedProvider(CredentialProvider):  # type: ignore[misc]
    """A credential chain of one link: the role's refreshable credentials."""

    METHOD = "failoverd-assume-role"
    CANONICAL_NAME = "failoverd-assume-role"

    def __init__(self, credentials: Any) -> None:
        super().__init__()
        self._credentials = credentials

    async def load(self) -> Any:
        return self._credentials


class RoleCredentials:
    """Session credentials of one role, assumed and refreshed on demand.

    ``AssumeRole`` goes to the regional STS endpoint of the region most recently asked for
    (the one the caller is about to act in; the global endpoint lives in us-east-1), falling
    back to the other regions this role was used in when that one does not answer. The
    credentials are refreshed :func:`refresh_windows` before they expire, by botocore's
    refreshable-credentials machinery (one refresh at a time, callers wait only when the
    mandatory window has been reached), on the factory's clock. Never logged.
    """

    def __init__(self, clients: AwsClients, role: RoleSpec) -> None:
        self._clients = clients
        self.role_arn = role.role_arn
        self.external_id = role.external_id
        self.session_name = role.session_name
        self.duration = int(role.duration)
        self.regions: list[str] = []  # most recent first
        self.assumed = 0  # AssumeRole calls that returned credentials
        self.session = AioSession()
        clock = clients.clock
        self.credentials = AioDeferredRefreshableCredentials(
            refresh_using=self._assume,
            method=_FixedProvider.METHOD,
            time_fetcher=lambda: datetime.fromtimestamp(clock.now(), UTC),
        )
        advisory, mandatory = refresh_windows(self.duration)
        self.credentials._advisory_refresh_timeout = advisory
        self.credentials._mandatory_refresh_timeout = mandatory
        self.session.register_component(
            "credential_provider", AioCredentialResolver([_FixedProvider(self.credentials)])
        )

    def prefer(self, region: str) -> None:
        if region in self.regions:
            self.regions.remove(region)
        self.regions.insert(0, region)

    async def _assume(self) -> dict[str, str]:
        errors: list[str] = []
        for region in list(self.regions) or ["us-east-1"]:
            try:
                return await self._assume_in(region)
            except Exception as exc:  # the next region's STS may answer
                errors.append(f"{region}: {error_code(exc)}")
                log.warning(
                    "assume_role_failed",
                    role_arn=self.role_arn,
                    region=region,
                    error=error_code(exc),
                )
                if not _worth_another_region(exc):
                    raise
        raise RoleAssumptionError(
            f"could not assume {self.role_arn} through any regional STS endpoint: "
            + "; ".join(errors)
        )

    async def _assume_in(self, region: str) -> dict[str, str]:
        kwargs: dict[str, Any] = {
            "RoleArn": self.role_arn,
            "RoleSessionName": self.session_name,
            "DurationSeconds": self.duration,
        }
        if self.external_id is not None:
            kwargs["ExternalId"] = self.external_id
        endpoint = self._clients.sts_endpoint(region)
        async with self._clients.client("sts", region, endpoint_url=endpoint) as sts:
            response = await sts.assume_role(**kwargs)
        creds = response["Credentials"]
        expiration = creds["Expiration"]
        if isinstance(expiration, datetime):
            expiration = expiration.astimezone(UTC).isoformat()
        self.assumed += 1
        log.info("role_assumed", role_arn=self.role_arn, region=region, expires=str(expiration))
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": str(expiration),
        }


class RoleAssumptionError(RuntimeError):
    """No regional STS endpoint gave the role's credentials."""


def _worth_another_region(exc: BaseException) -> bool:
    """A refusal (access denied, a bad external id) is the same everywhere; no answer, a
    throttle or a 5xx may not be."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in THROTTLING_ERROR_CODES or (isinstance(status, int) and status >= 500)
    return True


class AwsClients:
    """Makes aiobotocore clients. Cheap to create; holds one session (shared credentials
    cache). ``client()`` does no network I/O itself unless the credential chain has to
    look credentials up (e.g. the instance metadata service, or STS for a role), which is
    bounded by the client timeouts.

    :meth:`with_role` returns a view acting as a role; views share this factory's sessions
    and role credentials (cached per role)."""

    def __init__(
        self,
        config: AwsClientConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        _roles: dict[RoleKey, RoleCredentials] | None = None,
        _role: RoleCredentials | None = None,
        _session: Any = None,
    ) -> None:
        self.config = config or AwsClientConfig()
        self.clock = clock
        self._session = _session or AioSession()
        self._roles: dict[RoleKey, RoleCredentials] = {} if _roles is None else _roles
        self.role = _role
        self._botocore_config = _botocore_config(self.config)

    @classmethod
    def from_settings(
        cls,
        settings: AwsSettings,
        *,
        endpoint_url: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        arc_cluster_endpoints: Mapping[str, str] | None = None,
    ) -> AwsClients:
        """The clients the ``aws`` settings describe (endpoint, timeouts, attempts, retry
        mode); ``endpoint_url`` (a command-line option) wins over the settings' one;
        ``arc_cluster_endpoints`` are the settings' ``arc.cluster_endpoints``."""
        config = settings.client_config()
        if endpoint_url is not None:
            config = replace(config, endpoint_url=endpoint_url)
        if arc_cluster_endpoints:
            config = replace(config, arc_cluster_endpoints=tuple(arc_cluster_endpoints.items()))
        return cls(config, clock=clock)

    @classmethod
    def from_config_file(
        cls,
        path: str | None,
        env: Mapping[str, str],
        *,
        endpoint_url: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> AwsClients:
        """The clients of the daemon's settings file (``path``, else the default file when
        it exists) and ``FAILOVERD_AWS__*`` variables in ``env``: what the CLI commands use,
        so that they talk to AWS exactly as the daemon does. Raises the settings loader's
        ``SourceErrors`` (naming file:line) for a bad file."""
        from orchestrator.settings import load_settings

        settings = load_settings(path, env)
        return cls.from_settings(
            settings.aws,
            endpoint_url=endpoint_url,
            clock=clock,
            arc_cluster_endpoints=settings.arc.cluster_endpoints,
        )

    def with_role(self, role: RoleSpec | None) -> AwsClients:
        """A view whose clients act as ``role`` (None: this factory's own identity)."""
        if role is None:
            return self if self.role is None else self._view(None)
        key = role_key(role)
        creds = self._roles.get(key)
        if creds is None:
            creds = self._roles[key] = RoleCredentials(self._base(), role)
        return self if self.role is creds else self._view(creds)

    def _base(self) -> AwsClients:
        return self if self.role is None else self._view(None)

    def _view(self, role: RoleCredentials | None) -> AwsClients:
        return AwsClients(
            self.config, clock=self.clock, _roles=self._roles, _role=role, _session=self._session
        )

    def sts_endpoint(self, region: str) -> str:
        """Where AssumeRole goes for ``region``: its regional STS endpoint (or the
        configured endpoint override, an emulator)."""
        cfg = self.config
        override = cfg.service_endpoints.get("sts") or cfg.endpoint_url
        return override or partition_of(region).endpoint("sts", region)

    @asynccontextmanager
    async def client(
        self,
        service: str,
        region: str,
        *,
        endpoint_url: str | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> AsyncIterator[Any]:
        """An open client for ``service`` (e.g. ``cloudwatch``) in ``region``; closed when
        the block ends. Every call through it is counted in AWS_API_CALLS by outcome.
        ``endpoint_url``, ``max_attempts`` and the timeouts override the configuration for
        this client: the Health API's regional endpoints and retry budget, an ARC cluster's
        regional endpoints (tried one after another with short timeouts and no retries of
        botocore's)."""
        if not _SERVICE.match(service):
            raise ValueError(f"not an AWS service name: {service!r}")
        if not _REGION.match(region):
            raise ValueError(f"not an AWS region: {region!r} (expected e.g. us-east-1)")
        cfg = self.config
        botocore_config = self._botocore_config
        overrides: dict[str, Any] = {}
        if max_attempts is not None and max_attempts != cfg.max_attempts:
            overrides["max_attempts"] = max_attempts
        if connect_timeout is not None:
            overrides["connect_timeout"] = connect_timeout
        if read_timeout is not None:
            overrides["read_timeout"] = read_timeout
        if overrides:
            botocore_config = _botocore_config(replace(cfg, **overrides))
        kwargs: dict[str, Any] = {
            "region_name": region,
            "endpoint_url": endpoint_url or cfg.service_endpoints.get(service, cfg.endpoint_url),
            "config": botocore_config,
        }
        if self.role is not None:
            self.role.prefer(region)
            session = self.role.session
        else:
            session = self._session
            kwargs.update(
                aws_access_key_id=cfg.access_key_id,
                aws_secret_access_key=cfg.secret_access_key,
                aws_session_token=cfg.session_token,
            )
        async with session.create_client(service, **kwargs) as client:
            yield count_calls(client, service)


def _botocore_config(config: AwsClientConfig) -> Any:
    return AioConfig(
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        # total_max_attempts counts the first try; botocore's max_attempts would not.
        retries={"mode": config.retry_mode, "total_max_attempts": config.max_attempts},
        # Loading the service model is file I/O: keep it off the event loop.
        warm_up_loader_caches=True,
    )


class _Regional(Protocol):
    @property
    def region(self) -> str: ...

    @property
    def interval(self) -> float: ...

    @property
    def role(self) -> RoleSpec | None: ...


W = TypeVar("W", bound=_Regional)


async def run_regional_loops(
    clients: AwsClients,
    service: str,
    watches: Iterable[W],
    loop: Callable[[Any, float, list[W]], Coroutine[Any, Any, None]],
    name: str,
) -> None:
    """Run ``loop(client, interval, watches)`` for each (region, role, interval) group, with
    one client per region and role (the watches' ``role``: None is the daemon's own
    identity) for the whole run; returns only by cancellation (an empty set of watches
    still waits, as a signal source's contract says)."""
    groups: dict[tuple[str, RoleKey | None, float], list[W]] = {}
    roles: dict[RoleKey | None, RoleSpec | None] = {}
    for w in watches:
        key = None if w.role is None else role_key(w.role)
        roles[key] = w.role
        groups.setdefault((w.region, key, w.interval), []).append(w)
    async with AsyncExitStack() as stack:
        by_region: dict[tuple[str, RoleKey | None], Any] = {}
        for region, key in sorted({(r, k) for r, k, _ in groups}, key=str):
            view = clients.with_role(roles[key])
            by_region[(region, key)] = await stack.enter_async_context(view.client(service, region))
        async with asyncio.TaskGroup() as tg:
            for (region, key, interval), group in sorted(groups.items(), key=str):
                who = "" if key is None else f"-{key[0].rsplit('/', 1)[-1]}"
                tg.create_task(
                    loop(by_region[(region, key)], interval, group),
                    name=f"{name}-{region}{who}-{interval:g}s",
                )
            await asyncio.Event().wait()
