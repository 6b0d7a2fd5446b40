"""Chaos row "store faults": the state store fails in the middle of a failover run, with the
world half moved (the replica promoted, the DNS not yet flipped: the kill-resume test's 4 s
``hold``). Each time: the daemon says clearly what is wrong (``/readyz`` 503 naming the
store, the error in the log), starts nothing while it lasts, and once the store is back the
run completes with every change applied to the world once and every journal record written
before the fault still there.

SQLite: the disk fills up (a 4 MB tmpfs), the disk turns read-only (an ext4 error on a loop
device: the kernel's ``errors=remount-ro``; the operator repairs it and restarts the
daemon), another process locks the database, and rows go corrupt under a running daemon.
etcd: the raft leader's member is killed, then quorum is lost and comes back (the HA tests'
fleet, a cluster of its own).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from orchestrator.store.base import JournalRecord, JournalStatus
from orchestrator.store.sqlite import SqliteStore
from tests.e2e import test_ha as _ha
from tests.e2e.ha_support import TTL, Fleet, SharedStore, succeeded_steps
from tests.e2e.test_daemon_kill_resume import HOLD, kill_window_policy, steps_by_name, write_config
from tests.e2e.test_ha import ONE_FAILOVER, World, configure, holding, run_succeeded
from tests.fixtures.etcd import EtcdCluster
from tests.fixtures.filesystems import Ext4Disk, fill
from tests.fixtures.moto_server import MotoServer
from tests.integration import test_daemon_e2e as _e2e
from tests.integration.runbook.webapp_world import (
    SERVICE,
    SOURCE,
    Seeded,
    assert_failed_over,
    moto_mutations,
)
from tests.integration.test_daemon_e2e import (
    DaemonProcess,
    Target,
    get_json,
    running_daemon,
    service,
    stop,
    until,
    wait_ready_to_fail_over,
)

http = _e2e.http
seeded = _e2e.seeded
targets = _e2e.targets
world = _ha.world
fleet = _ha.fleet

BEFORE_HOLD = ("notify-start", "promote-db", "scale-up")
FAULT_SEEN = 15.0  # the lease (3 s) lapses, readiness follows
RUN_DEADLINE = 40.0


@pytest.fixture
def mutations(seeded: Seeded) -> Iterator[Counter[str]]:
    with moto_mutations() as counts:
        yield counts


def sqlite_config(tmp_path: Path, moto: MotoServer, policy: str, db: Path) -> Path:
    path = write_config(tmp_path, moto, policy)
    settings = yaml.safe_load(path.read_text())
    settings["state"] = {"path": str(db), "timeout": "2s"}
    path.write_text(yaml.safe_dump(settings))
    return path


async def in_hold(http: aiohttp.ClientSession, daemon: DaemonProcess) -> dict[str, Any]:
    """Wait until the run has done everything before its hold and is holding; the run."""
    run: dict[str, Any] = {}

    async def holding_now() -> bool:
        nonlocal run
        current = (await service(http, daemon)).get("run") or {}
        if not current:
            return False
        status, run = await get_json(http, f"{daemon.base_url}/v1/runs/{current['run_id']}")
        steps = steps_by_name(run) if status == 200 else {}
        return (
            bool(steps)
            and steps[HOLD]["status"] == "running"
            and all(steps[n]["status"] == "succeeded" for n in BEFORE_HOLD)
        )

    await until(holding_now, "the run in its hold", RUN_DEADLINE, daemon)
    return run


async def mid_run(
    http: aiohttp.ClientSession, daemon: DaemonProcess, targets: dict[str, Target]
) -> dict[str, Any]:
    """Ready, then the primary fails: the run once it is in its hold (the world half moved)."""
    await wait_ready_to_fail_over(http, daemon)
    targets[SOURCE].status = 503
    return await in_hold(http, daemon)


async def store_trouble_reported(http: aiohttp.ClientSession, daemon: DaemonProcess) -> None:
    """The fault has bitten and is reported: the run could not journal its next step (it is
    interrupted, to be resumed), and /readyz says 503 naming the store."""

    async def unready() -> bool:
        if not daemon.events("run_interrupted"):
            return False
        status, body = await get_json(http, f"{daemon.base_url}/readyz")
        return status == 503 and "the state store is not reachable" in body.get("problems", [])

    await until(unready, "the run interrupted, /readyz 503 naming the store", FAULT_SEEN, daemon)


async def run_done(
    http: aiohttp.ClientSession, daemon: DaemonProcess, run_id: str
) -> dict[str, Any]:
    run: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal run
        status, run = await get_json(http, f"{daemon.base_url}/v1/runs/{run_id}")
        assert run.get("status") != "failed", run
        return status == 200 and run.get("status") == "succeeded"

    await until(done, f"run {run_id} to succeed", RUN_DEADLINE, daemon)
    return run


def store_errors(daemon: DaemonProcess) -> list[str]:
    events = [*daemon.events("store_unavailable"), *daemon.events("leader_lease_store_error")]
    return [str(e.get("error", "")) for e in events]


async def journal(db: Path, run_id: str) -> list[JournalRecord]:
    store = await SqliteStore.open(db)
    try:
        return list(await store.read_run(run_id))
    finally:
        await store.close()


def assert_nothing_lost(before: dict[str, Any], after: list[JournalRecord]) -> None:
    """Every step attempt the run showed before the fault is still in its journal, and the
    run ended with each step succeeded exactly once."""
    for step in BEFORE_HOLD:
        attempts = steps_by_name(before)[step]["attempts"]
        kept = [r for r in after if r.step == step and r.status is JournalStatus.STEP_STARTED]
        assert [r.attempt for r in kept][: len(attempts)] == [a["attempt"] for a in attempts]
    assert not [r for r in after if r.status is JournalStatus.CORRUPT]
    assert succeeded_steps(after) == Counter(
        {s: 1 for s in (*BEFORE_HOLD, HOLD, "flip-dns", "notify-done")}
    )


# -- SQLite -----------------------------------------------------------------------------------
async def test_sqlite_disk_full_mid_run(
    tmp_path: Path,
    small_tmpfs: Callable[[int], Path],
    moto: MotoServer,
    seeded: Seeded,
    targets: dict[str, Target],
    http: aiohttp.ClientSession,
    mutations: Counter[str],
) -> None:
    disk = small_tmpfs(4)
    db = disk / "state.db"
    config = sqlite_config(tmp_path, moto, kill_window_policy(seeded.zone_id, targets), db)
    async with running_daemon(config) as daemon:
        before = await mid_run(http, daemon, targets)
        filler = await asyncio.to_thread(fill, disk)  # the disk is full, mid-run
        await store_trouble_reported(http, daemon)
        assert any("disk is not full" in e for e in store_errors(daemon)), daemon.tail()
        filler.unlink()  # space again: no restart needed
        run = await run_done(http, daemon, before["run_id"])
        assert [e["run_id"] for e in daemon.events("run_resumed")] == [run["run_id"]]
    assert mutations == ONE_FAILOVER, mutations
    assert_failed_over(moto, seeded, run["run_id"])
    assert_nothing_lost(before, await journal(db, run["run_id"]))


async def test_sqlite_disk_turning_read_only_mid_run(
    tmp_path: Path,
    ext4_disk: Callable[[int], Ext4Disk],
    moto: MotoServer,
    seeded: Seeded,
    targets: dict[str, Target],
    http: aiohttp.ClientSession,
    mutations: Counter[str],
) -> None:
    disk = ext4_disk(16)
    db = disk.mountpoint / "state.db"
    config = sqlite_config(tmp_path, moto, kill_window_policy(seeded.zone_id, targets), db)
    async with running_daemon(config) as daemon:
        before = await mid_run(http, daemon, targets)
        await asyncio.to_thread(disk.fail, "failoverd chaos: the disk fails")
        await store_trouble_reported(http, daemon)
        assert any("cannot open or write" in e for e in store_errors(daemon)), daemon.tail()
        daemon.proc.terminate()  # the operator stops it to repair the disk...
        assert await asyncio.wait_for(daemon.proc.wait(), 15) == 0, daemon.tail()
    await asyncio.to_thread(disk.repair)  # ...fsck, mount...
    async with running_daemon(config) as daemon:  # ...and starts it again
        run = await run_done(http, daemon, before["run_id"])
    assert mutations == ONE_FAILOVER, mutations
    assert_failed_over(moto, seeded, run["run_id"])
    assert_nothing_lost(before, await journal(db, run["run_id"]))


async def test_sqlite_locked_by_another_process_mid_run_then_corrupt_rows(
    tmp_path: Path,
    moto: MotoServer,
    seeded: Seeded,
    targets: dict[str, Target],
    http: aiohttp.ClientSession,
    mutations: Counter[str],
) -> None:
    db = tmp_path / "state.db"
    config = sqlite_config(tmp_path, moto, kill_window_policy(seeded.zone_id, targets), db)
    released = threading.Event()
    locked = threading.Event()

    def hold_lock() -> None:  # another process's transaction, as `sqlite3 state.db` leaves one
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            released.wait(60)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    async with running_daemon(config) as daemon:
        before = await mid_run(http, daemon, targets)
        holder = threading.Thread(target=hold_lock)
        holder.start()
        try:
            await asyncio.to_thread(locked.wait, 10)
            await store_trouble_reported(http, daemon)
            assert any("stayed locked" in e for e in store_errors(daemon)), daemon.tail()
        finally:
            released.set()
            await asyncio.to_thread(holder.join, 10)
        run = await run_done(http, daemon, before["run_id"])

        await stop(daemon)

    # Rows go corrupt while it is down (a bad restore, a disk error): the run's second
    # record and the service's state. It starts, is ready, and shows what it can.
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(
            "UPDATE journal SET body = 'garbage' WHERE seq = (SELECT seq FROM journal"
            " WHERE run_id = ? ORDER BY seq LIMIT 1 OFFSET 1)",
            (run["run_id"],),
        )
        conn.execute("UPDATE service_state SET body = '{\"v\": 1}'")
    finally:
        conn.close()
    async with running_daemon(config) as daemon:

        async def ready() -> bool:  # was: "the state store is not reachable", forever
            status, _ = await get_json(http, f"{daemon.base_url}/readyz")
            return status == 200

        await until(ready, "/readyz 200 with a corrupt state row", 20.0, daemon)
        body = await service(http, daemon)
        assert body["paused"] and body["active_region"] == "us-west-2", body
        assert "corrupt" in body["state_problem"], body
        status, shown = await get_json(http, f"{daemon.base_url}/v1/runs/{run['run_id']}")
        assert status == 200 and len(shown["corrupt_records"]) == 1, shown
        status, audit = await get_json(http, f"{daemon.base_url}/v1/audit?service={SERVICE}")
        assert status == 200 and "corrupt" in [e["entry"] for e in audit["entries"]], audit
        assert daemon.events("store_record_quarantined") and daemon.events("service_state_corrupt")
        await stop(daemon)
    assert mutations == ONE_FAILOVER, mutations
    assert_failed_over(moto, seeded, run["run_id"])


# -- etcd -------------------------------------------------------------------------------------
async def test_etcd_member_killed_then_quorum_lost_and_back_mid_run(
    fleet: Fleet, world: World, etcd_cluster_factory: Callable[..., EtcdCluster]
) -> None:
    etcd = etcd_cluster_factory(3)
    store = SharedStore.etcd(etcd.endpoints)
    configure(fleet, world, ("chaos-a", "chaos-b"), store)
    await fleet.start()
    leader = await fleet.one_leader()
    await _ha.all_ready(fleet)
    world.targets[SOURCE].status = 503
    run_id = await holding(fleet, leader)
    before = await store.run_records(run_id)
    first = await asyncio.to_thread(etcd.raft_leader)
    second = (first + 1) % 3
    try:
        await asyncio.to_thread(etcd.kill, first)  # the raft leader's member: an election

        async def unready() -> bool:
            for i in fleet.running():
                status, body = await fleet.readyz(i)
                if status != 503 or "the state store is not reachable" not in body["problems"]:
                    return False
            return not await fleet.leaders()

        await asyncio.to_thread(etcd.kill, second)  # no quorum now
        await fleet.until(unready, "every instance unready and none leading", TTL + 5)
        for i in fleet.running():
            assert i.daemon is not None and i.daemon.events("leader_lease_store_error")
    finally:
        etcd.start_member(first)
        etcd.start_member(second)
        await etcd.wait_healthy_async()
    new = await fleet.one_leader(within=TTL + 10)
    run = await run_succeeded(fleet, new, run_id)
    assert all(s["status"] == "succeeded" for s in run["steps"]), run["steps"]
    assert world.mutations == ONE_FAILOVER, world.mutations
    after = await store.run_records(run_id)
    assert after[: len(before)] == before  # nothing journaled lost
    assert succeeded_steps(after) == Counter({s["name"]: 1 for s in run["steps"]})
    assert_failed_over(world.moto, world.seeded, run_id)
