"""The HTTP API: an aiohttp application over :class:`~orchestrator.daemon.control.Control`.

Reads are open (the API binds to loopback by default); every mutating call needs the bearer
token and goes through ``Control.command`` (or ``pause_all``), which journals who/what/why
before anything happens. Errors are always JSON ``{"error": code, "message": ...}``; bad input
is a 4xx naming the field, and anything unexpected becomes a logged JSON 500.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError

from orchestrator.api import schemas as s
from orchestrator.api.auth import TokenAuth
from orchestrator.api.errors import ApiError
from orchestrator.api.openapi import QueryParam, RouteDoc, build_openapi
from orchestrator.api.status_page import load_page, status_page
from orchestrator.audit import TIME_HINT, parse_time
from orchestrator.daemon.control import Control, NotLeaderError, ServiceSnapshot
from orchestrator.engine.state import Command, CommandSource, OperatorCommand
from orchestrator.incident_report import report_markdown
from orchestrator.store.base import StoreError
from orchestrator.telemetry import (
    API_COMMANDS,
    API_REQUEST_DURATION,
    API_REQUESTS,
    exception_place,
    get_logger,
)

log = get_logger("failoverd.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_TOKEN_LABEL = "api"
MAX_BODY = 64 * 1024  # a command body is a few hundred bytes; this bounds junk, not use
MAX_RUN_ID = 128
AUDIT_LIMIT = 100  # entries per /v1/audit answer unless ?limit= says otherwise
AUDIT_MAX_LIMIT = 1000
AUDIT_PARAMS = frozenset({"service", "since", "until", "limit"})
# Control.command returns "within a few seconds" by contract; past this the caller gets a
# 504 and a hint to check the status (the command may still have been journaled).
COMMAND_TIMEOUT = 15.0

# Which optional fields each command honours.
_ALLOWED: dict[Command, frozenset[str]] = {
    Command.FAILOVER: frozenset({"to", "force"}),
    Command.SWITCHOVER: frozenset({"to"}),
    Command.FAILBACK: frozenset(),
    Command.APPROVE: frozenset(),
    Command.PAUSE: frozenset(),
    Command.RESUME: frozenset(),
}
SERVICE_COMMANDS = tuple(_ALLOWED)

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_REALM = 'Bearer realm="failoverd"'


@dataclass(frozen=True)
class HostRule:
    """Which ``Host`` headers the API answers: IP addresses (any, when it listens on every
    address; else the one it listens on, or any loopback one on loopback), ``localhost`` on
    loopback or every address, and the names operators list. A name not listed is what DNS
    rebinding looks like: a browser that resolved the attacker's name to this address."""

    bind: ipaddress.IPv4Address | ipaddress.IPv6Address
    names: frozenset[str]

    @classmethod
    def of(cls, bind: str, names: Iterable[str] = ()) -> HostRule:
        return cls(ipaddress.ip_address(bind), frozenset(n.lower().rstrip(".") for n in names))

    def allows(self, host: str) -> bool:
        name = _host_name(host)
        if name is None:
            return False
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            if name in self.names:
                return True
            return name == "localhost" and (self.bind.is_loopback or self.bind.is_unspecified)
        if self.bind.is_unspecified or ip == self.bind:
            return True
        return self.bind.is_loopback and ip.is_loopback


def _host_name(host: str) -> str | None:
    """The name or address in a ``Host`` header (``[v6]:port``, ``v4:port``, ``name``)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not _PORT.fullmatch(host[end + 1 :])):
            return None
        return host[1:end]
    name, _, port = host.partition(":")
    if (port and not port.isdigit()) or not name:
        return None
    return name.rstrip(".")


_PORT = re.compile(r":\d{1,5}")
_HOSTS = web.AppKey("hosts", HostRule)
_CONTROL = web.AppKey("control", Control)
_AUTH = web.AppKey("auth", TokenAuth)
_REGISTRY = web.AppKey("registry", CollectorRegistry)
_OPENAPI = web.AppKey("openapi", bytes)
_COMMAND_TIMEOUT = web.AppKey("command_timeout", float)

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


# --- helpers ------------------------------------------------------------------------------
def _json(body: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=body.model_dump_json(), status=status, content_type="application/json")


def _error_response(err: ApiError) -> web.Response:
    response = _json(err.body, err.status)
    response.headers.update(err.headers)
    return response


def _validation_details(exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in e["loc"]) or "body"
        if e["type"] == "extra_forbidden":
            out.append(f"{field}: unknown field")
        else:
            out.append(f"{field}: {e['msg']}")
    return out


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # json.loads keeps the last: two readers of one body could disagree on it.
            raise _BodyError(f"the key {key[:40]!r} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _BodyError(f"{name} is not JSON")


class _BodyError(ValueError):
    """A body that parsed as JSON only by Python's leniency: said as it is."""


def parse_json_body(raw: bytes) -> Any:
    """The JSON in ``raw``; :class:`ApiError` 400 saying what is wrong in the client's terms
    (position, not the parser's internals)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the body is not valid JSON: not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _BodyError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        message = f"the body is not valid JSON: {exc.msg.lower()} at {where}"
        raise ApiError(400, "malformed_json", message) from None
    except RecursionError:
        raise ApiError(
            400, "malformed_json", "the body is not valid JSON: nested too deeply"
        ) from None
    except ValueError:  # an integer beyond sys.get_int_max_str_digits()
        raise ApiError(
            400, "malformed_json", "the body is not valid JSON: a number is too long"
        ) from None


async def _read_command(request: web.Request) -> s.CommandRequest:
    if request.content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the command as JSON with 'Content-Type: application/json'",
        )
    try:
        raw = await request.read()  # bounded by client_max_size: 413 beyond it
    except (ConnectionError, HttpProcessingError):
        # The client hung up (or broke the framing) mid-body: its fault, and nobody is left
        # to read an answer; not a 500.
        raise ApiError(400, "incomplete_body", "the request body ended early") from None
    if not raw.strip():
        raise ApiError(400, "empty_body", "send a JSON object with a non-empty 'reason'")
    data = parse_json_body(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    try:
        return s.CommandRequest.model_validate(data)
    except ValidationError as exc:
        details = _validation_details(exc)
        raise ApiError(
            400, "invalid_body", "invalid fields: " + "; ".join(details), details=details
        ) from None


def _control(request: web.Request) -> Control:
    return request.app[_CONTROL]


# --- middleware ---------------------------------------------------------------------------
@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer is JSON on error; the unexpected is logged and becomes a 500."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as err:
        status = err.status
        return _error_response(err)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise  # redirects and the like are not errors
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
        headers.pop("Content-Length", None)
        return _error_response(ApiError(exc.status, code, exc.reason, headers=headers))
    except ConnectionError:
        # The client went away while we answered: nothing to log as our error.
        status = 400
        log.info("api_client_disconnected", method=request.method, route=route)
        return _error_response(ApiError(400, "client_disconnected", "the client hung up"))
    except Exception as exc:
        # The exception's type and its stack (code only), never its text: some quote request
        # data (headers included) in their message.
        log.error(
            "api_unhandled_error",
            method=request.method,
            route=route,
            error=type(exc).__name__,
            where=exception_place(exc),
            stack="".join(traceback.format_tb(exc.__traceback__)),
        )
        return _error_response(
            ApiError(500, "internal_error", "an unexpected error occurred; it has been logged")
        )
    finally:
        API_REQUESTS.labels(request.method, route, str(status)).inc()
        API_REQUEST_DURATION.labels(route).observe(time.monotonic() - started)


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuses what no handler should see: a ``Host`` this API does not answer for (DNS
    rebinding: a browser sent here by an attacker's name carries that name) and, on calls
    that need the token, an ``Authorization`` header that is not ASCII (no token is)."""
    hosts = request.app[_HOSTS]
    host = request.headers.get(hdrs.HOST)
    if host is not None and not hosts.allows(host):
        raise ApiError(
            421,
            "misdirected_request",
            "this API does not answer for that Host; use its address, or add the name to"
            " http.allowed_hosts",
        )
    if request.method not in _READ_METHODS:
        authorization = request.headers.get(hdrs.AUTHORIZATION)
        if authorization is not None and not (
            authorization.isascii() and authorization.isprintable()
        ):
            raise ApiError(
                401,
                "unauthorized",
                "the Authorization header must be 'Bearer <token>' in printable ASCII",
                headers={"WWW-Authenticate": f'{_REALM}, error="invalid_request"'},
            )
    return await handler(request)


# --- read handlers ------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    return _json(s.HealthBody(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    r = _control(request).readiness()
    return _json(s.ReadinessBody(ready=r.ready, problems=list(r.problems)), 200 if r.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    # Rendering 1,000 services' series takes ~0.5 s: off the event loop, which the engine
    # and the lease renewal share.
    body = await asyncio.to_thread(generate_latest, request.app[_REGISTRY])
    # web.Response(content_type=...) refuses parameters; the exposition type carries two.
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    control = _control(request)
    services = []
    for name in control.services():
        snap = control.snapshot(name)
        if snap is not None:  # a service removed by a reload between the two calls
            services.append(s.summary_body(snap))
    return _json(
        s.StatusBody(
            node_id=control.node_id,
            leader=control.leader(),
            is_leader=control.is_leader(),
            policy_version=control.policy_version,
            leader_api=control.leader_api(),
            leader_policy_version=control.leader_policy_version(),
            services=services,
        )
    )


async def readiness_report(request: web.Request) -> web.Response:
    return _json(s.readiness_report_body(_control(request).readiness_report()))


def _snapshot(control: Control, name: str) -> ServiceSnapshot:
    snap = control.snapshot(name) if name in control.services() else None
    if snap is None:
        known = ", ".join(sorted(control.services())) or "none"
        raise ApiError(404, "unknown_service", f"no service named {name!r} (known: {known})")
    return snap


async def service(request: web.Request) -> web.Response:
    control = _control(request)
    snap = _snapshot(control, request.match_info["name"])
    return _json(s.service_body(snap, node_id=control.node_id, leader=control.leader()))


async def run(request: web.Request) -> web.Response:
    run_id = request.match_info["id"]
    _check_run_id(run_id)
    async with asyncio.timeout(request.app[_COMMAND_TIMEOUT]):
        progress = await _control(request).run_progress(run_id)
    if progress is None:
        raise ApiError(404, "unknown_run", f"no run with id {run_id!r}")
    return _json(s.run_body(progress))


def _check_run_id(run_id: str) -> None:
    if len(run_id) > MAX_RUN_ID:
        raise ApiError(400, "invalid_run_id", f"run ids are at most {MAX_RUN_ID} characters")


def _bad_param(name: str, message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"{name}: {message}", details=[f"{name}: {message}"])


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\":,]+/)+([^\s/'\":,]+)")


def public_text(text: str) -> str:
    """``text`` with absolute paths cut to their last part: how the daemon's files are laid
    out is for its log, not for every client."""
    return _ABSOLUTE_PATH.sub(r"\1", text)


def _store_unavailable(exc: Exception) -> ApiError:
    detail = public_text(str(exc)) or type(exc).__name__
    return ApiError(503, "store_unavailable", f"the state store did not answer: {detail}")


def _audit_query(request: web.Request) -> tuple[str | None, float | None, float | None, int]:
    query = request.query
    unknown = sorted(set(query) - AUDIT_PARAMS)
    if unknown:
        known = ", ".join(sorted(AUDIT_PARAMS))
        raise _bad_param(unknown[0], f"unknown parameter (known: {known})")
    for name in AUDIT_PARAMS:
        if len(query.getall(name, [])) > 1:
            raise _bad_param(name, "given more than once")
    service = query.get("service")
    if service is not None:
        service = service.strip()
        if not service or len(service) > s.MAX_NAME or not service.isprintable():
            raise _bad_param("service", f"expected a service name (1-{s.MAX_NAME} characters)")
    now = time.time()
    bounds: dict[str, float | None] = {}
    for name in ("since", "until"):
        raw = query.get(name)
        try:
            bounds[name] = None if raw is None else parse_time(raw, now)
        except ValueError:
            raise _bad_param(name, f"expected {TIME_HINT}, got {raw!r}") from None
    since, until = bounds["since"], bounds["until"]
    if since is not None and until is not None and since > until:
        raise _bad_param("since", "is after until")
    raw_limit = query.get("limit")
    limit = AUDIT_LIMIT
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= AUDIT_MAX_LIMIT:
            raise _bad_param("limit", f"expected an integer from 1 to {AUDIT_MAX_LIMIT}")
        limit = int(raw_limit)
    return service, since, until, limit


async def audit(request: web.Request) -> web.Response:
    service, since, until, limit = _audit_query(request)
    try:
        async with asyncio.timeout(request.app[_COMMAND_TIMEOUT]):
            found = await _control(request).audit_entries(
                service, since=since, until=until, limit=limit
            )
    except StoreError as exc:
        raise _store_unavailable(exc) from None
    except TimeoutError:
        raise ApiError(504, "timeout", "the state store did not answer in time") from None
    return _json(s.audit_body(found, service=service, since=since, until=until, limit=limit))


async def run_report(request: web.Request) -> web.Response:
    run_id = request.match_info["id"]
    _check_run_id(run_id)
    try:
        async with asyncio.timeout(request.app[_COMMAND_TIMEOUT]):
            data = await _control(request).run_report(run_id)
    except StoreError as exc:
        raise _store_unavailable(exc) from None
    except TimeoutError:
        raise ApiError(504, "timeout", "the state store did not answer in time") from None
    if data is None:
        raise ApiError(404, "unknown_run", f"no run with id {run_id!r}")
    return web.Response(text=report_markdown(data), content_type="text/markdown", charset="utf-8")


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_OPENAPI], content_type="application/json")


# --- mutating handlers --------------------------------------------------------------------
def _not_leader(exc: NotLeaderError) -> ApiError:
    where = f" at {exc.leader_api}" if exc.leader_api else ""
    return ApiError(
        409,
        "not_leader",
        f"this instance does not lead; send the command to {exc.leader or 'the leader'}{where}",
        leader=exc.leader,
        leader_api=exc.leader_api,
    )


CLI_AGENT = "failoverd-cli/"  # the User-Agent prefix of the `failoverd` command's requests


def _source(request: web.Request) -> CommandSource:
    """Where a command came from, for the audit: the CLI names itself in its User-Agent."""
    agent = request.headers.get("User-Agent", "")
    return CommandSource.CLI if agent.startswith(CLI_AGENT) else CommandSource.API


def _principal(request: web.Request) -> str:
    """The label of the request's token (who the audit names); raises 401/403."""
    return request.app[_AUTH].check(request.headers.get("Authorization"))


def _command_handler(command: Command) -> Handler:
    allowed = _ALLOWED[command]

    async def handle(request: web.Request) -> web.Response:
        principal = _principal(request)
        control = _control(request)
        name = request.match_info["name"]
        snap = _snapshot(control, name)
        body = await _read_command(request)
        extra = sorted((body.model_fields_set & {"to", "force"}) - allowed)
        if extra:
            raise ApiError(
                400,
                "field_not_allowed",
                f"{command.value} does not take {', '.join(repr(f) for f in extra)}",
            )
        if body.to is not None and body.to not in snap.regions:
            raise ApiError(
                400,
                "unknown_region",
                f"{name} has no region {body.to!r} (regions: {', '.join(snap.regions)})",
            )
        op = OperatorCommand(
            command,
            to=body.to,
            force=body.force,
            by=principal,
            reason=body.reason,
            source=_source(request),
            user=body.by or "",
        )
        ctx = {"service": name, "command": command.value, "to": op.to, "force": op.force}
        try:
            async with asyncio.timeout(request.app[_COMMAND_TIMEOUT]):
                result = await control.command(name, op)
        except NotLeaderError as exc:
            API_COMMANDS.labels(command.value, "not_leader").inc()
            log.info(
                "api_command_not_leader", **ctx, by=op.by, leader=exc.leader, api=exc.leader_api
            )
            raise _not_leader(exc) from None
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                "the daemon did not answer in time; check the status before retrying",
            ) from None
        outcome = "accepted" if result.accepted else "refused"
        API_COMMANDS.labels(command.value, outcome).inc()
        log.info(
            "api_command",
            **ctx,
            by=op.by,
            user=op.user or None,
            source=op.source.value,
            reason=op.reason,
            outcome=outcome,
            run_id=result.run_id,
        )
        payload = s.command_result_body(result)
        if not result.accepted:
            raise ApiError(409, "refused", result.message, result=payload)
        return _json(payload, 202)

    handle.__name__ = f"command_{command.value}"
    return handle


async def pause_all(request: web.Request) -> web.Response:
    principal = _principal(request)
    body = await _read_command(request)
    extra = sorted(body.model_fields_set & {"to", "force"})
    if extra:
        raise ApiError(
            400, "field_not_allowed", f"pause does not take {', '.join(repr(f) for f in extra)}"
        )
    by, source, user = principal, _source(request), body.by or ""
    try:
        async with asyncio.timeout(request.app[_COMMAND_TIMEOUT]):
            await _control(request).pause_all(by, body.reason, source=source, user=user)
    except NotLeaderError as exc:
        API_COMMANDS.labels("pause_all", "not_leader").inc()
        raise _not_leader(exc) from None
    except TimeoutError:
        raise ApiError(
            504, "timeout", "the daemon did not answer in time; check the status"
        ) from None
    API_COMMANDS.labels("pause_all", "accepted").inc()
    log.info("api_pause_all", by=by, user=user or None, source=source.value, reason=body.reason)
    return _json(s.CommandResultBody(accepted=True, message="every service is paused"), 202)


# --- the route table ----------------------------------------------------------------------
_TIME_SCHEMA = {"type": "string", "examples": ["2h", "2026-11-26T16:00:00Z", "1795708800"]}
_AUDIT_QUERY = (
    QueryParam("service", {"type": "string", "maxLength": s.MAX_NAME}, "one service only"),
    QueryParam("since", _TIME_SCHEMA, f"entries at or after: {TIME_HINT}"),
    QueryParam("until", _TIME_SCHEMA, f"entries at or before: {TIME_HINT}"),
    QueryParam(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": AUDIT_MAX_LIMIT, "default": AUDIT_LIMIT},
        "the newest this many entries of the window",
    ),
)


def routes() -> list[tuple[RouteDoc, Handler]]:
    """Every route with its documentation: the app and the OpenAPI document share this."""
    table: list[tuple[RouteDoc, Handler]] = [
        (
            RouteDoc(
                "GET", "/", "status_page", "the on-call status page (HTML)", {200: "text/html"}
            ),
            status_page,
        ),
        (
            RouteDoc("GET", "/healthz", "healthz", "the process is alive", {200: s.HealthBody}),
            healthz,
        ),
        (
            RouteDoc(
                "GET",
                "/readyz",
                "readyz",
                "policies loaded, store reachable, leader known",
                {200: s.ReadinessBody, 503: s.ReadinessBody},
            ),
            readyz,
        ),
        (
            RouteDoc(
                "GET", "/metrics", "metrics", "Prometheus metrics", {200: CONTENT_TYPE_LATEST}
            ),
            metrics,
        ),
        (
            RouteDoc("GET", "/v1/status", "status", "every service in brief", {200: s.StatusBody}),
            status,
        ),
        (
            RouteDoc(
                "GET",
                "/v1/readiness",
                "readiness_report",
                "the latest periodic readiness evaluation per service",
                {200: s.ReadinessReportBody},
            ),
            readiness_report,
        ),
        (
            RouteDoc(
                "GET",
                "/v1/services/{name}",
                "service",
                "one service: verdicts with evidence, phase, reasons, RTO, lag, run",
                {200: s.ServiceBody},
            ),
            service,
        ),
        (
            RouteDoc("GET", "/v1/runs/{id}", "run", "a run and its steps", {200: s.RunBody}),
            run,
        ),
        (
            RouteDoc(
                "GET",
                "/v1/runs/{id}/report",
                "run_report",
                "the run's post-incident report (Markdown): timeline, evidence at decision"
                " time, step durations, RTO and RPO achieved",
                {200: "text/markdown", 503: s.ErrorBody},
            ),
            run_report,
        ),
        (
            RouteDoc(
                "GET",
                "/v1/audit",
                "audit",
                "the audit log: decision changes, operator commands, runs and steps, oldest"
                " first (the newest `limit` in the window)",
                {200: s.AuditBody, 503: s.ErrorBody},
                query=_AUDIT_QUERY,
            ),
            audit,
        ),
        (
            RouteDoc(
                "GET",
                "/v1/openapi.json",
                "openapi",
                "this document",
                {200: "application/json"},
            ),
            openapi,
        ),
    ]
    for command in SERVICE_COMMANDS:
        table.append(
            (
                RouteDoc(
                    "POST",
                    f"/v1/services/{{name}}/{command.value}",
                    command.value,
                    f"{command.value} (journaled with who and why)",
                    {202: s.CommandResultBody, 409: s.ErrorBody},
                    request=s.CommandRequest,
                    authenticated=True,
                    tags=("commands",),
                ),
                _command_handler(command),
            )
        )
    table.append(
        (
            RouteDoc(
                "POST",
                "/v1/pause",
                "pause_all",
                "the global brake: pause every service",
                {202: s.CommandResultBody, 409: s.ErrorBody},
                request=s.CommandRequest,
                authenticated=True,
                tags=("commands",),
            ),
            pause_all,
        )
    )
    return table


def make_app(
    control: Control,
    *,
    token: str | None = None,
    tokens: Mapping[str, str] | None = None,
    metrics_registry: CollectorRegistry = REGISTRY,
    token_label: str = DEFAULT_TOKEN_LABEL,
    command_timeout: float = COMMAND_TIMEOUT,
    bind: str = "127.0.0.1",
    allowed_hosts: Iterable[str] = (),
) -> web.Application:
    """The API over ``control``. ``tokens`` (label -> token: the label is who the audit
    names), or one ``token`` labelled ``token_label``; neither disables mutating calls
    (403); :func:`replace_tokens` swaps them later (a reload). ``bind`` (the address
    served) and ``allowed_hosts`` decide which ``Host`` headers are answered."""
    if command_timeout <= 0:
        raise ValueError(f"command_timeout must be positive, got {command_timeout}")
    app = web.Application(
        middlewares=[error_middleware, guard_middleware], client_max_size=MAX_BODY
    )
    app[_HOSTS] = HostRule.of(bind, allowed_hosts)
    app[_CONTROL] = control
    if tokens is None and token is not None:
        tokens = {token_label: token}
    app[_AUTH] = TokenAuth(tokens)
    app[_REGISTRY] = metrics_registry
    app[_COMMAND_TIMEOUT] = float(command_timeout)
    load_page()  # a wheel built without its package data fails here, not on first view
    table = routes()
    app[_OPENAPI] = json.dumps(build_openapi(doc for doc, _ in table)).encode()
    for doc, handler in table:
        app.router.add_route(doc.method, doc.path, handler, name=doc.operation_id)
    return app


def replace_tokens(app: web.Application, tokens: Mapping[str, str] | None) -> None:
    """Use ``tokens`` for every later request (revoking the ones left out)."""
    app[_AUTH].replace(tokens)


# --- serving ------------------------------------------------------------------------------
class _Protocol(RequestHandler):
    """aiohttp's connection handler, answering a request it cannot parse with the API's JSON
    error: aiohttp's own answer quotes the bytes it choked on (a header and its token, say)
    and points at them, which is parser detail no client needs."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, None)
        if isinstance(response, web.Response):
            if status < 500:
                body = s.ErrorBody(error="bad_request", message="malformed HTTP request")
            else:
                body = s.ErrorBody(error="internal_error", message="an unexpected error occurred")
            response.body = body.model_dump_json().encode()
            response.content_type = "application/json"
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = _Protocol  # the same object, one method different
        return handler


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        return server


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost could resolve anywhere


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    allow_remote: bool = False,
    shutdown_timeout: float = 5.0,
) -> web.AppRunner:
    """Start serving ``app``; the caller owns the runner and calls ``runner.cleanup()``.

    Refuses a non-loopback ``host`` unless ``allow_remote`` (DESIGN: loopback by default:
    anyone who can reach the port can read the state, and try the token).
    """
    if not is_loopback(host) and not allow_remote:
        raise ValueError(
            f"refusing to serve the API on {host!r}: not a loopback address"
            " (allow remote access explicitly to bind it)"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"the API port must be an integer in 0..65535, got {port!r}")
    runner = _Runner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("api_listening", addresses=[str(a) for a in runner.addresses])
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the runner listens on (useful with port 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the API runner is not listening on a TCP port")


__all__: list[str] = [
    "SERVICE_COMMANDS",
    "bound_port",
    "error_middleware",
    "is_loopback",
    "make_app",
    "replace_tokens",
    "routes",
    "serve",
]
