"""`GET /v1/audit` and `GET /v1/runs/{id}/report` against a fake Control holding hand-built
journal records: filters reach the Control as numbers, answers match the OpenAPI schema, bad
filters are a 400 naming the parameter, an unknown run is a 404, a store that does not
answer is a 503, and neither route needs the token."""

from __future__ import annotations

import time

import pytest
from openapi_spec_validator import validate as validate_openapi

from orchestrator.store.base import StoreUnavailable
from tests.unit import audit_records as ar
from tests.unit.api.fakes import FakeControl
from tests.unit.api.test_app import api, assert_schema, openapi_doc


async def test_audit_lists_every_entry_oldest_first_with_reasons_and_policy_version() -> None:
    async with api(token=None) as client:  # reads need no token, even with none configured
        resp = await client.get("/v1/audit")
        assert resp.status == 200
        body = await resp.json()
        assert_schema(await openapi_doc(client), "/v1/audit", "get", 200, body)
    assert body["count"] == len(ar.journal()) and body["limit"] == 100
    kinds = [e["entry"] for e in body["entries"]]
    assert kinds[:4] == ["decision", "decision", "decision", "run_started"]
    assert kinds[-1] == "run_succeeded" and "operator_command" in kinds
    start = body["entries"][2]
    assert start["policy_version"] == ar.VERSION and start["time"] == "2026-11-26T16:00:04.000Z"
    assert [r["code"] for r in start["reasons"]] == ["active_down"]
    assert "active region is down" in start["reasons"][0]["text"]
    assert start["detail"]["run_id"] == ar.RUN_ID and start["detail"]["lag"][0]["seconds"] == 5
    assert start["summary"] == f"failing_over: failover us-east-1 -> us-west-2 (run {ar.RUN_ID})"


async def test_audit_filters_reach_the_control_as_numbers() -> None:
    control = FakeControl()
    async with api(control) as client:
        resp = await client.get(
            "/v1/audit",
            params={"service": "webapp", "since": "1795708805", "until": "2026-11-26T16:00:38Z"},
        )
        assert resp.status == 200
        body = await resp.json()
        before = time.time()
        resp = await client.get("/v1/audit", params={"since": "2h", "limit": "3"})
        assert resp.status == 200
        # The records are fixed in time, so "the last 2h" is judged only through the query
        # the Control received; the limit is judged on an unbounded window.
        resp = await client.get("/v1/audit", params={"limit": "3"})
        assert resp.status == 200
        assert (await resp.json())["count"] == 3
    assert control.audit_queries[0] == ("webapp", ar.T0 + 5, ar.T0 + 38, 100)
    assert [e["at"] for e in body["entries"]] == sorted(
        r.at for r in ar.journal() if ar.T0 + 5 <= r.at <= ar.T0 + 38
    )
    service, since, until, limit = control.audit_queries[1]
    assert service is None and until is None and limit == 3
    assert since is not None and abs(since - (before - 7200)) < 60
    assert control.audit_queries[2] == (None, None, None, 3)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("since=2026-11-26T17:00:00Z&until=2026-11-26T16:00:00Z", "since"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=5&limit=6", "limit"),
        ("servce=webapp", "servce"),
        ("service=", "service"),
    ],
)
async def test_bad_audit_filters_are_a_400_naming_the_parameter(query: str, parameter: str) -> None:
    control = FakeControl()
    async with api(control) as client:
        resp = await client.get(f"/v1/audit?{query}")
        assert resp.status == 400
        body = await resp.json()
    assert body["error"] == "invalid_parameter" and body["message"].startswith(f"{parameter}:")
    assert control.audit_queries == []


async def test_a_store_that_does_not_answer_is_a_503() -> None:
    control = FakeControl(audit_fail=StoreUnavailable("etcd: deadline exceeded"))
    async with api(control) as client:
        for path in ("/v1/audit", f"/v1/runs/{ar.RUN_ID}/report"):
            resp = await client.get(path)
            assert resp.status == 503, path
            body = await resp.json()
            assert body["error"] == "store_unavailable" and "deadline" in body["message"]


async def test_the_report_is_markdown_and_an_unknown_run_a_json_404() -> None:
    async with api(token=None) as client:
        resp = await client.get(f"/v1/runs/{ar.RUN_ID}/report")
        assert resp.status == 200
        assert resp.content_type == "text/markdown" and resp.charset == "utf-8"
        text = await resp.text()
        missing = await client.get("/v1/runs/no-such-run/report")
        assert missing.status == 404
        assert (await missing.json())["error"] == "unknown_run"
        long = await client.get("/v1/runs/" + "x" * 200 + "/report")
        assert long.status == 400
        doc = await openapi_doc(client)
    assert text.startswith(f"# Incident report: webapp failover run `{ar.RUN_ID}`")
    assert "RTO achieved: 40.5 s" in text and "## Timeline" in text
    validate_openapi(doc)
    op = doc["paths"]["/v1/runs/{id}/report"]["get"]
    assert "text/markdown" in op["responses"]["200"]["content"] and "security" not in op
    params = {p["name"]: p for p in doc["paths"]["/v1/audit"]["get"]["parameters"]}
    assert set(params) == {"service", "since", "until", "limit"}
    assert params["limit"]["schema"]["maximum"] == 1000
    assert "400" in doc["paths"]["/v1/audit"]["get"]["responses"]
