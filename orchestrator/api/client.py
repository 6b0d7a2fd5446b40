"""A small async client of the failoverd HTTP API (what the operator CLI uses).

Every request has a total timeout. Reads are retried on connection errors (exponential
backoff with full jitter, within a time budget) because they are idempotent; commands are
sent once: a failover must not be issued twice because an answer got lost — the operator
checks ``status`` and decides.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp

from orchestrator import __version__

DEFAULT_API = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 10.0
READ_ATTEMPTS = 3
READ_BUDGET = 5.0  # seconds spent retrying reads, at most
BACKOFF_BASE = 0.2
# The API tells the CLI's commands from other clients' by this prefix (the audit's source).
USER_AGENT = f"failoverd-cli/{__version__}"

T = TypeVar("T")


class ApiUnreachable(Exception):
    """The API could not be reached, or did not answer in time, or answered non-JSON."""


class ApiRefused(Exception):
    """The API answered with an error status; ``code`` is its machine-readable error."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.code = str(body.get("error", "http_error"))
        self.message = str(body.get("message", f"HTTP {status}"))
        super().__init__(f"{self.message} (HTTP {status}, {self.code})")


def validate_base_url(url: str) -> str:
    """The API address without a trailing slash; ``ValueError`` naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the API address must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"the API address has no host: {url!r}")
    try:
        parts.port  # noqa: B018 -- urlsplit validates the port lazily
    except ValueError:
        raise ValueError(f"the API address has an invalid port: {url!r}") from None
    if parts.query or parts.fragment:
        raise ValueError(f"the API address must not have a query or fragment: {url!r}")
    return url.rstrip("/")


class ApiClient:
    """Use as ``async with ApiClient(url, token=...) as api:``. Not shared between loops."""

    def __init__(
        self,
        base_url: str = DEFAULT_API,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = USER_AGENT,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.base_url = validate_base_url(base_url)
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url!r}, token={'set' if self._token else 'unset'})"

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, headers={"User-Agent": self._user_agent}
        )
        return self

    def at(self, base_url: str) -> ApiClient:
        """The same client (token, timeout, session) sending to another instance: the leader
        a follower named. Use inside this client's ``async with``."""
        other = ApiClient(base_url, token=self._token, user_agent=self._user_agent)
        other._timeout = self._timeout
        other._session = self._session_or_fail()
        return other

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- reads ---------------------------------------------------------------------------
    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body): a 503 is an answer here, not an error."""
        try:
            return True, await self._get("/readyz")
        except ApiRefused as exc:
            if exc.status == 503:
                return False, exc.body
            raise

    async def status(self) -> dict[str, Any]:
        return await self._get("/v1/status")

    async def service(self, name: str) -> dict[str, Any]:
        return await self._get(f"/v1/services/{quote(name, safe='')}")

    async def run(self, run_id: str) -> dict[str, Any]:
        return await self._get(f"/v1/runs/{quote(run_id, safe='')}")

    async def audit(
        self,
        *,
        service: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """The audit log; ``since``/``until`` as the API takes them (RFC 3339, epoch seconds
        or a duration ago such as ``2h``): the daemon parses them, against its clock."""
        query = {"service": service, "since": since, "until": until, "limit": limit}
        params = {k: str(v) for k, v in query.items() if v is not None}
        return await self._get("/v1/audit", params)

    async def report(self, run_id: str) -> str:
        """A run's post-incident report (Markdown)."""
        path = f"/v1/runs/{quote(run_id, safe='')}/report"
        return await self._retried(lambda: self._fetch_text(path))

    # --- commands ------------------------------------------------------------------------
    async def command(
        self,
        service: str,
        command: str,
        *,
        reason: str,
        to: str | None = None,
        force: bool = False,
        by: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason}
        if to is not None:
            body["to"] = to
        if force:
            body["force"] = True
        if by is not None:
            body["by"] = by
        path = f"/v1/services/{quote(service, safe='')}/{quote(command, safe='')}"
        return await self._send("POST", path, body)

    async def pause_all(self, *, reason: str, by: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason}
        if by is not None:
            body["by"] = by
        return await self._send("POST", "/v1/pause", body)

    # --- plumbing ------------------------------------------------------------------------
    async def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return await self._retried(lambda: self._send("GET", path, None, params))

    async def _retried(self, call: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + READ_BUDGET
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return await call()
            except ApiUnreachable:
                wait = random.uniform(0, BACKOFF_BASE * 2 ** (attempt - 1))
                if attempt == READ_ATTEMPTS or time.monotonic() + wait > deadline:
                    raise
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use ApiClient as 'async with ApiClient(...) as api'")
        return self._session

    async def _fetch_text(self, path: str) -> str:
        """GET a text document; an error status still answers JSON (``ApiRefused``)."""
        session = self._session_or_fail()
        url = self.base_url + path
        headers = {"Accept": "text/markdown, application/json"}
        try:
            async with session.get(url, headers=headers) as resp:
                status = resp.status
                text = await resp.text()
                media = resp.content_type
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ApiUnreachable(
                f"cannot reach the failoverd API at {self.base_url}: {reason}"
            ) from None
        if status < 400:
            if media != "text/markdown":
                raise ApiUnreachable(f"{url} answered {media or 'no media type'}: is it failoverd?")
            return text
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if media != "application/json" or not isinstance(payload, dict):
            raise ApiUnreachable(f"{url} answered HTTP {status} without JSON: is it failoverd?")
        raise ApiRefused(status, payload)

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        session = self._session_or_fail()
        headers = {"Accept": "application/json"}
        if self._token is not None and method != "GET":
            headers["Authorization"] = f"Bearer {self._token}"
        url = self.base_url + path
        try:
            async with session.request(
                method, url, json=body, headers=headers, params=params
            ) as resp:
                try:
                    payload = await resp.json(content_type=None)
                except ValueError:
                    raise ApiUnreachable(
                        f"{url} answered HTTP {resp.status} without JSON: is it failoverd?"
                    ) from None
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__  # a timeout's str() is empty
            raise ApiUnreachable(
                f"cannot reach the failoverd API at {self.base_url}: {reason}"
            ) from None
        if not isinstance(payload, dict):
            raise ApiUnreachable(f"{url} answered an unexpected JSON document")
        if status >= 400:
            raise ApiRefused(status, payload)
        return payload
