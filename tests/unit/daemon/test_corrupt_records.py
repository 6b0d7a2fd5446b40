"""One corrupt record takes out only itself: a corrupt service state holds that service
paused (the daemon is ready, the other services act); a run with a corrupt record is served
with that record marked; the audit log lists it in its place. A real Controller over a real
SqliteStore whose rows are damaged behind its back, and the real API app in front of it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY, CollectorRegistry

from orchestrator.api import make_app
from orchestrator.engine.state import Command, OperatorCommand, ServiceState
from orchestrator.engine.vocabulary import Phase
from orchestrator.store.base import JournalRecord, JournalStatus
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock, eventually
from tests.fixtures.controller import make_controller, policy_text
from tests.unit.api.test_app import assert_schema, openapi_doc
from tests.unit.daemon.controller_support import region_down, running, see
from tests.unit.runbook.fakes import ScriptedAction

TOKEN = "corrupt-records-token-0123456789"


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "shop.yaml").write_text(policy_text("shop"))
    (d / "cart.yaml").write_text(policy_text("cart"))
    return d


def damage(db: Path, sql: str, *args: Any) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(sql, args)
    finally:
        conn.close()


def corrupt_count(kind: str) -> float:
    labels = {"backend": "sqlite", "kind": kind}
    return REGISTRY.get_sample_value("failoverd_store_corrupt_records_total", labels) or 0.0


def services(action: ScriptedAction) -> list[str]:
    return [call.ctx.service for call in action.calls if call.ctx is not None]


async def seed_moved_shop(store: SqliteStore) -> None:
    """shop failed over to us-west-2 by run r0 (succeeded), cart steady; no lease held."""
    lease = await store.acquire_lease("earlier-daemon", 30.0)
    assert lease is not None
    t = lease.token
    await store.save_state(ServiceState("shop", "us-west-2"), t)
    await store.save_state(ServiceState("cart", "us-east-1"), t)
    for status in (JournalStatus.RUN_STARTED, JournalStatus.RUN_SUCCEEDED):
        await store.append_journal(
            JournalRecord(
                "r0",
                "shop",
                status,
                1_700_000_000.0,
                t,
                "v0",
                kind="failover",
                source_region="us-east-1" if status is JournalStatus.RUN_STARTED else "",
                target_region="us-west-2" if status is JournalStatus.RUN_STARTED else "",
            )
        )
    await store.release_lease(lease)


async def test_a_corrupt_state_holds_its_service_paused_and_nothing_else(
    policy_dir: Path, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    await seed_moved_shop(store)
    damage(store.path, "UPDATE service_state SET body = '{\"v\": 1' WHERE service = 'shop'")
    before = corrupt_count("service_state")
    # The old daemon raised here ("store unreachable") and never became ready.
    c = await make_controller(policy_dir, store, clock, action, lease_ttl=30.0)
    try:
        assert corrupt_count("service_state") == before + 1
        shop = c.snapshot("shop")
        assert shop is not None and shop.paused and shop.active_region == "us-west-2"
        assert shop.state_problem is not None and "service_state/shop" in shop.state_problem
        assert "run r0" in shop.state_problem  # where the active region was taken from
        assert [q.key for q in await store.quarantined()] == ["service_state/shop"]
        async with running(c):
            await eventually(c.is_leader, "the lease")
            await c.evaluate_all()
            assert c.readiness().ready, c.readiness().problems
            action.durations["move"] = 0.0
            # cart acts; shop, held paused, does not (its region down or not).
            region_down(c, clock, "cart")
            await eventually(lambda: services(action) == ["cart"], "cart's run")
            see(c, clock, "us-west-2", False, "shop")
            clock.advance(1.0)
            see(c, clock, "us-west-2", False, "shop")
            decision = await c.evaluate("shop")
            assert decision.phase is Phase.PAUSED
            assert services(action) == ["cart"]
            # The operator checks the region and resumes: a good state replaces the bad one.
            result = await c.command("shop", OperatorCommand(Command.RESUME, by="bob", reason="ok"))
            assert result.accepted, result.message
        saved = await store.load_state("shop")
        assert saved is not None and saved.active_region == "us-west-2" and not saved.paused
        after = c.snapshot("shop")
        assert after is not None and after.state_problem is None
        assert len(await store.quarantined()) == 1  # the corrupt copy is kept
    finally:
        await c.close()


async def test_a_corrupt_state_found_by_a_running_leader_pauses_only_that_service(
    policy_dir: Path, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    await seed_moved_shop(store)
    c = await make_controller(policy_dir, store, clock, action, lease_ttl=30.0)
    try:
        async with running(c):
            await eventually(c.is_leader, "the lease")
            await c.evaluate_all()
            shop = c.snapshot("shop")
            assert shop is not None and not shop.paused
            damage(store.path, "UPDATE service_state SET body = x'00'")  # both services
            # Before: a failed state read made the new leader give up the lease.
            assert await c.follow_store()
            assert c.is_leader()
            for name in ("shop", "cart"):
                snap = c.snapshot(name)
                assert snap is not None and snap.paused and snap.state_problem is not None
            # Each keeps the active region it had in memory.
            assert [c.snapshot(n).active_region for n in ("shop", "cart")] == [  # type: ignore[union-attr]
                "us-west-2",
                "us-east-1",
            ]
    finally:
        await c.close()


async def test_a_run_with_a_corrupt_record_is_served_with_it_marked(
    policy_dir: Path, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    c = await make_controller(policy_dir, store, clock, action, lease_ttl=30.0)
    try:
        async with running(c):
            await eventually(c.is_leader, "the lease")
            action.durations["move"] = 0.0
            region_down(c, clock, "shop")
            await eventually(lambda: action.calls != [], "the run")
            await eventually(
                lambda: (s := c.snapshot("shop")) is not None and s.active_region == "us-west-2",
                "the run to finish",
            )
        snap = c.snapshot("shop")
        assert snap is not None and snap.run is not None
        run_id = snap.run.run_id
        # Its step_started record (the second) goes bad on disk.
        damage(
            store.path,
            "UPDATE journal SET body = 'garbage' WHERE seq ="
            " (SELECT seq FROM journal WHERE run_id = ? ORDER BY seq LIMIT 1 OFFSET 1)",
            run_id,
        )
        app = make_app(c, token=TOKEN, metrics_registry=CollectorRegistry())
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            doc = await openapi_doc(client)
            resp = await client.get(f"/v1/runs/{run_id}")
            assert resp.status == 200  # was 404: the run "did not exist"
            body = await resp.json()
            assert_schema(doc, "/v1/runs/{id}", "get", 200, body)
            assert body["status"] == "succeeded" and body["steps"][0]["status"] == "succeeded"
            (bad,) = body["corrupt_records"]
            assert bad["key"].startswith("journal/") and "not JSON" in bad["error"]

            resp = await client.get("/v1/audit", params={"service": "shop"})
            assert resp.status == 200  # was 503: one bad row failed the whole log
            entries = (await resp.json())["entries"]
            assert "corrupt" in [e["entry"] for e in entries]
            resp = await client.get(f"/v1/runs/{run_id}/report")
            assert resp.status == 200 and "corrupt record" in await resp.text()

            # Even its plan (run_started) unreadable: still served, marked, never a 404.
            damage(
                store.path,
                "UPDATE journal SET body = 'garbage' WHERE seq ="
                " (SELECT seq FROM journal WHERE run_id = ? ORDER BY seq LIMIT 1)",
                run_id,
            )
            resp = await client.get(f"/v1/runs/{run_id}")
            assert resp.status == 200
            body = await resp.json()
            assert_schema(doc, "/v1/runs/{id}", "get", 200, body)
            assert body["kind"] == "unknown" and body["status"] == "succeeded"
            assert len(body["corrupt_records"]) == 2
            assert [s["name"] for s in body["steps"]] == ["move"]
    finally:
        await c.close()
