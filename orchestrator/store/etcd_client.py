"""A small client for etcd's v3 JSON gateway (``/v3/...`` over HTTP), for the etcd store.

Why the gateway and not gRPC: the gateway is part of every etcd v3 server (3.4 serves it on
the client port), it needs no grpcio (the asyncio gRPC clients for etcd are alpha and pull it
in), and aiohttp is already how failoverd speaks HTTP, with the same TLS and timeout handling.
The JSON mapping is the protobuf one: ``bytes`` fields (keys, values) are base64, int64 fields
are JSON strings, and fields at their zero value are left out of answers (``"succeeded"`` is
missing from a failed txn, ``"TTL"`` from the keepalive of an expired lease).

Endpoints. Calls go to the endpoint that answered last; on a connection error, a timeout or
an "unavailable" answer (no leader, quorum lost, request timed out) the client tries the next
one. One ``deadline`` bounds a call including every rotation: each attempt gets an equal
share of the time left among the endpoints still to try in this pass (so a member that hangs
without quorum cannot eat the whole budget before a healthy one is tried), passes repeat with
jittered backoff until the deadline, and then :class:`StoreUnavailable` names the last error.
A request that was sent and got no answer may have been applied: the caller makes its writes
safe to repeat (the etcd store's txns detect their own earlier success).

Auth. With a username, the client gets a token from ``/v3/auth/authenticate`` and sends it in
the ``Authorization`` header; a token the server calls invalid (expired simple tokens) is
renewed once per call. Wrong credentials raise :class:`EtcdAuthError` (a :class:`StoreError`,
not "unavailable": retrying does not help). The password and the token never appear in a log
line, an exception or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from orchestrator.store.base import StoreError, StoreUnavailable
from orchestrator.telemetry import get_logger

_log = get_logger("failoverd.store.etcd")

# gRPC status codes the gateway reports in {"code": N}.
_UNKNOWN = 2
_INVALID_ARGUMENT = 3
_DEADLINE_EXCEEDED = 4
_NOT_FOUND = 5
_PERMISSION_DENIED = 7
_RESOURCE_EXHAUSTED = 8
_FAILED_PRECONDITION = 9
_ABORTED = 10
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16

_RETRYABLE_CODES = frozenset({_DEADLINE_EXCEEDED, _RESOURCE_EXHAUSTED, _ABORTED, _UNAVAILABLE})
# Unknown (2) carries both "context deadline exceeded" and real failures: judge by the text.
_RETRYABLE_TEXT = (
    "deadline exceeded",
    "timed out",
    "no leader",
    "leader changed",
    "not capable",
    "too many requests",
    "stopped",
    "unhealthy",
)
_AUTH_FAILED = "authentication failed"
# Our token is missing, expired, or predates a change of users or roles ("old revision").
_INVALID_TOKEN = ("invalid auth token", "user name is empty", "revision of auth store is old")
_AUTH_NOT_ENABLED = "authentication is not enabled"

_BACKOFF_START = 0.05
_BACKOFF_MAX = 0.5
# Below this much time left, another attempt cannot get an answer: give up now.
_MIN_ATTEMPT = 0.005


class EtcdAuthError(StoreError):
    """etcd refused our credentials, or requires credentials we do not have."""


class EtcdRequestError(StoreError):
    """etcd answered with an error that retrying will not fix (``code`` is the gRPC code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def not_found(self) -> bool:
        return self.code == _NOT_FOUND


class _Retry(Exception):
    """This attempt failed in a way another endpoint (or a later attempt) may not."""


class _InvalidToken(Exception):
    pass


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(data: object) -> bytes:
    if not isinstance(data, str):
        return b""
    return base64.b64decode(data)


def as_int(doc: Mapping[str, Any], key: str) -> int:
    """An int64 field of an answer (a JSON string; missing means 0)."""
    value = doc.get(key, 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StoreUnavailable(f"etcd answered {key}={value!r}, not an integer") from None


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


class EtcdClient:
    """JSON-gateway calls to the first endpoint of ``endpoints`` that answers.

    ``request`` returns the decoded answer or raises :class:`StoreUnavailable` (nothing
    answered in time), :class:`EtcdAuthError` or :class:`EtcdRequestError`. Not thread-safe;
    one event loop.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ssl_context: ssl.SSLContext | None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self._ssl = ssl_context
        self._username = username
        self._password = password
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._current = 0
        self._http: aiohttp.ClientSession | None = None  # made on first use, in the loop
        self.last_error = ""
        self._closed = False

    def __repr__(self) -> str:
        return f"EtcdClient(endpoints={self.endpoints!r}, username={self._username!r})"

    @property
    def current_endpoint(self) -> str:
        return self.endpoints[self._current]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._http is not None:
            await self._http.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True),
                # Bounds come from each call's deadline; no session-wide total.
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"Content-Type": "application/json"},
            )
        return self._http

    async def request(self, path: str, body: Mapping[str, Any], deadline: float) -> dict[str, Any]:
        """POST ``body`` to ``path`` on a working endpoint; ``deadline`` is on the loop's
        clock (``loop.time()``)."""
        if self._closed:
            raise StoreUnavailable("etcd store is closed")
        loop = asyncio.get_running_loop()
        n = len(self.endpoints)
        backoff = _BACKOFF_START
        reauthenticated = False
        while True:
            start = self._current
            k = 0
            while k < n:
                if self._closed:  # closed while this call was under way
                    raise StoreUnavailable("etcd store is closed")
                index = (start + k) % n
                endpoint = self.endpoints[index]
                remaining = deadline - loop.time()
                if remaining < _MIN_ATTEMPT:
                    raise self._unavailable()
                budget = remaining / (n - k)
                try:
                    answer = await self._attempt(endpoint, path, body, budget)
                except _Retry as exc:
                    self.last_error = f"{endpoint}: {exc}"
                    _log.debug("etcd_attempt_failed", endpoint=endpoint, path=path, error=str(exc))
                    k += 1
                    continue
                except _InvalidToken:
                    if reauthenticated or self._username is None:
                        raise EtcdAuthError(
                            "etcd requires authentication and refused our token"
                            if self._username is not None
                            else "etcd requires authentication: configure a username and a"
                            " password file for the etcd store"
                        ) from None
                    reauthenticated = True
                    self._token = None
                    _log.info("etcd_token_renewed", endpoint=endpoint)
                    continue  # the same endpoint, with a new token
                self._current = index
                return answer
            remaining = deadline - loop.time()
            if remaining < _MIN_ATTEMPT:
                raise self._unavailable()
            await asyncio.sleep(min(remaining, backoff * random.uniform(0.5, 1.0)))
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _unavailable(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"etcd: no endpoint answered in time (last error: {self.last_error or 'none'})"
        )

    async def _attempt(
        self, endpoint: str, path: str, body: Mapping[str, Any], budget: float
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        attempt_deadline = loop.time() + budget
        headers: dict[str, str] = {}
        if self._username is not None:
            token = await self._authenticate(endpoint, attempt_deadline)
            if token is not None:
                headers["Authorization"] = token
        return await self._post(endpoint, path, body, headers, attempt_deadline)

    async def _authenticate(self, endpoint: str, deadline: float) -> str | None:
        async with self._auth_lock:
            if self._token is not None:
                return self._token if self._token != "" else None
            assert self._username is not None
            try:
                answer = await self._post(
                    endpoint,
                    "/v3/auth/authenticate",
                    {"name": self._username, "password": self._password or ""},
                    {},
                    deadline,
                )
            except EtcdRequestError as exc:
                if _AUTH_NOT_ENABLED in str(exc):
                    # Credentials configured, auth off: work without them ("" = no token).
                    _log.warning("etcd_auth_not_enabled", endpoint=endpoint)
                    self._token = ""
                    return None
                raise
            except _InvalidToken:
                raise EtcdAuthError(
                    f"etcd refused the credentials of user {self._username!r}"
                    " (authentication failed: check the username and the password file)"
                ) from None
            token = answer.get("token")
            if not isinstance(token, str) or not token:
                raise _Retry("authenticate answered without a token")
            self._token = token
            return token

    async def _post(
        self,
        endpoint: str,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        deadline: float,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        budget = deadline - loop.time()
        if budget <= 0:
            raise _Retry("no time left for this endpoint")
        try:
            async with asyncio.timeout(budget):
                async with self._session().post(
                    endpoint + path, data=json.dumps(body), headers=headers
                ) as response:
                    text = await response.text()
                    status = response.status
        except TimeoutError:
            raise _Retry(f"no answer within {budget:.3g}s") from None
        except RuntimeError:
            if self._closed:  # "Session is closed": close() ran while we were waiting
                raise StoreUnavailable("etcd store is closed") from None
            raise
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLError):
                # Not transient, but another member may have a good certificate.
                raise _Retry(f"TLS error: {exc}") from None
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        return self._decode(path, status, text)

    def _decode(self, path: str, status: int, text: str) -> dict[str, Any]:
        try:
            doc = json.loads(text) if text else {}
        except ValueError:
            if status >= 500 or status == 429:
                raise _Retry(f"HTTP {status}") from None
            raise EtcdRequestError(
                _UNKNOWN, f"etcd {path}: HTTP {status}, not JSON: {text[:200]!r}"
            ) from None
        if not isinstance(doc, dict):
            raise EtcdRequestError(_UNKNOWN, f"etcd {path}: unexpected answer {text[:200]!r}")
        # Streaming endpoints (lease keepalive) wrap each message: {"result": ...} or
        # {"error": {...}}.
        if path.endswith("/keepalive"):
            if isinstance(doc.get("error"), dict):
                doc = doc["error"]
            elif isinstance(doc.get("result"), dict):
                return dict(doc["result"])
        if status == 200 and "error" not in doc:
            return doc
        code = doc.get("code", doc.get("grpc_code", _UNKNOWN))  # unary / streaming errors
        code = code if isinstance(code, int) else _UNKNOWN
        message = str(doc.get("message") or doc.get("error") or f"HTTP {status}")
        lowered = message.lower()
        # From authenticate, "authentication failed" means wrong credentials (the caller turns
        # it into EtcdAuthError); elsewhere these mean our token is missing or expired.
        if (
            code == _UNAUTHENTICATED
            or _AUTH_FAILED in lowered
            or any(t in lowered for t in _INVALID_TOKEN)
        ):
            raise _InvalidToken
        if code == _PERMISSION_DENIED:
            raise EtcdAuthError(
                f"etcd denied {path} to user {self._username!r}: {message} (grant the user"
                " read-write on the store's prefix)"
            )
        if code in _RETRYABLE_CODES or status >= 500 or any(t in lowered for t in _RETRYABLE_TEXT):
            if code in (_INVALID_ARGUMENT, _NOT_FOUND, _FAILED_PRECONDITION):
                raise EtcdRequestError(code, f"etcd {path}: {message}")
            raise _Retry(message)
        raise EtcdRequestError(code, f"etcd {path}: {message}")
