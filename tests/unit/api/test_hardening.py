"""The API under hostile requests, served by :func:`serve` on loopback and spoken to with
raw bytes where a client library would refuse to send them: no 500 without a token, no
parser detail or absolute path in an answer, no Host it does not answer for."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from structlog.testing import capture_logs

from orchestrator.api import make_app, serve
from orchestrator.api.app import HostRule, bound_port
from orchestrator.store.base import StoreUnavailable
from tests.fixtures.clock import eventually
from tests.unit.api.fakes import FakeControl

TOKEN = "s3cret-token-value"
PAUSE = "/v1/services/webapp/pause"


@asynccontextmanager
async def served(
    control: FakeControl | None = None, **options: Any
) -> AsyncIterator[tuple[FakeControl, int]]:
    control = control or FakeControl()
    app = make_app(control, token=TOKEN, metrics_registry=CollectorRegistry(), **options)
    runner = await serve(app, "127.0.0.1", 0)
    try:
        yield control, bound_port(runner)
    finally:
        await runner.cleanup()


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` and read the whole answer (the request asks to close)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def request(
    *,
    method: str = "POST",
    path: str = PAUSE,
    host: bytes = b"127.0.0.1",
    authorization: bytes = b"Bearer " + TOKEN.encode(),
    content_type: bytes = b"application/json",
    body: bytes = b'{"reason": "test"}',
) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\n".encode()
        + b"Host: "
        + host
        + b"\r\nAuthorization: "
        + authorization
        + b"\r\nContent-Type: "
        + content_type
        + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer s3cr\xe9t", b"Bearer \xff\xfe", "Bearer jeton-\u00e9t\u00e9".encode(), b"\xe9"],
)
async def test_non_ascii_authorization_is_a_401_not_a_500(authorization: bytes) -> None:
    async with served() as (control, port):
        status, headers, body = await exchange(port, request(authorization=authorization))
    assert status == 401, body
    assert headers["www-authenticate"].startswith('Bearer realm="failoverd"')
    assert json.loads(body)["error"] == "unauthorized"
    assert control.commands == []


@pytest.mark.parametrize(
    "content_type",
    [b"text/plain", b"application/x-www-form-urlencoded", b"application/octet-stream"],
)
async def test_a_body_that_is_not_declared_json_is_a_415(content_type: bytes) -> None:
    async with served() as (control, port):
        status, _, body = await exchange(port, request(content_type=content_type))
    assert status == 415, body
    answer = json.loads(body)
    assert answer["error"] == "unsupported_media_type"
    assert "application/json" in answer["message"]
    assert control.commands == []


async def test_json_with_a_charset_is_json() -> None:
    async with served() as (control, port):
        status, _, body = await exchange(
            port, request(content_type=b"application/json; charset=utf-8")
        )
    assert status == 202, body
    assert len(control.commands) == 1


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"reason": "a", "reason": "b"}', "the key 'reason' appears twice"),
        (b'{"reason": "a", "force": NaN}', "NaN is not JSON"),
        (b'{"reason": "a", "to": Infinity}', "Infinity is not JSON"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b'{"reason": "a", "x": ' + b"1" * 5000 + b"}", "a number is too long"),
        (b'{"reason": "a",}', "at line 1, column 16"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
async def test_bodies_json_readers_disagree_on_are_refused_in_plain_words(
    body: bytes, words: str
) -> None:
    async with served() as (control, port):
        status, _, answer = await exchange(port, request(body=body))
    assert status == 400, answer
    message = json.loads(answer)["message"]
    assert words in message
    for internal in ("recursion", "unicode string", "char ", "codec", "sys.set_int"):
        assert internal not in message
    assert control.commands == []


def _count(status: str) -> float:
    value = REGISTRY.get_sample_value(
        "failoverd_api_requests_total",
        {"method": "POST", "route": "/v1/services/{name}/pause", "status": status},
    )
    return value or 0.0


async def test_a_client_hanging_up_mid_body_is_a_client_error() -> None:
    before_500, before_400 = _count("500"), _count("400")
    async with served() as (control, port):
        with capture_logs() as logs:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            head = request(body=b'{"reason": "cut off here, long before the end"}')
            writer.write(head[: head.index(b"\r\n\r\n") + 10])  # headers and 6 bytes of body
            await writer.drain()
            writer.close()
            await eventually(lambda: _count("400") > before_400, "the request to be counted")
    assert _count("500") == before_500
    assert not [e for e in logs if e["event"] == "api_unhandled_error"], logs
    assert control.commands == []


async def test_an_unexpected_error_is_logged_by_type_and_place_never_its_text() -> None:
    secret = f"Bearer {TOKEN}"
    control = FakeControl(fail=RuntimeError(f"header was {secret}"))
    async with served(control) as (_, port):
        with capture_logs() as logs:
            status, _, body = await exchange(port, request(method="GET", path="/v1/status"))
    assert status == 500
    (event,) = [e for e in logs if e["event"] == "api_unhandled_error"]
    assert event["error"] == "RuntimeError" and "fakes.py" in event["where"]
    assert TOKEN not in json.dumps(logs, default=str) + body.decode()


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\rX\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret-"
        + b"\ntoken-value\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Token: " + TOKEN.encode() + b"\x00\r\n\r\n",
    ],
    ids=["bare-cr", "bare-lf", "nul"],
)
async def test_malformed_http_is_a_json_400_that_quotes_nothing(raw: bytes) -> None:
    async with served() as (control, port):
        status, headers, body = await exchange(port, raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {
        "error": "bad_request",
        "message": "malformed HTTP request",
        "leader": None,
        "leader_api": None,
        "details": [],
        "result": None,
    }
    assert b"s3cret" not in body and b"token-value" not in body
    assert control.paused_all == []


async def test_error_bodies_carry_no_absolute_path() -> None:
    where = "/var/lib/failoverd/state.db"
    control = FakeControl(audit_fail=StoreUnavailable(f"sqlite store {where} is closed"))
    async with served(control) as (_, port):
        status, _, body = await exchange(port, request(method="GET", path="/v1/audit", body=b""))
    assert status == 503
    message = json.loads(body)["message"]
    assert where not in message and "state.db" in message


# --- the Host header (DNS rebinding) ------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [b"evil.example", b"evil.example:8080", b"127.0.0.1.nip.io", b"10.0.0.9", b"", b"[::1"],
)
async def test_a_host_the_api_does_not_answer_for_is_a_421(host: bytes) -> None:
    async with served() as (_, port):
        status, _, body = await exchange(port, request(method="GET", path="/v1/status", host=host))
    assert status == 421, body
    assert json.loads(body)["error"] == "misdirected_request"


@pytest.mark.parametrize(
    "host", [b"127.0.0.1", b"127.0.0.1:8080", b"localhost", b"LOCALHOST:1", b"prom.internal"]
)
async def test_the_bound_address_localhost_and_listed_names_are_answered(host: bytes) -> None:
    async with served(allowed_hosts=["prom.internal"]) as (_, port):
        status, _, body = await exchange(port, request(method="GET", path="/v1/status", host=host))
    assert status == 200, body


def test_host_rules_follow_the_bound_address() -> None:
    loopback = HostRule.of("127.0.0.1")
    assert loopback.allows("127.0.0.2") and loopback.allows("[::1]:80")
    assert not loopback.allows("192.168.1.4") and not loopback.allows("attacker.test")
    wildcard = HostRule.of("0.0.0.0", ["failoverd.internal."])
    assert wildcard.allows("10.1.2.3:8080") and wildcard.allows("[2001:db8::1]:8080")
    assert wildcard.allows("localhost") and wildcard.allows("FAILOVERD.INTERNAL")
    assert not wildcard.allows("attacker.test")
    specific = HostRule.of("10.0.0.5")
    assert specific.allows("10.0.0.5:8080") and not specific.allows("10.0.0.6")
    assert not specific.allows("localhost")
    for junk in ("", ":80", "[::1", "[::1]x", "host:port", "a b"):
        assert not loopback.allows(junk), junk


async def test_probe_targets_in_the_api_show_no_query_values() -> None:
    # The catalog example probes `.../v1/search?q=healthcheck`: a query may carry a token.
    async with served() as (_, port):
        status, _, body = await exchange(
            port, request(method="GET", path="/v1/services/catalog", body=b"")
        )
    assert status == 200
    targets: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "signal" in node and isinstance(node.get("target"), str):
                targets.add(node["target"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(body))
    assert any("/v1/search?q=***" in t for t in targets), targets
    assert not any("healthcheck" in t for t in targets)
