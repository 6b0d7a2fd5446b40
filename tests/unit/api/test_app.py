"""The HTTP API against a fake Control with real engine snapshots (aiohttp's test server on
127.0.0.1): route shapes checked against the served OpenAPI schemas, the token rules, every
mutating route's OperatorCommand, and bad input answered with a 4xx, never a 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter
from structlog.testing import capture_logs

from orchestrator.api import make_app, serve
from orchestrator.api.app import (
    CLI_AGENT,
    SERVICE_COMMANDS,
    bound_port,
    is_loopback,
    replace_tokens,
)
from orchestrator.daemon.control import CommandResult, Readiness
from orchestrator.engine.state import Command, CommandSource, OperatorCommand
from orchestrator.engine.vocabulary import REASON_TEXT, Reason
from tests.unit.api.fakes import NOW, RUN_ID, FakeControl

TOKEN = "s3cret-token-value"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AUTH_JSON = {**AUTH, "Content-Type": "application/json"}


@asynccontextmanager
async def api(
    control: FakeControl | None = None,
    token: str | None = TOKEN,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[TestClient[Any, Any]]:
    app = make_app(
        control or FakeControl(),
        token=token,
        metrics_registry=registry if registry is not None else CollectorRegistry(),
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


_DOC: dict[str, Any] | None = None


async def openapi_doc(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/v1/openapi.json")
    assert resp.status == 200
    doc: dict[str, Any] = await resp.json()
    return doc


def assert_schema(doc: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """The body matches the schema the OpenAPI document promises for this response."""
    content = doc["paths"][path][method]["responses"][str(status)]["content"]
    schema = content["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(body)


# --- reads --------------------------------------------------------------------------------
async def test_healthz_says_ok() -> None:
    async with api() as client:
        resp = await client.get("/healthz")
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_readyz_is_503_with_the_problems_when_not_ready() -> None:
    control = FakeControl(ready=Readiness(False, ("state store unreachable",)))
    async with api(control) as client:
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert await resp.json() == {"ready": False, "problems": ["state store unreachable"]}
        control.ready = Readiness(True)
        resp = await client.get("/readyz")
        assert resp.status == 200
        assert (await resp.json())["ready"] is True


async def test_metrics_are_prometheus_exposition_of_the_given_registry() -> None:
    registry = CollectorRegistry()
    Counter("failoverd_test_marker_total", "marker", registry=registry).inc(3)
    async with api(registry=registry) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        assert "failoverd_test_marker_total 3.0" in await resp.text()


async def test_requests_are_counted_by_route_template_in_the_default_registry() -> None:
    def count() -> float:
        value = REGISTRY.get_sample_value(
            "failoverd_api_requests_total",
            {"method": "GET", "route": "/v1/services/{name}", "status": "404"},
        )
        return value or 0.0

    before = count()
    async with api() as client:
        assert (await client.get("/v1/services/nope")).status == 404
    assert count() == before + 1


async def test_status_lists_every_service_with_its_state() -> None:
    control = FakeControl()
    async with api(control) as client:
        resp = await client.get("/v1/status")
        assert resp.status == 200
        body = await resp.json()
        assert_schema(await openapi_doc(client), "/v1/status", "get", 200, body)
    assert body["node_id"] == "node-a"
    assert body["leader"] == "node-a" and body["is_leader"] is True
    assert body["policy_version"] == control.policy_version
    by_name = {s["name"]: s for s in body["services"]}
    assert set(by_name) == {"webapp", "catalog"}
    webapp = by_name["webapp"]
    assert webapp["active_region"] == "us-east-1"
    assert webapp["phase"] == "failing_over"
    assert webapp["reasons"] == [{"code": "active_down", "text": REASON_TEXT[Reason.ACTIVE_DOWN]}]
    assert webapp["paused"] is False
    assert webapp["run_id"] == RUN_ID and webapp["run_status"] == "running"
    assert by_name["catalog"]["phase"] == "steady" and by_name["catalog"]["run_id"] is None


async def test_service_detail_shows_verdicts_evidence_rto_lag_and_run() -> None:
    async with api() as client:
        resp = await client.get("/v1/services/webapp")
        assert resp.status == 200
        body = await resp.json()
        assert_schema(await openapi_doc(client), "/v1/services/{name}", "get", 200, body)
    assert body["regions"] == ["us-east-1", "us-west-2"] and body["primary"] == "us-east-1"
    east, west = body["verdicts"]
    assert east["region"] == "us-east-1" and east["verdict"] == "down"
    assert east["failing"] == ["local", "agent-eu"]
    vantages = {v["vantage"]: v for v in east["vantages"]}
    assert vantages["local"]["view"] == "failing"
    api_signal = next(s for s in vantages["local"]["signals"] if s["signal"] == "api")
    assert api_signal["detail"] == "connect" and api_signal["last_ok"] is False
    assert api_signal["target"] == "https://api.us-east-1.webapp.example.com/healthz"
    assert vantages["agent-ap"]["view"] == "passing"
    assert west["verdict"] == "healthy"
    assert body["reasons"][0]["text"] == REASON_TEXT[Reason.ACTIVE_DOWN]
    # The running run measures the RTO from detection.
    assert body["rto"] == {
        "budget": 900.0,
        "detected_at": NOW - 120.0,
        "elapsed": 120.0,
        "remaining": 780.0,
    }
    assert body["rpo"] == 60.0
    assert body["lag"] == [
        {
            "region": "us-west-2",
            "seconds": 12.0,
            "observed_at": NOW - 20.0,
            "age": 20.0,
            "within_rpo": True,
        }
    ]
    assert body["decision"]["action"] == "failover"
    assert body["decision"]["target"] == "us-west-2"
    run = body["run"]
    assert run["run_id"] == RUN_ID
    assert [(s["name"], s["status"]) for s in run["steps"]] == [
        ("notify-start", "succeeded"),
        ("promote-db", "running"),
    ]
    assert run["steps"][0]["attempts"][0]["error"] == "throttled"


async def test_unknown_service_is_a_json_404() -> None:
    async with api() as client:
        resp = await client.get("/v1/services/nope")
        assert resp.status == 404
        body = await resp.json()
    assert body["error"] == "unknown_service"
    assert "'nope'" in body["message"] and "webapp" in body["message"]


async def test_runs_answer_progress_or_404() -> None:
    async with api() as client:
        resp = await client.get(f"/v1/runs/{RUN_ID}")
        assert resp.status == 200
        body = await resp.json()
        assert_schema(await openapi_doc(client), "/v1/runs/{id}", "get", 200, body)
        assert body["steps"][1]["name"] == "promote-db"
        assert body["rto_remaining"] == 780.0 and body["rto_exceeded"] is False
        missing = await client.get("/v1/runs/run-9999")
        assert missing.status == 404
        assert (await missing.json())["error"] == "unknown_run"
        too_long = await client.get("/v1/runs/" + "x" * 500)
        assert too_long.status == 400


async def test_unmatched_routes_and_methods_answer_json() -> None:
    async with api() as client:
        resp = await client.get("/v2/nothing")
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
        resp = await client.delete("/v1/status")
        assert resp.status == 405
        assert (await resp.json())["error"] == "method_not_allowed"
        assert "GET" in resp.headers["Allow"]


# --- OpenAPI ------------------------------------------------------------------------------
async def test_openapi_is_valid_31_and_lists_every_route() -> None:
    async with api() as client:
        doc = await openapi_doc(client)
        app_routes = {
            (r.method.lower(), r.resource.canonical)
            for r in client.server.app.router.routes()
            if r.resource is not None and r.method != "HEAD"
        }
    validate_openapi(doc)
    assert doc["openapi"] == "3.1.0"
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == app_routes
    for command in SERVICE_COMMANDS:
        op = doc["paths"][f"/v1/services/{{name}}/{command.value}"]["post"]
        assert op["security"] == [{"bearer": []}]
        assert "401" in op["responses"] and "403" in op["responses"]
        request = doc["components"]["schemas"]["CommandRequest"]
    assert "reason" in request["required"]
    assert request["additionalProperties"] is False


# --- the token ----------------------------------------------------------------------------
async def test_no_token_configured_disables_mutating_calls() -> None:
    control = FakeControl()
    async with api(control, token=None) as client:
        for path in ("/v1/services/webapp/pause", "/v1/pause"):
            resp = await client.post(path, json={"reason": "r"}, headers=AUTH)
            assert resp.status == 403
            assert await resp.json() == {
                "error": "forbidden",
                "message": "mutating calls are disabled: no token configured",
                "leader": None,
                "leader_api": None,
                "details": [],
                "result": None,
            }
        assert (await client.get("/v1/status")).status == 200  # reads stay open
    assert control.commands == [] and control.paused_all == []


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {TOKEN}",
        "Bearer wrong",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN.upper()}",
    ],
)
async def test_missing_or_wrong_token_is_401_with_a_challenge(header: str | None) -> None:
    control = FakeControl()
    headers = {} if header is None else {"Authorization": header}
    async with api(control) as client:
        resp = await client.post(
            "/v1/services/webapp/failover", json={"reason": "test"}, headers=headers
        )
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="failoverd"')
        body = await resp.json()
    assert body["error"] == "unauthorized"
    assert TOKEN not in json.dumps(body)
    assert control.commands == []


async def test_authentication_comes_before_input_validation() -> None:
    async with api() as client:
        resp = await client.post("/v1/services/nope/failover", data=b"{not json")
        assert resp.status == 401  # an anonymous caller learns nothing about services


def test_an_empty_token_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="empty"):
        make_app(FakeControl(), token="  ", metrics_registry=CollectorRegistry())


# --- commands -----------------------------------------------------------------------------
API = CommandSource.API


@pytest.mark.parametrize(
    ("command", "body", "expected"),
    [
        (
            "failover",
            {"reason": "us-east-1 is down", "to": "us-west-2", "force": True, "by": "alice"},
            OperatorCommand(
                Command.FAILOVER, "us-west-2", True, "api", "us-east-1 is down", API, "alice"
            ),
        ),
        (
            "failover",
            {"reason": "  go  "},
            OperatorCommand(Command.FAILOVER, None, False, "api", "go"),
        ),
        (
            "switchover",
            {"reason": "game day", "to": "us-west-2", "by": "bob"},
            OperatorCommand(Command.SWITCHOVER, "us-west-2", False, "api", "game day", API, "bob"),
        ),
        (
            "failback",
            {"reason": "primary ok"},
            OperatorCommand(Command.FAILBACK, reason="primary ok", by="api"),
        ),
        (
            "approve",
            {"reason": "lag ok", "by": "carol"},
            OperatorCommand(Command.APPROVE, by="api", reason="lag ok", user="carol"),
        ),
        (
            "pause",
            {"reason": "maintenance"},
            OperatorCommand(Command.PAUSE, by="api", reason="maintenance"),
        ),
        ("resume", {"reason": "done"}, OperatorCommand(Command.RESUME, by="api", reason="done")),
    ],
)
async def test_each_command_reaches_control_with_who_what_and_why(
    command: str, body: dict[str, Any], expected: OperatorCommand
) -> None:
    control = FakeControl()
    async with api(control) as client:
        resp = await client.post(f"/v1/services/webapp/{command}", json=body, headers=AUTH)
        assert resp.status == 202
        payload = await resp.json()
        assert_schema(
            await openapi_doc(client), f"/v1/services/{{name}}/{command}", "post", 202, payload
        )
    assert control.commands == [("webapp", expected)]
    assert payload == {
        "accepted": True,
        "message": "failover started",
        "run_id": "run-0002",
        "decision": None,
    }


async def test_who_is_the_token_s_label_and_the_cli_is_told_apart_by_its_user_agent() -> None:
    control = FakeControl()
    tokens = {"alice": "tok-alice-0123456789", "ci-deploy": "tok-ci-0123456789abc"}
    app = make_app(control, tokens=tokens, metrics_registry=CollectorRegistry())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for label, token in tokens.items():
            resp = await client.post(
                "/v1/services/webapp/pause",
                json={"reason": f"{label} says so", "by": "mallory"},  # a claim, kept aside
                headers={"Authorization": f"Bearer {token}", "User-Agent": "curl/8.5"},
            )
            assert resp.status == 202
        resp = await client.post(
            "/v1/pause",
            json={"reason": "incident"},
            headers={
                "Authorization": f"Bearer {tokens['alice']}",
                "User-Agent": f"{CLI_AGENT}0.1.0",
            },
        )
        assert resp.status == 202
    got = [(c.by, c.user, c.source) for _, c in control.commands]
    assert got == [("alice", "mallory", API), ("ci-deploy", "mallory", API)]
    assert control.paused_all == [("alice", "incident")]
    assert control.paused_all_from == [(CommandSource.CLI, "")]


async def test_revoked_tokens_are_refused_after_a_replace() -> None:
    control = FakeControl()
    app = make_app(control, tokens={"alice": "tok-a-12345", "bob": "tok-b-12345"})
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        bob = {"Authorization": "Bearer tok-b-12345"}
        resp = await client.post("/v1/services/webapp/pause", json={"reason": "r"}, headers=bob)
        assert resp.status == 202
        replace_tokens(app, {"alice": "tok-a-12345"})  # bob's line removed, SIGHUP
        resp = await client.post("/v1/services/webapp/pause", json={"reason": "r"}, headers=bob)
        assert resp.status == 401
        alice = {"Authorization": "Bearer tok-a-12345"}
        resp = await client.post("/v1/services/webapp/pause", json={"reason": "r"}, headers=alice)
        assert resp.status == 202
    assert [c.by for _, c in control.commands] == ["bob", "alice"]


async def test_global_pause_pauses_everything() -> None:
    control = FakeControl()
    async with api(control) as client:
        resp = await client.post(
            "/v1/pause", json={"reason": "incident 42", "by": "dave"}, headers=AUTH
        )
        assert resp.status == 202
        assert (await resp.json())["accepted"] is True
        resp = await client.post("/v1/pause", json={"reason": "x", "to": "us-west-2"}, headers=AUTH)
        assert resp.status == 400
    assert control.paused_all == [("api", "incident 42")]
    assert control.paused_all_from == [(CommandSource.API, "dave")]


async def test_a_refused_command_is_409_with_the_engine_message() -> None:
    control = FakeControl(result=CommandResult(False, "paused: resume first"))
    async with api(control) as client:
        resp = await client.post("/v1/services/webapp/failover", json={"reason": "r"}, headers=AUTH)
        assert resp.status == 409
        body = await resp.json()
    assert body["error"] == "refused" and body["message"] == "paused: resume first"
    assert body["result"]["accepted"] is False


async def test_not_leader_is_409_naming_the_leader_and_its_api() -> None:
    control = FakeControl(leader_id="node-b", leader_url="http://10.1.2.3:8080")
    async with api(control) as client:
        for path in ("/v1/services/webapp/approve", "/v1/pause"):
            resp = await client.post(path, json={"reason": "r"}, headers=AUTH)
            assert resp.status == 409
            body = await resp.json()
            assert body["error"] == "not_leader" and body["leader"] == "node-b"
            assert body["leader_api"] == "http://10.1.2.3:8080"
            assert "node-b at http://10.1.2.3:8080" in body["message"]


async def test_status_says_which_policy_version_the_leader_acts_on() -> None:
    control = FakeControl(leader_id="node-b", leader_version="f00dfeed", leader_url="http://b")
    async with api(control) as client:
        resp = await client.get("/v1/status")
        body = await resp.json()
        assert_schema(await openapi_doc(client), "/v1/status", "get", 200, body)
    assert body["policy_version"] == control.policy_version
    assert body["leader_policy_version"] == "f00dfeed" and body["leader_api"] == "http://b"


@pytest.mark.parametrize(
    ("path", "data", "status", "code", "words"),
    [
        ("/v1/services/webapp/failover", b"", 400, "empty_body", "reason"),
        ("/v1/services/webapp/failover", b"{not json", 400, "malformed_json", "not valid JSON"),
        ("/v1/services/webapp/failover", b"\xff\xfe\x00", 400, "malformed_json", "JSON"),
        ("/v1/services/webapp/failover", b"[1, 2]", 400, "invalid_body", "JSON object"),
        ("/v1/services/webapp/failover", b"{}", 400, "invalid_body", "reason"),
        ("/v1/services/webapp/failover", b'{"reason": "   "}', 400, "invalid_body", "reason"),
        ("/v1/services/webapp/failover", b'{"reason": 42}', 400, "invalid_body", "reason"),
        (
            "/v1/services/webapp/failover",
            b'{"reason": "a\\u001b[2J"}',
            400,
            "invalid_body",
            "control",
        ),
        (
            "/v1/services/webapp/failover",
            json.dumps({"reason": "x" * 501}).encode(),
            400,
            "invalid_body",
            "reason",
        ),
        (
            "/v1/services/webapp/failover",
            b'{"reason": "r", "region": "x"}',
            400,
            "invalid_body",
            "region: unknown field",
        ),
        (
            "/v1/services/webapp/failover",
            b'{"reason": "r", "force": "yes"}',
            400,
            "invalid_body",
            "force",
        ),
        (
            "/v1/services/webapp/failover",
            b'{"reason": "r", "to": "mars-1"}',
            400,
            "unknown_region",
            "mars-1",
        ),
        (
            "/v1/services/webapp/switchover",
            b'{"reason": "r", "force": true}',
            400,
            "field_not_allowed",
            "force",
        ),
        (
            "/v1/services/webapp/approve",
            b'{"reason": "r", "to": "us-west-2"}',
            400,
            "field_not_allowed",
            "to",
        ),
        ("/v1/services/nope/failover", b'{"reason": "r"}', 404, "unknown_service", "nope"),
        ("/v1/services/webapp/failover", b"[" * 5000 + b"]" * 5000, 400, "malformed_json", "JSON"),
        (
            "/v1/services/webapp/failover",
            b'{"reason": "' + b"x" * 70_000 + b'"}',
            413,
            "too_large",
            "",
        ),
    ],
)
async def test_bad_input_gets_a_4xx_naming_the_problem(
    path: str, data: bytes, status: int, code: str, words: str
) -> None:
    control = FakeControl()
    async with api(control) as client:
        resp = await client.post(path, data=data, headers=AUTH_JSON)
        assert resp.status == status
        body = await resp.json()
    assert body["error"] == code
    assert words in body["message"]
    assert control.commands == []


async def test_unexpected_errors_are_a_logged_json_500_without_the_token() -> None:
    control = FakeControl(fail=RuntimeError("boom"))
    async with api(control) as client:
        with capture_logs() as logs:
            resp = await client.get("/v1/status")
            assert resp.status == 500
            body = await resp.json()
            command = await client.post(
                "/v1/services/webapp/pause", json={"reason": "r"}, headers=AUTH
            )
            assert command.status == 500
    assert body["error"] == "internal_error"
    assert "boom" not in body["message"]
    assert [e["event"] for e in logs] == ["api_unhandled_error", "api_unhandled_error"]
    assert TOKEN not in repr(logs)


async def test_commands_are_logged_with_who_and_why_but_never_the_token() -> None:
    async with api() as client:
        with capture_logs() as logs:
            resp = await client.post(
                "/v1/services/webapp/pause", json={"reason": "deploy", "by": "erin"}, headers=AUTH
            )
            assert resp.status == 202
    (event,) = [e for e in logs if e["event"] == "api_command"]
    assert event["service"] == "webapp" and (event["by"], event["user"]) == ("api", "erin")
    assert event["reason"] == "deploy" and event["outcome"] == "accepted"
    assert TOKEN not in repr(logs)


# --- fuzz: junk never reaches the 500 handler ------------------------------------------------
@pytest.fixture
def fuzz_client() -> Iterator[tuple[asyncio.AbstractEventLoop, TestClient[Any, Any]]]:
    # Hypothesis drives a sync test, so this fixture owns a loop and one server for all
    # examples (starting a server per example would dominate the run time).
    loop = asyncio.new_event_loop()

    async def start() -> TestClient[Any, Any]:
        app = make_app(FakeControl(), token=TOKEN, metrics_registry=CollectorRegistry())
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        return client

    client = loop.run_until_complete(start())
    try:
        yield loop, client
    finally:
        loop.run_until_complete(client.close())
        loop.close()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "reason": _json_values,
            "to": _json_values | st.sampled_from(["us-west-2", "us-east-1", ""]),
            "force": _json_values,
            "by": _json_values,
        },
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(
        [f"/v1/services/webapp/{c.value}" for c in SERVICE_COMMANDS] + ["/v1/pause"]
    ),
    body=_bodies,
)
def test_junk_bodies_never_get_a_500(
    fuzz_client: tuple[asyncio.AbstractEventLoop, TestClient[Any, Any]], path: str, body: bytes
) -> None:
    loop, client = fuzz_client

    async def post() -> tuple[int, Any]:
        resp = await client.post(path, data=body, headers=AUTH_JSON)
        return resp.status, await resp.json()

    status, payload = loop.run_until_complete(post())
    assert status in (202, 400), payload
    if status == 400:
        assert payload["error"] and payload["message"]


# --- serving ------------------------------------------------------------------------------
def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    assert not is_loopback("") and not is_loopback("api.example.com")


async def test_serve_refuses_a_non_loopback_host_without_allow_remote() -> None:
    app = make_app(FakeControl(), token=None, metrics_registry=CollectorRegistry())
    for host in ("0.0.0.0", "192.0.2.1", "example.com"):
        with pytest.raises(ValueError, match="not a loopback address"):
            await serve(app, host, 0)
    with pytest.raises(ValueError, match="port"):
        await serve(app, "127.0.0.1", 70000)


async def test_serve_listens_on_loopback_until_cleaned_up() -> None:
    app = make_app(FakeControl(), token=None, metrics_registry=CollectorRegistry())
    runner = await serve(app, "127.0.0.1", 0)
    try:
        port = bound_port(runner)
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        await runner.cleanup()
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
