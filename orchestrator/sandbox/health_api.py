"""An AWS Health API emulator that speaks the real JSON 1.1 protocol, on loopback.

moto has no AWS Health, so the sandbox and the tests run this instead. Any AWS SDK pointed at
it with ``endpoint_url`` works unchanged (botocore, boto3 and aiobotocore are tested against
it): requests are ``POST /`` with ``X-Amz-Target: AWSHealth_20160804.<Operation>`` and
``Content-Type: application/x-amz-json-1.1``, signed with SigV4 (the signature is not checked,
but an ``Authorization`` header must be present); answers are JSON 1.1 with timestamps as
epoch seconds, errors are ``{"__type": ..., "message": ...}`` with the real HTTP status.

Operations (field names and types from botocore's ``health`` 2016-08-04 service model):

* ``DescribeEvents``: every ``filter`` member except ``actionabilities``/``personas`` is
  matched the way the real API documents it (values OR'ed within a member, members AND'ed);
  results are sorted by ``lastUpdatedTime``, newest first; ``maxResults`` 1..100 (default
  ``default_page_size``) with an opaque ``nextToken`` that is only valid for the same request
  (else ``InvalidPaginationToken``).
* ``DescribeEventDetails``: ``successfulSet`` for known ARNs, ``failedSet`` for the others.
* ``DescribeAffectedEntities``: ``filter.eventArns`` required; entity filters and pagination
  as above.
* Errors: ``UnsupportedLocale`` (a ``locale`` other than the supported ones, default only
  ``en``), ``InvalidPaginationToken``, ``ValidationException``, ``UnknownOperationException``
  (unknown or unimplemented ``X-Amz-Target``), ``SerializationException`` (bad body or
  content type), ``MissingAuthenticationTokenException`` (403, unsigned request), and the
  faults set by the control API: ``ThrottlingException`` (400),
  ``SubscriptionRequiredException`` (400, an account without a Business/Enterprise support
  plan) and ``ServiceUnavailableException`` (503).

Not emulated (nothing here needs them): the organizational view operations,
``DescribeEventTypes``/``DescribeEventAggregates``/``DescribeEntityAggregates``, the
Smithy RPCv2 CBOR wire protocol (botocore picks JSON 1.1 for ``health``), signature checks.
The ``failedSet`` error name for an unknown ARN (``UnknownEventArn``) is a guess: AWS does
not document it.

Control, from Python (thread-safe: the server may run on another thread's loop)::

    emulator = HealthApiEmulator(port=0)
    await emulator.start()                  # on the running loop, or
    emulator.start_background()             # on a thread of its own (sync tests, sandbox)
    arn = emulator.open_event("EC2", "us-east-1", affected_entities=["i-0abc"])
    emulator.update_event(arn, description="Recovering")
    emulator.close_event(arn)
    emulator.set_mode("throttle", calls=2)  # the next 2 API calls are throttled
    emulator.set_delay(1.5)                 # every API answer waits 1.5 s
    await emulator.stop()   /   emulator.stop_background()

Control, over HTTP (for another process, e.g. ``failoverd sandbox``); bodies are JSON, errors
are ``{"error": "..."}`` with status 400 (bad input) or 404 (unknown event):

* ``POST /_emulator/open`` ``{"service", "region", "event_type_code"?, "category"?,
  "status"?, "affected_entities"?, "description"?, "availability_zone"?}`` -> 201
  ``{"arn": ...}``
* ``POST /_emulator/update`` ``{"arn", "status"?, "description"?, "affected_entities"?}``
* ``POST /_emulator/close`` ``{"arn"}``
* ``POST /_emulator/mode`` ``{"mode": "normal"|"throttle"|"subscription_required"|
  "unavailable", "calls"?: n}``
* ``POST /_emulator/delay`` ``{"seconds": s}``
* ``POST /_emulator/reset`` (no events, normal mode, no delay, counters cleared)
* ``GET /_emulator/state`` -> ``{"mode", "delay", "calls": {operation: n}, "events": [...]}``
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import secrets
import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.sandbox.loopback import LoopbackServer
from orchestrator.telemetry import get_logger

TARGET_PREFIX: Final = "AWSHealth_20160804"
JSON_CONTENT_TYPE: Final = "application/x-amz-json-1.1"
CATEGORIES: Final = ("issue", "accountNotification", "scheduledChange", "investigation")
EVENT_STATUSES: Final = ("open", "closed", "upcoming")
ENTITY_STATUSES: Final = ("IMPAIRED", "UNIMPAIRED", "UNKNOWN", "PENDING", "RESOLVED")
SCOPES: Final = ("PUBLIC", "ACCOUNT_SPECIFIC", "NONE")
MODES: Final = ("normal", "throttle", "subscription_required", "unavailable")
DEFAULT_ACCOUNT: Final = "123456789012"
MAX_PAGE: Final = 100

_SERVICE_RE = re.compile(r"^[^:/]{2,30}$")
_REGION_RE = re.compile(r"^[^:/]{2,25}$")
_TYPE_CODE_RE = re.compile(r"^[a-zA-Z0-9_\-]{3,100}$")
_AZ_RE = re.compile(r"^[a-z]{2,4}-[0-9a-z\-]{4,16}$")
_TOKEN_RE = re.compile(r"^[a-zA-Z0-9=/+_.\-]{4,10000}$")

log = get_logger("failoverd.sandbox.health_api")


class UnknownEventError(KeyError):
    """The control API was given an event ARN the emulator does not hold."""

    def __str__(self) -> str:
        return f"no such event: {self.args[0]!r}"


class _ApiError(Exception):
    """An error answer of the emulated API."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message


def _validation(path: str, value: object, constraint: str) -> _ApiError:
    return _ApiError(
        400,
        "ValidationException",
        f"1 validation error detected: Value {json.dumps(value)} at '{path}' failed to satisfy"
        f" constraint: {constraint}",
    )


@dataclass(slots=True)
class _Entity:
    entity_arn: str
    entity_value: str
    status: str
    last_updated: float
    tags: dict[str, str] = field(default_factory=dict)

    def shape(self, event_arn: str, account: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "entityArn": self.entity_arn,
            "eventArn": event_arn,
            "entityValue": self.entity_value,
            "awsAccountId": account,
            "lastUpdatedTime": self.last_updated,
            "statusCode": self.status,
        }
        if self.tags:
            out["tags"] = dict(self.tags)
        return out


@dataclass(slots=True)
class _Event:
    arn: str
    service: str
    event_type_code: str
    category: str
    region: str
    availability_zone: str | None
    start: float
    end: float | None
    last_updated: float
    status: str
    scope: str
    description: str
    seq: int
    entities: list[_Entity] = field(default_factory=list)

    def shape(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "arn": self.arn,
            "service": self.service,
            "eventTypeCode": self.event_type_code,
            "eventTypeCategory": self.category,
            "region": self.region,
            "startTime": self.start,
            "lastUpdatedTime": self.last_updated,
            "statusCode": self.status,
            "eventScopeCode": self.scope,
        }
        if self.availability_zone:
            out["availabilityZone"] = self.availability_zone
        if self.end is not None:
            out["endTime"] = self.end
        return out


# --- request parsing ---------------------------------------------------------------------


def _str_list(
    container: Mapping[str, Any],
    key: str,
    path: str,
    *,
    max_len: int | None = None,
    enum: Sequence[str] | None = None,
    pattern: re.Pattern[str] | None = None,
) -> list[str] | None:
    if key not in container or container[key] is None:
        return None
    value = container[key]
    where = f"{path}.{key}" if path else key
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _ApiError(400, "SerializationException", f"{where} must be a list of strings")
    if not value:
        raise _validation(where, value, "Member must have length greater than or equal to 1")
    if max_len is not None and len(value) > max_len:
        raise _validation(where, value, f"Member must have length less than or equal to {max_len}")
    for item in value:
        if enum is not None and item not in enum:
            raise _validation(
                where,
                value,
                f"Member must satisfy enum value set: [{', '.join(enum)}]",
            )
        if pattern is not None and not pattern.match(item):
            raise _validation(
                where, value, f"Member must satisfy regular expression pattern: {pattern.pattern}"
            )
    return list(value)


def _time_ranges(
    container: Mapping[str, Any], key: str, path: str
) -> list[tuple[float | None, float | None]] | None:
    if key not in container or container[key] is None:
        return None
    value = container[key]
    where = f"{path}.{key}"
    if not isinstance(value, list) or not value or len(value) > 10:
        raise _validation(where, value, "Member must be a list of 1 to 10 date-time ranges")
    out: list[tuple[float | None, float | None]] = []
    for item in value:
        if not isinstance(item, dict):
            raise _ApiError(400, "SerializationException", f"{where} items must be objects")
        bounds: list[float | None] = []
        for end in ("from", "to"):
            bound = item.get(end)
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, int | float)
            ):
                raise _ApiError(
                    400, "SerializationException", f"{where}.{end} must be epoch seconds"
                )
            bounds.append(None if bound is None else float(bound))
        out.append((bounds[0], bounds[1]))
    return out


def _in_ranges(value: float | None, ranges: list[tuple[float | None, float | None]]) -> bool:
    if value is None:
        return False
    return any((lo is None or value >= lo) and (hi is None or value <= hi) for lo, hi in ranges)


def _tags_match(entity_tags: Mapping[str, str], tag_sets: list[dict[str, str]]) -> bool:
    return any(all(entity_tags.get(k) == v for k, v in ts.items()) for ts in tag_sets)


def _tag_filter(container: Mapping[str, Any], path: str) -> list[dict[str, str]] | None:
    value = container.get("tags")
    if value is None:
        return None
    ok = isinstance(value, list) and all(
        isinstance(ts, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in ts.items())
        for ts in value
    )
    if not ok:
        raise _ApiError(400, "SerializationException", f"{path}.tags must be a list of maps")
    return [dict(ts) for ts in value]


def _page_size(body: Mapping[str, Any], default: int) -> int:
    value = body.get("maxResults")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _ApiError(400, "SerializationException", "maxResults must be an integer")
    if not 1 <= value <= MAX_PAGE:
        raise _validation(
            "maxResults",
            value,
            f"Member must have value between 1 and {MAX_PAGE}",
        )
    return value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class HealthApiEmulator(LoopbackServer):
    """The AWS Health API of one emulated account, served on a loopback port.

    Control methods are thread-safe and take effect for the next request. ``start``/``stop``
    run the server on the caller's loop; ``start_background``/``stop_background`` run it on a
    thread of its own. Both are bounded in time and ``stop`` is idempotent.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        account_id: str = DEFAULT_ACCOUNT,
        default_page_size: int = 10,
        supported_locales: Iterable[str] = ("en",),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(host, port)
        if not 1 <= default_page_size <= MAX_PAGE:
            raise ValueError(f"default_page_size must be 1..{MAX_PAGE}, got {default_page_size}")
        if not re.fullmatch(r"\d{12}", account_id):
            raise ValueError(f"account_id must be 12 digits, got {account_id!r}")
        self.account_id = account_id
        self.default_page_size = default_page_size
        self.supported_locales = frozenset(supported_locales)
        self._clock = clock
        self._lock = threading.Lock()
        self._events: dict[str, _Event] = {}
        self._seq = 0
        self._mode = "normal"
        self._mode_calls: int | None = None
        self._delay = 0.0
        self._calls: Counter[str] = Counter()
        self._requests: deque[dict[str, Any]] = deque(maxlen=1000)
        # Tokens carry this so that a token from another emulator instance is rejected.
        self._nonce = secrets.token_hex(4)

    # --- lifecycle (LoopbackServer: start/stop, start_background/stop_background) ----------
    what = "the Health API emulator"
    event = "health_emulator"

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self._api)
        app.router.add_post("/_emulator/open", self._ctl_open)
        app.router.add_post("/_emulator/update", self._ctl_update)
        app.router.add_post("/_emulator/close", self._ctl_close)
        app.router.add_post("/_emulator/mode", self._ctl_mode)
        app.router.add_post("/_emulator/delay", self._ctl_delay)
        app.router.add_post("/_emulator/reset", self._ctl_reset)
        app.router.add_get("/_emulator/state", self._ctl_state)
        return app

    # --- control API -----------------------------------------------------------------------

    def open_event(
        self,
        service: str,
        region: str,
        *,
        event_type_code: str | None = None,
        category: str = "issue",
        status: str = "open",
        affected_entities: Iterable[str | Mapping[str, Any]] = (),
        description: str = "",
        availability_zone: str | None = None,
        scope: str | None = None,
        start_time: float | None = None,
    ) -> str:
        """Open (or announce, with ``status="upcoming"``) an event; returns its ARN.

        ``event_type_code`` defaults to ``AWS_<SERVICE>_OPERATIONAL_ISSUE``; an entity is an
        id/ARN string or ``{"entityValue", "statusCode"?, "tags"?}``; ``scope`` defaults to
        ACCOUNT_SPECIFIC with entities, PUBLIC without.
        """
        if not _SERVICE_RE.match(service):
            raise ValueError(f"service must be 2-30 characters without ':' or '/': {service!r}")
        if not _REGION_RE.match(region):
            raise ValueError(f"region must be 2-25 characters without ':' or '/': {region!r}")
        code = event_type_code or f"AWS_{service.upper()}_OPERATIONAL_ISSUE"
        if not _TYPE_CODE_RE.match(code):
            raise ValueError(f"event_type_code must match {_TYPE_CODE_RE.pattern}: {code!r}")
        _check_choice("category", category, CATEGORIES)
        _check_choice("status", status, ("open", "upcoming"))
        if availability_zone is not None and not _AZ_RE.match(availability_zone):
            raise ValueError(f"availability_zone is not an AZ name: {availability_zone!r}")
        now = self._clock.now()
        entities = self._entities(region, affected_entities, now)
        if scope is None:
            scope = "ACCOUNT_SPECIFIC" if entities else "PUBLIC"
        _check_choice("scope", scope, SCOPES)
        event_id = f"{code}_{uuid.uuid4().hex[:10].upper()}"
        arn = f"arn:aws:health:{region}::event/{service}/{code}/{event_id}"
        with self._lock:
            self._seq += 1
            self._events[arn] = _Event(
                arn=arn,
                service=service,
                event_type_code=code,
                category=category,
                region=region,
                availability_zone=availability_zone,
                start=now if start_time is None else start_time,
                end=None,
                last_updated=now,
                status=status,
                scope=scope,
                description=description or f"{service} {category} in {region}",
                seq=self._seq,
                entities=entities,
            )
        log.info("health_emulator_event_opened", arn=arn, service=service, region=region)
        return arn

    def update_event(
        self,
        arn: str,
        *,
        status: str | None = None,
        description: str | None = None,
        affected_entities: Iterable[str | Mapping[str, Any]] | None = None,
    ) -> None:
        """Change an event; it becomes the most recently updated one."""
        if status is not None:
            _check_choice("status", status, EVENT_STATUSES)
        with self._lock:
            event = self._get(arn)
            now = self._clock.now()
            if affected_entities is not None:
                event.entities = self._entities(event.region, affected_entities, now)
            if description is not None:
                event.description = description
            if status is not None and status != event.status:
                event.status = status
                if status == "closed":
                    event.end = now
                    for entity in event.entities:
                        entity.status, entity.last_updated = "RESOLVED", now
                else:
                    event.end = None
            self._touch(event, now)

    def close_event(self, arn: str) -> None:
        """Close an event: ``endTime`` is set and its entities are RESOLVED."""
        self.update_event(arn, status="closed")
        log.info("health_emulator_event_closed", arn=arn)

    def set_mode(self, mode: str, *, calls: int | None = None) -> None:
        """Fault mode of the API: ``normal``, ``throttle`` (400 ThrottlingException),
        ``subscription_required`` (400 SubscriptionRequiredException) or ``unavailable``
        (503). With ``calls`` the fault applies to that many API calls, then ``normal``."""
        _check_choice("mode", mode, MODES)
        if calls is not None and (isinstance(calls, bool) or not isinstance(calls, int)):
            raise ValueError(f"calls must be an integer, got {calls!r}")
        if calls is not None and calls < 1:
            raise ValueError(f"calls must be at least 1, got {calls}")
        with self._lock:
            self._mode = mode
            self._mode_calls = None if mode == "normal" else calls
        log.info("health_emulator_mode", mode=mode, calls=calls)

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    def set_delay(self, seconds: float) -> None:
        """Every API answer waits this long first (a slow API, for timeout tests)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"delay must be a non-negative number of seconds, got {seconds!r}")
        with self._lock:
            self._delay = float(seconds)

    def reset(self) -> None:
        """No events, normal mode, no delay, counters cleared."""
        with self._lock:
            self._events.clear()
            self._mode, self._mode_calls, self._delay = "normal", None, 0.0
            self._calls.clear()
            self._requests.clear()

    def calls(self, operation: str | None = None) -> int:
        """API requests received (faulted and rejected ones too), by operation or in all."""
        with self._lock:
            return self._calls[operation] if operation else sum(self._calls.values())

    def requests(self) -> list[dict[str, Any]]:
        """The last API requests: ``{"operation", "signing_region", "body"}``, oldest first."""
        with self._lock:
            return [dict(r) for r in self._requests]

    def events(self) -> list[dict[str, Any]]:
        """Every event, as DescribeEvents shows it, newest update first."""
        with self._lock:
            return [e.shape() for e in self._sorted(self._events.values())]

    # --- control helpers -------------------------------------------------------------------

    def _get(self, arn: str) -> _Event:
        event = self._events.get(arn)
        if event is None:
            raise UnknownEventError(arn)
        return event

    def _touch(self, event: _Event, now: float) -> None:
        self._seq += 1
        event.seq = self._seq
        event.last_updated = now

    def _entities(
        self, region: str, specs: Iterable[str | Mapping[str, Any]], now: float
    ) -> list[_Entity]:
        out: list[_Entity] = []
        if isinstance(specs, str | bytes):
            raise ValueError("affected_entities must be a list of ids or objects, not a string")
        for spec in specs:
            value: object
            status: object = "IMPAIRED"
            tags: dict[str, str] = {}
            if isinstance(spec, str):
                value = spec
            elif isinstance(spec, Mapping):
                value = spec.get("entityValue")
                status = spec.get("statusCode", "IMPAIRED")
                raw_tags = spec.get("tags") or {}
                if not isinstance(raw_tags, Mapping):
                    raise ValueError(f"entity tags must be a map: {spec!r}")
                tags = {str(k): str(v) for k, v in raw_tags.items()}
            else:
                raise ValueError(f"an affected entity is an id string or an object: {spec!r}")
            if not isinstance(value, str) or not value or len(value) > 1224:
                raise ValueError(f"entityValue must be a string of 1-1224 characters: {spec!r}")
            if not isinstance(status, str) or status not in ENTITY_STATUSES:
                raise ValueError(
                    f"entity statusCode must be one of {', '.join(ENTITY_STATUSES)}: {spec!r}"
                )
            digest = hashlib.sha1(f"{region}/{value}/{uuid.uuid4()}".encode()).hexdigest()[:20]
            out.append(
                _Entity(
                    entity_arn=f"arn:aws:health:{region}:{self.account_id}:entity/{digest}",
                    entity_value=value,
                    status=status,
                    last_updated=now,
                    tags=tags,
                )
            )
        return out

    @staticmethod
    def _sorted(events: Iterable[_Event]) -> list[_Event]:
        return sorted(events, key=lambda e: (e.last_updated, e.seq), reverse=True)

    # --- the API ---------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        prefix, _, operation = target.partition(".")
        auth = request.headers.get("Authorization", "")
        raw = await request.read()
        # Counted, and its fault decided, on arrival: a slow answer still in flight after a
        # test's reset must not count towards (or use up the faults of) the next test.
        self._record(operation or target, auth, raw)
        fault = self._take_fault()
        with self._lock:
            delay = self._delay
        if delay:
            await asyncio.sleep(delay)
        try:
            if prefix != TARGET_PREFIX or not operation:
                raise _ApiError(
                    400, "UnknownOperationException", f"Unknown operation target {target!r}"
                )
            if not auth:
                raise _ApiError(
                    403, "MissingAuthenticationTokenException", "Missing Authentication Token"
                )
            if fault is not None:
                raise fault
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type != JSON_CONTENT_TYPE:
                raise _ApiError(
                    400,
                    "SerializationException",
                    f"Content-Type must be {JSON_CONTENT_TYPE}, got {content_type!r}",
                )
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise _ApiError(400, "SerializationException", "Body is not JSON") from None
            if not isinstance(body, dict):
                raise _ApiError(400, "SerializationException", "Body must be a JSON object")
            handler = {
                "DescribeEvents": self._describe_events,
                "DescribeEventDetails": self._describe_event_details,
                "DescribeAffectedEntities": self._describe_affected_entities,
            }.get(operation)
            if handler is None:
                raise _ApiError(
                    400,
                    "UnknownOperationException",
                    f"Operation {operation} is unknown to (or not emulated by) this endpoint",
                )
            self._check_locale(body)
            with self._lock:
                payload = handler(body)
            return _json_response(200, payload)
        except _ApiError as err:
            return _json_response(err.status, {"__type": err.type, "message": err.message}, err)

    def _record(self, operation: str, auth: str, raw: bytes) -> None:
        match = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/", auth)
        try:
            body: Any = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        with self._lock:
            self._calls[operation] += 1
            self._requests.append(
                {
                    "operation": operation,
                    "signing_region": match.group(1) if match else None,
                    "body": body,
                }
            )

    def _take_fault(self) -> _ApiError | None:
        """The fault this request gets from the current mode (using up one of its calls)."""
        with self._lock:
            mode = self._mode
            if mode == "normal":
                return None
            if self._mode_calls is not None:
                self._mode_calls -= 1
                if self._mode_calls <= 0:
                    self._mode, self._mode_calls = "normal", None
        if mode == "throttle":
            return _ApiError(400, "ThrottlingException", "Rate exceeded")
        if mode == "subscription_required":
            return _ApiError(
                400,
                "SubscriptionRequiredException",
                "The AWS Health API requires a Business, Enterprise On-Ramp or Enterprise"
                " Support plan",
            )
        return _ApiError(503, "ServiceUnavailableException", "Service Unavailable")

    def _check_locale(self, body: Mapping[str, Any]) -> None:
        locale = body.get("locale")
        if locale is not None and locale not in self.supported_locales:
            raise _ApiError(400, "UnsupportedLocale", f"Locale {locale!r} is not supported")

    def _paginate(
        self, operation: str, body: Mapping[str, Any], items: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], str | None]:
        size = _page_size(body, self.default_page_size)
        query = {k: v for k, v in body.items() if k not in ("nextToken", "maxResults")}
        digest = hashlib.sha256(f"{operation}{_canonical(query)}".encode()).hexdigest()[:16]
        offset = 0
        token = body.get("nextToken")
        if token is not None:
            offset = self._read_token(token, digest)
        page = items[offset : offset + size]
        end = offset + len(page)
        if end >= len(items):
            return page, None
        raw = _canonical({"o": end, "q": digest, "n": self._nonce}).encode()
        return page, base64.urlsafe_b64encode(raw).decode()

    def _read_token(self, token: object, digest: str) -> int:
        invalid = _ApiError(400, "InvalidPaginationToken", f"Invalid pagination token {token!r}")
        if not isinstance(token, str) or not _TOKEN_RE.match(token):
            raise invalid
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
        except (ValueError, binascii.Error):
            raise invalid from None
        if (
            not isinstance(data, dict)
            or data.get("q") != digest
            or data.get("n") != self._nonce
            or not isinstance(data.get("o"), int)
            or data["o"] < 0
        ):
            raise invalid
        offset: int = data["o"]
        return offset

    def _describe_events(self, body: Mapping[str, Any]) -> dict[str, Any]:
        raw_filter = body.get("filter") or {}
        if not isinstance(raw_filter, dict):
            raise _ApiError(400, "SerializationException", "filter must be an object")
        f = raw_filter
        arns = _str_list(f, "eventArns", "filter", max_len=10)
        codes = _str_list(f, "eventTypeCodes", "filter", max_len=10)
        services = _str_list(f, "services", "filter", max_len=10, pattern=_SERVICE_RE)
        regions = _str_list(f, "regions", "filter", max_len=10, pattern=_REGION_RE)
        zones = _str_list(f, "availabilityZones", "filter")
        categories = _str_list(f, "eventTypeCategories", "filter", max_len=10, enum=CATEGORIES)
        statuses = _str_list(f, "eventStatusCodes", "filter", max_len=6, enum=EVENT_STATUSES)
        entity_arns = _str_list(f, "entityArns", "filter", max_len=99)
        entity_values = _str_list(f, "entityValues", "filter", max_len=99)
        starts = _time_ranges(f, "startTimes", "filter")
        ends = _time_ranges(f, "endTimes", "filter")
        updates = _time_ranges(f, "lastUpdatedTimes", "filter")
        tags = _tag_filter(f, "filter")

        def keep(e: _Event) -> bool:
            if arns is not None and e.arn not in arns:
                return False
            if codes is not None and e.event_type_code not in codes:
                return False
            if services is not None and e.service not in services:
                return False
            if regions is not None and e.region not in regions:
                return False
            if zones is not None and e.availability_zone not in zones:
                return False
            if categories is not None and e.category not in categories:
                return False
            if statuses is not None and e.status not in statuses:
                return False
            if entity_arns is not None and not any(x.entity_arn in entity_arns for x in e.entities):
                return False
            if entity_values is not None and not any(
                x.entity_value in entity_values for x in e.entities
            ):
                return False
            if starts is not None and not _in_ranges(e.start, starts):
                return False
            if ends is not None and not _in_ranges(e.end, ends):
                return False
            if updates is not None and not _in_ranges(e.last_updated, updates):
                return False
            return tags is None or any(_tags_match(x.tags, tags) for x in e.entities)

        matched = [e.shape() for e in self._sorted(self._events.values()) if keep(e)]
        page, token = self._paginate("DescribeEvents", body, matched)
        out: dict[str, Any] = {"events": page}
        if token:
            out["nextToken"] = token
        return out

    def _describe_event_details(self, body: Mapping[str, Any]) -> dict[str, Any]:
        arns = _str_list(body, "eventArns", "", max_len=10)
        if arns is None:
            raise _validation("eventArns", None, "Member must not be null")
        ok: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for arn in arns:
            event = self._events.get(arn)
            if event is None:
                failed.append(
                    {
                        "eventArn": arn,
                        "errorName": "UnknownEventArn",
                        "errorMessage": f"Event {arn} was not found",
                    }
                )
                continue
            ok.append(
                {
                    "event": event.shape(),
                    "eventDescription": {"latestDescription": event.description},
                    "eventMetadata": {},
                }
            )
        return {"successfulSet": ok, "failedSet": failed}

    def _describe_affected_entities(self, body: Mapping[str, Any]) -> dict[str, Any]:
        f = body.get("filter")
        if not isinstance(f, dict):
            raise _validation("filter", f, "Member must not be null")
        arns = _str_list(f, "eventArns", "filter", max_len=10)
        if arns is None:
            raise _validation("filter.eventArns", None, "Member must not be null")
        entity_arns = _str_list(f, "entityArns", "filter", max_len=99)
        entity_values = _str_list(f, "entityValues", "filter", max_len=99)
        statuses = _str_list(f, "statusCodes", "filter", max_len=5, enum=ENTITY_STATUSES)
        updates = _time_ranges(f, "lastUpdatedTimes", "filter")
        tags = _tag_filter(f, "filter")
        out: list[dict[str, Any]] = []
        for arn in arns:
            event = self._events.get(arn)
            if event is None:
                continue
            for x in event.entities:
                if entity_arns is not None and x.entity_arn not in entity_arns:
                    continue
                if entity_values is not None and x.entity_value not in entity_values:
                    continue
                if statuses is not None and x.status not in statuses:
                    continue
                if updates is not None and not _in_ranges(x.last_updated, updates):
                    continue
                if tags is not None and not _tags_match(x.tags, tags):
                    continue
                out.append(x.shape(arn, self.account_id))
        page, token = self._paginate("DescribeAffectedEntities", body, out)
        result: dict[str, Any] = {"entities": page}
        if token:
            result["nextToken"] = token
        return result

    # --- HTTP control endpoints ------------------------------------------------------------

    async def _ctl_open(self, request: web.Request) -> web.Response:
        body = await _ctl_body(request)
        try:
            arn = self.open_event(
                _req_str(body, "service"),
                _req_str(body, "region"),
                event_type_code=_opt_str(body, "event_type_code"),
                category=_opt_str(body, "category") or "issue",
                status=_opt_str(body, "status") or "open",
                affected_entities=_opt_list(body, "affected_entities") or (),
                description=_opt_str(body, "description") or "",
                availability_zone=_opt_str(body, "availability_zone"),
            )
        except ValueError as exc:
            return _ctl_error(400, str(exc))
        return web.json_response({"arn": arn}, status=201)

    async def _ctl_update(self, request: web.Request) -> web.Response:
        body = await _ctl_body(request)
        try:
            self.update_event(
                _req_str(body, "arn"),
                status=_opt_str(body, "status"),
                description=_opt_str(body, "description"),
                affected_entities=_opt_list(body, "affected_entities"),
            )
        except UnknownEventError as exc:
            return _ctl_error(404, str(exc))
        except ValueError as exc:
            return _ctl_error(400, str(exc))
        return web.json_response({"ok": True})

    async def _ctl_close(self, request: web.Request) -> web.Response:
        body = await _ctl_body(request)
        try:
            self.close_event(_req_str(body, "arn"))
        except UnknownEventError as exc:
            return _ctl_error(404, str(exc))
        except ValueError as exc:
            return _ctl_error(400, str(exc))
        return web.json_response({"ok": True})

    async def _ctl_mode(self, request: web.Request) -> web.Response:
        body = await _ctl_body(request)
        try:
            calls = body.get("calls")
            self.set_mode(_req_str(body, "mode"), calls=calls)
        except ValueError as exc:
            return _ctl_error(400, str(exc))
        return web.json_response({"ok": True})

    async def _ctl_delay(self, request: web.Request) -> web.Response:
        body = await _ctl_body(request)
        try:
            self.set_delay(body.get("seconds"))  # type: ignore[arg-type]  # checked inside
        except ValueError as exc:
            return _ctl_error(400, str(exc))
        return web.json_response({"ok": True})

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _ctl_state(self, request: web.Request) -> web.Response:
        with self._lock:
            state = {
                "mode": self._mode,
                "delay": self._delay,
                "calls": dict(self._calls),
            }
        state["events"] = self.events()
        return web.json_response(state)


# --- helpers -------------------------------------------------------------------------------


def _check_choice(what: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")


def _json_response(
    status: int, payload: Mapping[str, Any], error: _ApiError | None = None
) -> web.Response:
    headers = {"x-amzn-RequestId": str(uuid.uuid4())}
    if error is not None:
        headers["x-amzn-ErrorType"] = error.type
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type=JSON_CONTENT_TYPE,
        headers=headers,
    )


class _CtlError(web.HTTPBadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


async def _ctl_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if await request.read() else {}
    except ValueError:
        raise _CtlError("the body must be JSON") from None
    if not isinstance(body, dict):
        raise _CtlError("the body must be a JSON object")
    return body


def _ctl_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _req_str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} is required (a non-empty string)")
    return value


def _opt_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string")
    return value


def _opt_list(body: Mapping[str, Any], key: str) -> list[Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, list):
        raise ValueError(f"{key!r} must be a list")
    return value
