"""AWS Health as a vantage point: open Health events become observations.

Every ``poll_interval`` of a policy's ``aws_health`` signal the source calls
``DescribeEvents`` (filtered by the policy's regions, the signal's services and categories,
status ``open``/``upcoming``, every page) and, when the signal lists ``resources``,
``DescribeAffectedEntities`` for the account-specific events that could match. It then emits,
for every (service policy, region, aws_health signal), one observation from vantage
``aws_health``:

* ``ok=False``, detail ``event``: an open event of a listed service and category is open in
  that region (and, with ``resources``, names one of them as affected and not yet resolved;
  a PUBLIC event has no account entities and is service-wide in its region, so it matches
  whatever ``resources`` says);
* ``ok=True``: the API answered and no such event is open;
* ``ok=None``, detail ``health_api_unavailable``: the API did not answer (errors, timeouts,
  5xx, throttling past the budget) or the account has no support plan that includes it.

``failoverd_health_open_events`` is set from every answered poll and keeps its last value
while the API does not answer (``failoverd_health_api_available`` is 0 then).

Events whose region is ``global`` match no region: failing over between regions would not
help. Upcoming events are logged once, never failing.

Endpoint: the Health API is served from one active region at a time (in the ``aws``
partition us-east-1 today, us-east-2 on standby). ``global.health.amazonaws.com`` is a CNAME
to the active regional endpoint, so the source resolves it (at most every
``endpoint_refresh``, and again soon after a failed call), calls the active endpoint and
falls back to the other one on errors. Other partitions have their own names and regions
(``global.health.amazonaws.com.cn`` in cn-northwest-1, ``global.health.us-gov.amazonaws.com``
in us-gov-west-1), taken from botocore's endpoint data by the policies' regions (see
:mod:`orchestrator.partitions`); one source polls one partition. An ``endpoint_url`` setting
(the sandbox's emulator) skips all of that.

Failure handling: every call is bounded by ``call_timeout``; throttling and transient errors
are retried with exponential backoff and full jitter within ``retry_budget`` seconds per poll.
``SubscriptionRequiredException`` disables the source: one clear error log,
``failoverd_health_signal_disabled`` 1, unknown observations every interval, and one retry
every ``subscription_retry_interval`` (not a crash loop). Nothing but cancellation escapes
:meth:`AwsHealthSource.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import aiohttp
import dns.asyncresolver
import dns.exception
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import AioSession  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.engine.observation import FailureKind, Observation
from orchestrator.partitions import Partition, partition_named, partition_of
from orchestrator.policy.access import AwsRole
from orchestrator.policy.models import AWS_HEALTH_VANTAGE, AwsHealthSignal, Policy
from orchestrator.signals.aws_clients import AwsClients, RoleKey, counted_client, role_key
from orchestrator.signals.base import ObservationSink
from orchestrator.telemetry import (
    HEALTH_API_AVAILABLE,
    HEALTH_API_CALLS,
    HEALTH_OPEN_EVENTS,
    HEALTH_SIGNAL_DISABLED,
    get_logger,
)

if TYPE_CHECKING:
    from orchestrator.settings import AwsSettings

SOURCE: Final = "aws_health"
COMMERCIAL: Final = partition_named("aws")
GLOBAL_ENDPOINT: Final = COMMERCIAL.health_hostname or "global.health.amazonaws.com"
HEALTH_REGIONS: Final = COMMERCIAL.health_regions or ("us-east-1", "us-east-2")
STATUS_CODES: Final = ("open", "upcoming")
MAX_FILTER_VALUES: Final = 10  # the API's limit for filter.regions / filter.services
SUBSCRIPTION_REQUIRED: Final = "SubscriptionRequiredException"
THROTTLING_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
    }
)
# Entities in these states are no longer affected; an event that only names such entities no
# longer affects the listed resources.
CLEARED_ENTITY_STATUSES: Final = frozenset({"RESOLVED", "UNIMPAIRED"})

_CNAME_TARGET = re.compile(r"^health\.([a-z]{2}(?:-[a-z]+)+-\d{1,2})\.([a-z0-9.-]+?)\.?$")

log = get_logger("failoverd.signals.aws_health")


# --- endpoints -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthEndpoint:
    """Where to send Health API calls, and the region to sign them for."""

    region: str
    url: str


def regional_endpoint(region: str) -> HealthEndpoint:
    """``https://health.<region>.<the region's partition's DNS suffix>``."""
    return HealthEndpoint(region, partition_of(region).endpoint("health", region))


def region_from_cname(target: str) -> str | None:
    """The region of a Health endpoint name (``health.us-east-2.amazonaws.com.``,
    ``health.cn-northwest-1.amazonaws.com.cn``), or None: the name must end in the DNS
    suffix of the region's own partition."""
    match = _CNAME_TARGET.match(target.strip().lower())
    if match is None:
        return None
    region, suffix = match.groups()
    try:
        partition = partition_of(region)
    except ValueError:
        return None
    return region if suffix == partition.dns_suffix else None


class CnameResolver(Protocol):
    """Looks up the CNAME target of a DNS name.

    Contract: returns the target name (a trailing dot is allowed); raises an exception
    (``LookupError``, ``OSError``, a DNS error...) when there is none or it cannot tell; bounded
    in time by its own timeout (the caller adds one more around it). Read-only, idempotent.
    """

    async def cname(self, name: str) -> str: ...


class DnsCnameResolver:
    """The system's DNS resolvers, through dnspython, with a lifetime bound."""

    def __init__(self, timeout: float = 2.0) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"DNS timeout must be a positive number of seconds, got {timeout}")
        self.timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def cname(self, name: str) -> str:
        if self._resolver is None:
            # Reads /etc/resolv.conf once, not on every look-up.
            self._resolver = dns.asyncresolver.Resolver()
        answer = await self._resolver.resolve(name, "CNAME", lifetime=self.timeout)
        for record in answer:
            return str(getattr(record, "target", ""))
        raise LookupError(f"{name} has no CNAME record")


class EndpointSelector:
    """Which Health endpoints to try, in order: the active one first, then the standby.

    With ``override`` (the emulator) only that endpoint. Otherwise the active region comes from
    the CNAME of ``global_name``, re-resolved every ``refresh_interval`` and, after a failed
    call, once ``retry_resolve_after`` has passed. A failed resolution keeps the last known
    order (us-east-1 first before anything is known). An endpoint that answered while the
    preferred one failed stays first until DNS names a new active region, or until the next
    regular refresh: then the active region is tried first again, because the standby may
    not carry the latest events.
    """

    def __init__(
        self,
        resolver: CnameResolver | None,
        clock: Clock,
        *,
        override: HealthEndpoint | None = None,
        regions: Sequence[str] = HEALTH_REGIONS,
        global_name: str = GLOBAL_ENDPOINT,
        refresh_interval: float = 300.0,
        retry_resolve_after: float = 30.0,
        resolve_timeout: float = 3.0,
    ) -> None:
        if override is None and resolver is None:
            raise ValueError("EndpointSelector needs a resolver when no endpoint is overridden")
        if not regions:
            raise ValueError("EndpointSelector needs at least one Health region")
        for name, value in (
            ("refresh_interval", refresh_interval),
            ("retry_resolve_after", retry_resolve_after),
            ("resolve_timeout", resolve_timeout),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"EndpointSelector {name} must be positive, got {value}")
        self._resolver = resolver
        self._clock = clock
        self._override = override
        self._regions = tuple(regions)
        self._global_name = global_name
        self._refresh = refresh_interval
        self._retry_after = retry_resolve_after
        self._resolve_timeout = resolve_timeout
        self._active: str | None = None  # from DNS
        self._preferred: str | None = None  # sticky after a fallback succeeded
        self._next_resolve = -math.inf
        self._next_refresh = -math.inf  # the regular look-up, not one brought forward

    @property
    def active_region(self) -> str | None:
        """The active region DNS named last time, if any."""
        return self._active

    async def candidates(self) -> tuple[HealthEndpoint, ...]:
        """Endpoints to try, best first. Bounded in time by ``resolve_timeout``."""
        if self._override is not None:
            return (self._override,)
        if self._clock.monotonic() >= self._next_resolve:
            await self._resolve()
        first = self._preferred or self._active or self._regions[0]
        order = [first, *(r for r in self._regions if r != first)]
        return tuple(regional_endpoint(r) for r in order)

    def succeeded(self, endpoint: HealthEndpoint) -> None:
        """A call to ``endpoint`` worked: keep it first (see the class docstring)."""
        if self._override is not None:
            return
        current = self._preferred or self._active or self._regions[0]
        if endpoint.region != current:
            log.warning("aws_health_endpoint_fallback", region=endpoint.region, instead_of=current)
        self._preferred = endpoint.region

    def failed(self, endpoint: HealthEndpoint) -> None:
        """A call to ``endpoint`` failed: look the active region up again soon."""
        if self._override is not None:
            return
        self._next_resolve = min(self._next_resolve, self._clock.monotonic() + self._retry_after)

    async def _resolve(self) -> None:
        assert self._resolver is not None
        now = self._clock.monotonic()
        try:
            async with asyncio.timeout(self._resolve_timeout):
                target = await self._resolver.cname(self._global_name)
        except Exception as exc:  # any resolver failure means "do not know"
            log.warning(
                "aws_health_endpoint_unresolved",
                name=self._global_name,
                error=type(exc).__name__,
                using=self._preferred or self._active or self._regions[0],
            )
            self._next_resolve = now + self._retry_after
            return
        regular = now >= self._next_refresh
        self._next_resolve = self._next_refresh = now + self._refresh
        region = region_from_cname(target)
        if region is None:
            log.warning(
                "aws_health_endpoint_unexpected_cname", name=self._global_name, target=target
            )
            return
        changed = region != self._active
        if changed:
            log.info("aws_health_active_region", region=region, previous=self._active)
            if region not in self._regions:
                self._regions = (region, *self._regions)
        self._active = region
        if changed or regular:
            # A look-up brought forward by a failure that finds the same active region keeps
            # the working fallback; otherwise the active region gets its chance again.
            self._preferred = None


# --- clients -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthClientSettings:
    """How Health clients are made. ``endpoint_url`` replaces AWS's endpoint (the sandbox's
    emulator) and is signed for ``region``; credentials come from the standard chain unless
    given (the sandbox's fake ones). Secrets are kept out of ``repr``."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    connect_timeout: float = 3.0
    read_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"HealthClientSettings.{name} must be positive, got {value!r}")
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", self.region):
            raise ValueError(
                f"HealthClientSettings.region must be an AWS region such as us-east-1,"
                f" got {self.region!r}"
            )
        if self.endpoint_url is not None and not self.endpoint_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                "HealthClientSettings.endpoint_url must start with http:// or https://,"
                f" got {self.endpoint_url!r}"
            )
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "HealthClientSettings needs both access_key_id and secret_access_key, or"
                " neither (the standard credential chain)"
            )

    def override(self) -> HealthEndpoint | None:
        return HealthEndpoint(self.region, self.endpoint_url) if self.endpoint_url else None


HealthClientFactory = Callable[[HealthEndpoint], AbstractAsyncContextManager[Any]]
"""Makes an open aiobotocore ``health`` client for an endpoint (used as ``async with``)."""


def aiobotocore_client_factory(settings: HealthClientSettings) -> HealthClientFactory:
    """Clients without botocore's own retries: the source retries with its own budget, and a
    failed call must be able to move to the other endpoint."""
    session = AioSession(profile=settings.profile)
    config = AioConfig(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"mode": "standard", "total_max_attempts": 1},
        # Loading the service model is file I/O: keep it off the event loop.
        warm_up_loader_caches=True,
    )

    def make(endpoint: HealthEndpoint) -> AbstractAsyncContextManager[Any]:
        # Counted in failoverd_aws_api_calls_total like every other AWS call.
        return counted_client(
            session.create_client(
                "health",
                region_name=endpoint.region,
                endpoint_url=endpoint.url,
                config=config,
                aws_access_key_id=settings.access_key_id,
                aws_secret_access_key=settings.secret_access_key,
                aws_session_token=settings.session_token,
            ),
            "health",
        )

    return make


def clients_factory(clients: AwsClients) -> HealthClientFactory:
    """Health clients from the daemon's one client factory (its timeouts, credentials or
    role), each signed for its endpoint's region, without botocore's own retries (the
    source has its own budget, and moves to the other endpoint on failure)."""

    def make(endpoint: HealthEndpoint) -> AbstractAsyncContextManager[Any]:
        return clients.client("health", endpoint.region, endpoint_url=endpoint.url, max_attempts=1)

    return make


def health_sources(
    policies: Sequence[Policy],
    clients: AwsClients,
    aws: AwsSettings,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> list[AwsHealthSource]:
    """One source per identity the ``aws_health`` signals read as (AWS Health events are an
    account's own: a signal with a role in a workload account polls that account), built
    from the ``aws`` settings and ``clients`` (the daemon's one factory)."""
    groups: dict[tuple[RoleKey | None, str], tuple[AwsRole | None, list[HealthWatch]]] = {}
    for policy in policies:
        for signal in policy.signals:
            if isinstance(signal, AwsHealthSignal):
                role = policy.role(signal.aws)
                watch = HealthWatch.of(policy, signal)
                key = (None if role is None else role_key(role), watched_partition([watch]).name)
                groups.setdefault(key, (role, []))[1].append(watch)
    settings = HealthClientSettings(
        endpoint_url=aws.health_endpoint_url or aws.endpoint_url,
        connect_timeout=aws.connect_timeout,
        read_timeout=aws.read_timeout,
    )
    out = []
    for (_, partition), (role, watches) in groups.items():
        name = SOURCE if role is None else f"{SOURCE}:{role.role_arn}"
        if role is None and partition != COMMERCIAL.name:
            name = f"{SOURCE}:{partition}"  # one default-identity source per partition
        out.append(
            AwsHealthSource(
                policies,
                settings=settings,
                client_factory=clients_factory(clients.with_role(role)),
                clock=clock,
                watches=watches,
                name=name,
                partition=partition_named(partition),
            )
        )
    return out


# --- options and watches -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AwsHealthOptions:
    """Tuning of the poller; the defaults suit the real API."""

    call_timeout: float = 10.0  # per API call, on top of botocore's socket timeouts
    retry_budget: float = 20.0  # seconds of backoff per poll, across all its calls
    max_attempts: int = 6  # per call, across endpoints
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    subscription_retry_interval: float = 1800.0
    page_size: int = 100
    max_pages: int = 20  # per query; more open events than this is not a healthy account
    endpoint_refresh: float = 300.0
    resolve_timeout: float = 3.0

    def __post_init__(self) -> None:
        for name in (
            "call_timeout",
            "backoff_base",
            "backoff_cap",
            "subscription_retry_interval",
            "endpoint_refresh",
            "resolve_timeout",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"AwsHealthOptions.{name} must be positive, got {value!r}")
        if not (math.isfinite(self.retry_budget) and self.retry_budget >= 0):
            raise ValueError(f"AwsHealthOptions.retry_budget must be >= 0, got {self.retry_budget}")
        if not 1 <= self.max_attempts <= 20:
            raise ValueError(
                f"AwsHealthOptions.max_attempts must be 1..20, got {self.max_attempts}"
            )
        if not 1 <= self.page_size <= 100:
            raise ValueError(f"AwsHealthOptions.page_size must be 1..100, got {self.page_size}")
        if self.max_pages < 1:
            raise ValueError(f"AwsHealthOptions.max_pages must be >= 1, got {self.max_pages}")


@dataclass(frozen=True, slots=True)
class HealthWatch:
    """One ``aws_health`` signal of one policy: what to match and how often."""

    service: str  # the policy's service
    signal: str
    regions: tuple[str, ...]
    aws_services: frozenset[str]  # upper-case Health service codes
    categories: frozenset[str]
    resources: frozenset[str]
    interval: float

    @classmethod
    def of(cls, policy: Policy, signal: AwsHealthSignal) -> HealthWatch:
        if not (math.isfinite(signal.poll_interval) and signal.poll_interval > 0):
            raise ValueError(
                f"policy {policy.service!r} signal {signal.name!r}: poll_interval must be"
                f" positive, got {signal.poll_interval}"
            )
        return cls(
            service=policy.service,
            signal=signal.name,
            regions=tuple(policy.regions),
            # Health service codes are upper case (EC2, RDS); the API matches them exactly.
            aws_services=frozenset(s.upper() for s in signal.services),
            categories=frozenset(signal.categories),
            resources=frozenset(signal.resources),
            interval=float(signal.poll_interval),
        )

    def could_match(self, event: HealthEvent) -> bool:
        """Region, service, category and status match; affected resources not checked."""
        return (
            event.status == "open"
            and event.region in self.regions
            and event.service.upper() in self.aws_services
            and event.category in self.categories
        )


def watched_partition(watches: Sequence[HealthWatch]) -> Partition:
    """The partition of the watched regions (the commercial one when nothing is watched or
    a region is unknown to botocore)."""
    for watch in watches:
        for region in watch.regions:
            with contextlib.suppress(ValueError):
                return partition_of(region)
    return COMMERCIAL


def watches_of(policies: Iterable[Policy]) -> list[HealthWatch]:
    return [
        HealthWatch.of(p, s) for p in policies for s in p.signals if isinstance(s, AwsHealthSignal)
    ]


@dataclass(frozen=True, slots=True)
class HealthEvent:
    arn: str
    service: str
    region: str
    category: str
    status: str
    scope: str
    event_type_code: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> HealthEvent:
        return cls(
            arn=str(raw.get("arn", "")),
            service=str(raw.get("service", "")),
            region=str(raw.get("region", "")),
            category=str(raw.get("eventTypeCategory", "")),
            status=str(raw.get("statusCode", "")),
            scope=str(raw.get("eventScopeCode", "")),
            event_type_code=str(raw.get("eventTypeCode", "")),
        )


def event_matches(
    watch: HealthWatch,
    region: str,
    event: HealthEvent,
    affected: Mapping[str, frozenset[str]],
) -> bool:
    """Whether ``event`` makes ``watch`` fail in ``region``. ``affected`` maps an event ARN to
    the ids/ARNs of its entities that are still affected (fetched only when needed)."""
    if event.region != region or not watch.could_match(event):
        return False
    if not watch.resources or event.scope == "PUBLIC":
        return True
    return bool(watch.resources & affected.get(event.arn, frozenset()))


@dataclass(frozen=True, slots=True)
class PollResult:
    """One poll: ``ok`` with the open/upcoming events seen, ``unavailable`` (the API did not
    answer) or ``disabled`` (no support plan includes the API)."""

    status: Literal["ok", "unavailable", "disabled"]
    events: tuple[HealthEvent, ...] = ()
    affected: Mapping[str, frozenset[str]] = field(default_factory=dict)
    reason: str = ""


class _Unavailable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _SubscriptionRequired(Exception):
    pass


# --- the source ----------------------------------------------------------------------------


class AwsHealthSource:
    """Polls the AWS Health API for the ``aws_health`` signals of the given policies.

    A :class:`~orchestrator.signals.base.SignalSource`. It owns its clients: :meth:`run`
    closes them on the way out; a caller using :meth:`poll` directly uses ``async with``.
    """

    name = SOURCE

    def __init__(
        self,
        policies: Sequence[Policy],
        *,
        settings: HealthClientSettings | None = None,
        client_factory: HealthClientFactory | None = None,
        clock: Clock = SYSTEM_CLOCK,
        options: AwsHealthOptions | None = None,
        resolver: CnameResolver | None = None,
        rng: random.Random | None = None,
        watches: Sequence[HealthWatch] | None = None,
        name: str = SOURCE,
        partition: Partition | None = None,
    ) -> None:
        self.settings = settings or HealthClientSettings()
        self.options = options or AwsHealthOptions()
        # ``watches``: a subset of the policies' (those read as one account's role).
        self.watches = watches_of(policies) if watches is None else list(watches)
        self.name = name
        self._clock = clock
        self._factory = client_factory or aiobotocore_client_factory(self.settings)
        # The partition whose Health API answers for the watched regions (validation keeps
        # a policy in one partition; health_sources() makes one source per partition).
        self.partition = partition or watched_partition(self.watches)
        override = self.settings.override()
        if override is None and not self.partition.health_regions:
            raise ValueError(f"partition {self.partition.name} has no AWS Health API endpoint")
        self.selector = EndpointSelector(
            None if override else (resolver or DnsCnameResolver(self.options.resolve_timeout)),
            clock,
            override=override,
            regions=self.partition.health_regions or HEALTH_REGIONS,
            global_name=self.partition.health_hostname or GLOBAL_ENDPOINT,
            refresh_interval=self.options.endpoint_refresh,
            resolve_timeout=self.options.resolve_timeout,
        )
        self._rng = rng or random.Random()
        self._stack = AsyncExitStack()
        self._clients: dict[HealthEndpoint, Any] = {}
        self._disabled_until: float | None = None
        self._available: bool | None = None
        self._failing: set[tuple[str, str, str]] = set()
        self._announced: set[str] = set()

    async def __aenter__(self) -> AwsHealthSource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every client (idempotent)."""
        self._clients.clear()
        stack, self._stack = self._stack, AsyncExitStack()
        with contextlib.suppress(Exception):
            await stack.aclose()

    @property
    def disabled(self) -> bool:
        """True while the account's support plan does not include the Health API."""
        return self._disabled_until is not None

    async def run(self, sink: ObservationSink) -> None:
        """Poll every watch at its interval until cancelled. Never raises but cancellation."""
        try:
            if not self.watches:
                await asyncio.Event().wait()  # nothing to watch: idle until cancelled
            start = self._clock.monotonic()
            due = dict.fromkeys(range(len(self.watches)), start)
            while True:
                now = self._clock.monotonic()
                ready = [i for i, at in due.items() if at <= now]
                if ready:
                    await self._poll_safely(sink, [self.watches[i] for i in ready])
                    after = self._clock.monotonic()
                    for i in ready:
                        due[i] = max(due[i] + self.watches[i].interval, after)
                    continue
                await self._clock.sleep(min(due.values()) - now)
        finally:
            await self.aclose()

    async def poll(
        self, sink: ObservationSink, watches: Sequence[HealthWatch] | None = None
    ) -> PollResult:
        """Poll once now for ``watches`` (default: all) and emit their observations."""
        watches = list(self.watches if watches is None else watches)
        started = self._clock.monotonic()
        result = await self._query(watches)
        self._emit(sink, watches, result, self._clock.monotonic() - started)
        return result

    async def _poll_safely(self, sink: ObservationSink, watches: list[HealthWatch]) -> None:
        try:
            await self.poll(sink, watches)
        except Exception:  # a bug here must not end the source
            log.exception("aws_health_poll_crashed")
            self._emit(sink, watches, PollResult("unavailable", reason="internal_error"), None)

    # --- querying --------------------------------------------------------------------------

    async def _query(self, watches: list[HealthWatch]) -> PollResult:
        if not watches:
            return PollResult("ok")
        now = self._clock.monotonic()
        if self._disabled_until is not None and now < self._disabled_until:
            return PollResult("disabled", reason="subscription_required")
        deadline = now + self.options.retry_budget
        try:
            events = await self._describe_events(watches, deadline)
            affected = await self._affected_entities(watches, events, deadline)
        except _SubscriptionRequired:
            self._disable()
            return PollResult("disabled", reason="subscription_required")
        except _Unavailable as exc:
            self._set_available(False, exc.reason)
            return PollResult("unavailable", reason=exc.reason)
        if self._disabled_until is not None:
            self._disabled_until = None
            HEALTH_SIGNAL_DISABLED.set(0)
            log.info("aws_health_enabled")
        self._set_available(True)
        return PollResult("ok", tuple(events), affected)

    async def _describe_events(
        self, watches: list[HealthWatch], deadline: float
    ) -> list[HealthEvent]:
        regions = sorted({r for w in watches for r in w.regions})
        services = sorted({s for w in watches for s in w.aws_services})
        categories = sorted({c for w in watches for c in w.categories})
        seen: dict[str, HealthEvent] = {}
        for region_chunk in _chunks(regions, MAX_FILTER_VALUES):
            for service_chunk in _chunks(services, MAX_FILTER_VALUES):
                query = {
                    "regions": region_chunk,
                    "services": service_chunk,
                    "eventTypeCategories": categories,
                    "eventStatusCodes": list(STATUS_CODES),
                }
                async for page in self._pages(
                    "DescribeEvents", "describe_events", {"filter": query}, deadline
                ):
                    for raw in page.get("events") or []:
                        event = HealthEvent.parse(raw)
                        seen[event.arn] = event
        return list(seen.values())

    async def _affected_entities(
        self, watches: list[HealthWatch], events: list[HealthEvent], deadline: float
    ) -> dict[str, frozenset[str]]:
        arns = sorted(
            {
                e.arn
                for e in events
                if e.scope != "PUBLIC"
                for w in watches
                if w.resources and w.could_match(e)
            }
        )
        affected: dict[str, set[str]] = {arn: set() for arn in arns}
        for chunk in _chunks(arns, MAX_FILTER_VALUES):
            args = {"filter": {"eventArns": chunk}}
            async for page in self._pages(
                "DescribeAffectedEntities", "describe_affected_entities", args, deadline
            ):
                for entity in page.get("entities") or []:
                    if entity.get("statusCode") in CLEARED_ENTITY_STATUSES:
                        continue
                    ids = affected.setdefault(str(entity.get("eventArn", "")), set())
                    for key in ("entityValue", "entityArn"):
                        if entity.get(key):
                            ids.add(str(entity[key]))
        return {arn: frozenset(ids) for arn, ids in affected.items()}

    async def _pages(
        self, operation: str, method: str, args: dict[str, Any], deadline: float
    ) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        for _ in range(self.options.max_pages):
            kwargs = dict(args, maxResults=self.options.page_size)
            if token:
                kwargs["nextToken"] = token
            page = await self._call(operation, method, kwargs, deadline)
            yield page
            token = page.get("nextToken")
            if not token:
                return
        raise _Unavailable("too_many_pages")

    async def _call(
        self, operation: str, method: str, kwargs: dict[str, Any], deadline: float
    ) -> dict[str, Any]:
        """One API call: bounded, retried with backoff within the poll's budget, moved to the
        standby endpoint when the active one does not answer."""
        candidates = await self.selector.candidates()
        index = 0
        attempt = 0
        while True:
            endpoint = candidates[index % len(candidates)]
            attempt += 1
            try:
                client = await self._client(endpoint)
                async with asyncio.timeout(self.options.call_timeout):
                    response: dict[str, Any] = await getattr(client, method)(**kwargs)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", "")) or "Unknown"
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                if code == SUBSCRIPTION_REQUIRED:
                    HEALTH_API_CALLS.labels(operation, "error").inc()
                    raise _SubscriptionRequired() from None
                if code in THROTTLING_CODES or status == 429:
                    outcome, reason = "throttled", "throttled"
                elif status >= 500:
                    outcome, reason = "unavailable", f"http_{status}"
                    self.selector.failed(endpoint)
                    index += 1
                else:
                    HEALTH_API_CALLS.labels(operation, "error").inc()
                    log.error(
                        "aws_health_call_rejected",
                        operation=operation,
                        code=code,
                        status=status,
                        endpoint=endpoint.url,
                    )
                    raise _Unavailable(f"error_{code}") from None
            except (NoCredentialsError, PartialCredentialsError) as exc:
                HEALTH_API_CALLS.labels(operation, "error").inc()
                log.error(
                    "aws_health_no_credentials", operation=operation, error=type(exc).__name__
                )
                raise _Unavailable("no_credentials") from None
            except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                outcome = "unavailable"
                reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                self.selector.failed(endpoint)
                index += 1
            else:
                HEALTH_API_CALLS.labels(operation, "ok").inc()
                self.selector.succeeded(endpoint)
                return response
            HEALTH_API_CALLS.labels(operation, outcome).inc()
            delay = self._rng.uniform(
                0.0,
                min(self.options.backoff_cap, self.options.backoff_base * 2 ** (attempt - 1)),
            )
            if attempt >= self.options.max_attempts:
                raise _Unavailable(reason)
            if self._clock.monotonic() + delay > deadline:
                raise _Unavailable(f"{reason}_budget_exhausted")
            log.debug(
                "aws_health_call_retry",
                operation=operation,
                reason=reason,
                attempt=attempt,
                delay=round(delay, 3),
                endpoint=endpoint.url,
            )
            await self._clock.sleep(delay)

    async def _client(self, endpoint: HealthEndpoint) -> Any:
        client = self._clients.get(endpoint)
        if client is None:
            client = await self._stack.enter_async_context(self._factory(endpoint))
            self._clients[endpoint] = client
        return client

    # --- state and output ------------------------------------------------------------------

    def _disable(self) -> None:
        first = self._disabled_until is None
        self._disabled_until = self._clock.monotonic() + self.options.subscription_retry_interval
        HEALTH_SIGNAL_DISABLED.set(1)
        HEALTH_API_AVAILABLE.set(0)
        self._available = False
        if first:
            log.error(
                "aws_health_subscription_required",
                message="The AWS Health API needs a Business, Enterprise On-Ramp or Enterprise"
                " Support plan on this account; the aws_health vantage point reports unknown"
                " until it is available",
                retry_in=self.options.subscription_retry_interval,
            )
        else:
            log.info(
                "aws_health_still_subscription_required",
                retry_in=self.options.subscription_retry_interval,
            )

    def _set_available(self, available: bool, reason: str = "") -> None:
        HEALTH_API_AVAILABLE.set(1 if available else 0)
        if available == self._available:
            return
        if available:
            if self._available is False:
                log.info("aws_health_api_recovered")
        else:
            log.warning("aws_health_api_unavailable", reason=reason)
        self._available = available

    def _emit(
        self,
        sink: ObservationSink,
        watches: list[HealthWatch],
        result: PollResult,
        latency: float | None,
    ) -> None:
        at = self._clock.now()
        if result.status != "ok":
            for w in watches:
                for region in w.regions:
                    sink.put(
                        Observation(
                            service=w.service,
                            region=region,
                            signal=w.signal,
                            vantage=AWS_HEALTH_VANTAGE,
                            ok=None,
                            at=at,
                            source=SOURCE,
                            latency=latency,
                            detail=FailureKind.HEALTH_API_UNAVAILABLE,
                        )
                    )
            return
        self._announce_upcoming(watches, result.events)
        open_by_service: dict[tuple[str, str], set[str]] = {}
        for w in watches:
            for region in w.regions:
                matching = sorted(
                    e.arn for e in result.events if event_matches(w, region, e, result.affected)
                )
                open_by_service.setdefault((w.service, region), set()).update(matching)
                self._note_transition(w, region, matching)
                sink.put(
                    Observation(
                        service=w.service,
                        region=region,
                        signal=w.signal,
                        vantage=AWS_HEALTH_VANTAGE,
                        ok=not matching,
                        at=at,
                        source=SOURCE,
                        target=_summary(matching),
                        latency=latency,
                        detail=FailureKind.EVENT if matching else "",
                    )
                )
        for (service, region), arns in open_by_service.items():
            HEALTH_OPEN_EVENTS.labels(service, region).set(len(arns))

    def _note_transition(self, w: HealthWatch, region: str, matching: list[str]) -> None:
        key = (w.service, region, w.signal)
        if matching and key not in self._failing:
            self._failing.add(key)
            log.warning(
                "aws_health_event_open",
                service=w.service,
                region=region,
                signal=w.signal,
                events=matching[:5],
                count=len(matching),
            )
        elif not matching and key in self._failing:
            self._failing.discard(key)
            log.info("aws_health_event_cleared", service=w.service, region=region, signal=w.signal)

    def _announce_upcoming(self, watches: list[HealthWatch], events: Sequence[HealthEvent]) -> None:
        upcoming = {
            e.arn: e
            for e in events
            if e.status == "upcoming"
            and any(
                e.region in w.regions
                and e.service.upper() in w.aws_services
                and e.category in w.categories
                for w in watches
            )
        }
        if len(self._announced) > 10_000:
            self._announced.clear()  # bounded memory; at worst an upcoming event is re-logged
        for arn, e in upcoming.items():
            if arn not in self._announced:
                self._announced.add(arn)
                log.info(
                    "aws_health_event_upcoming",
                    arn=arn,
                    region=e.region,
                    aws_service=e.service,
                    event_type=e.event_type_code,
                )


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _summary(arns: Sequence[str], limit: int = 3) -> str:
    """The first few event ARNs, for evidence; a region-wide outage can open dozens."""
    head = ",".join(arns[:limit])
    return head if len(arns) <= limit else f"{head},+{len(arns) - limit} more"
