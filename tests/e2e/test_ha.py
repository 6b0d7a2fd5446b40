"""High availability: several `failoverd run` instances on a real 3-member etcd cluster.

Each test starts its own daemons (subprocesses, the production entry point) on the
session's shared etcd cluster (tests/fixtures/etcd.py; each test under its own key prefix, a
deployment of its own; the test that kills members gets a cluster of its own) and the
session's moto server. The world is the webapp's (tests/integration's e2e setup), with a 4 s
``hold`` in the failover runbook after promote-db, so that a leader can be killed or frozen
while the run is in flight with the world half moved.

What is checked is what an operator relies on: exactly one instance acts; a follower refuses
commands naming the leader; a killed leader's run is completed by another instance within
TTL + 2 s of the kill, with no step applied twice (counted in moto and in the journal); a
frozen leader that wakes up after losing its lease cannot write and steps down; losing one
etcd member changes nothing, losing quorum stops every action and readiness until it is back.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.ha_support import TTL, Fleet, Instance, SharedStore, succeeded_steps, write_configs
from tests.e2e.test_daemon_kill_resume import HOLD, kill_window_policy, steps_by_name
from tests.fixtures.etcd import EtcdCluster
from tests.fixtures.moto_server import MotoServer
from tests.integration import test_daemon_e2e as _e2e
from tests.integration.runbook.webapp_world import (
    SERVICE,
    SOURCE,
    TARGET,
    Seeded,
    assert_failed_over,
    moto_mutations,
)
from tests.integration.test_audit_e2e import failoverd
from tests.integration.test_daemon_e2e import TOKEN, Target, daemon_env, sample

# The integration test's fixtures, visible to pytest here under the same names.
http = _e2e.http
seeded = _e2e.seeded
targets = _e2e.targets

ROOT = Path(__file__).parents[2]
BEFORE_HOLD = ("notify-start", "promote-db", "scale-up")
TAKEOVER_BOUND = TTL + 2.0  # the acceptance: another instance leads within TTL + 2 s
RUN_DEADLINE = 40.0
# The whole failover's changes to the world, each exactly once.
ONE_FAILOVER = Counter(
    PromoteReadReplica=1,
    AddTagsToResource=1,
    SetDesiredCapacity=1,
    ChangeResourceRecordSets=1,
    Publish=2,
)


@pytest.fixture
def store(etcd_cluster: EtcdCluster) -> SharedStore:
    """A deployment of its own (a fresh key prefix) on the session's shared etcd cluster."""
    return SharedStore.etcd(etcd_cluster.endpoints)


@pytest.fixture
def mutations(seeded: Seeded) -> Iterator[Counter[str]]:
    with moto_mutations() as counts:
        yield counts


@pytest.fixture
async def fleet(http: aiohttp.ClientSession) -> AsyncIterator[Fleet]:
    async with AsyncExitStack() as stack:
        yield Fleet(stack, http)


@dataclass(frozen=True)
class World:
    """The webapp's world in moto, its probe targets, and moto's count of its changes."""

    tmp_path: Path
    moto: MotoServer
    seeded: Seeded
    targets: dict[str, Target]
    mutations: Counter[str]


@pytest.fixture
def world(
    tmp_path: Path,
    moto: MotoServer,
    seeded: Seeded,
    targets: dict[str, Target],
    mutations: Counter[str],
) -> World:
    return World(tmp_path, moto, seeded, targets, mutations)


def configure(fleet: Fleet, world: World, names: tuple[str, ...], store: SharedStore) -> None:
    policy = kill_window_policy(world.seeded.zone_id, world.targets)
    fleet.instances = write_configs(world.tmp_path, names, store, world.moto, policy)


async def service(fleet: Fleet, instance: Instance) -> dict[str, Any]:
    async with fleet.http.get(f"{instance.url}/v1/services/{SERVICE}") as response:
        body = await response.json()
        assert response.status == 200, body
    assert isinstance(body, dict)
    return body


async def ready_to_fail_over(fleet: Fleet, instance: Instance) -> bool:
    """/readyz 200, both regions healthy and the standby's lag known (failover allowed)."""
    try:
        status, _ = await fleet.readyz(instance)
        body = await service(fleet, instance)
    except (aiohttp.ClientError, TimeoutError):
        return False
    verdicts = {v["region"]: v["verdict"] for v in body["verdicts"]}
    lag = {x["region"]: x["within_rpo"] for x in body["lag"]}
    return (
        status == 200
        and verdicts == {SOURCE: "healthy", TARGET: "healthy"}
        and lag.get(TARGET) is True
    )


async def all_ready(fleet: Fleet) -> None:
    async def ready() -> bool:
        return all([await ready_to_fail_over(fleet, i) for i in fleet.running()])

    await fleet.until(ready, "every instance ready, both regions healthy", 30.0)


async def holding(fleet: Fleet, leader: Instance) -> str:
    """Wait until the leader's run has promoted the replica (the world half moved) and is in
    its hold; the run's id."""
    run_id = ""

    async def in_hold() -> bool:
        nonlocal run_id
        run = (await service(fleet, leader)).get("run") or {}
        if not run:
            return False
        run_id = run["run_id"]
        async with fleet.http.get(f"{leader.url}/v1/runs/{run_id}") as response:
            body = await response.json()
        steps = steps_by_name(body)
        # Every step before the hold journaled: an AWS call still in flight when the leader
        # dies is (rightly) made again by the next one, and would blur the count below.
        return steps[HOLD]["status"] == "running" and all(
            steps[name]["status"] == "succeeded" for name in BEFORE_HOLD
        )

    await fleet.until(in_hold, "the steps before the hold done, the hold running", RUN_DEADLINE)
    return run_id


async def run_succeeded(fleet: Fleet, instance: Instance, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal run
        async with fleet.http.get(f"{instance.url}/v1/runs/{run_id}") as response:
            run = await response.json()
        if run.get("status") == "failed":
            pytest.fail(f"run {run_id} failed: {run}")
        return run.get("status") == "succeeded"

    await fleet.until(done, f"run {run_id} to succeed on {instance.name}", RUN_DEADLINE)
    return run


async def new_leader_within(fleet: Fleet, old: Instance, bound: float) -> tuple[Instance, float]:
    """The instance that leads after ``old`` went, and the seconds it took from now."""
    started = time.monotonic()
    found: list[Instance] = []

    async def taken_over() -> bool:
        nonlocal found
        found = await fleet.leaders(exclude=old)  # a frozen one would stall every poll
        return len(found) == 1

    await fleet.until(taken_over, f"another instance to lead after {old.name}", bound + 10)
    return found[0], time.monotonic() - started


async def failing_over(fleet: Fleet, world: World, store: SharedStore) -> tuple[Instance, str]:
    """Two instances up and ready, then the primary fails: the leader and its run's id, the
    run in its hold (the replica promoted, the DNS not yet flipped)."""
    configure(fleet, world, ("ha-a", "ha-b"), store)
    await fleet.start()
    leader = await fleet.one_leader()
    await all_ready(fleet)
    world.targets[SOURCE].status = 503
    return leader, await holding(fleet, leader)


async def taken_over(fleet: Fleet, old: Instance) -> Instance:
    """The instance that leads after ``old`` went, failing unless within TAKEOVER_BOUND."""
    successor, took = await new_leader_within(fleet, old, TAKEOVER_BOUND)
    assert took <= TAKEOVER_BOUND, f"takeover took {took:.2f}s (bound {TAKEOVER_BOUND}s)"
    return successor


async def post(fleet: Fleet, instance: Instance, path: str, body: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with fleet.http.post(f"{instance.url}{path}", json=body, headers=headers) as response:
        return response.status, await response.json()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=ROOT,
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


async def acli(*args: str) -> subprocess.CompletedProcess[str]:
    """``cli`` without blocking this loop, which serves the probe targets."""
    code, out, err = await failoverd(*args)
    return subprocess.CompletedProcess(list(args), code, out, err)


# -- the tests -----------------------------------------------------------------------------
async def test_three_instances_one_leader_only_it_acts_followers_refuse_commands(
    fleet: Fleet, world: World, store: SharedStore
) -> None:
    configure(fleet, world, ("ha-a", "ha-b", "ha-c"), store)
    await fleet.start()
    leader = await fleet.one_leader()
    followers = [i for i in fleet.instances if i is not leader]
    await all_ready(fleet)

    # A follower refuses a command, naming the leader and the API address it announced
    # with its lease; the CLI sent there follows that once, to the leader, and says so.
    status, body = await post(
        fleet, followers[0], f"/v1/services/{SERVICE}/pause", {"reason": "ha test"}
    )
    assert status == 409 and body["error"] == "not_leader", body
    assert body["leader"] == leader.name and leader.name in body["message"], body
    assert body["leader_api"] == leader.url, body
    token_file = str(world.tmp_path / "token")
    followed = await acli("pause", SERVICE, "--api", followers[1].url, "--token-file", token_file,
                   "--reason", "ha test")  # fmt: skip
    assert followed.returncode == 0, followed
    assert f"does not lead; sending the command to {leader.name} at {leader.url}" in (
        followed.stderr
    ), followed
    assert (await service(fleet, leader))["paused"] is True
    resumed = await acli("resume", SERVICE, "--api", followers[0].url, "--token-file", token_file,
                  "--reason", "ha test over")  # fmt: skip
    assert resumed.returncode == 0, resumed
    shown = await acli("status", "--api", followers[1].url)
    assert shown.returncode == 0, shown
    assert f"node {followers[1].name} " in shown.stdout, shown.stdout
    assert f"leader {leader.name} " in shown.stdout, shown.stdout
    assert "DIFFERS" not in shown.stdout, shown.stdout
    assert (await service(fleet, leader))["paused"] is False

    # The primary fails: every instance sees it, only the leader moves the world, once.
    world.targets[SOURCE].status = 503
    run_id = await holding(fleet, leader)
    run = await run_succeeded(fleet, leader, run_id)
    assert all(s["status"] == "succeeded" for s in run["steps"]), run["steps"]
    assert_failed_over(world.moto, world.seeded, run_id)
    assert world.mutations == ONE_FAILOVER, world.mutations
    for follower in followers:
        assert follower.daemon is not None
        assert not follower.daemon.events("run_started"), follower.daemon.tail()
        assert not follower.daemon.events("leader_lease_acquired")
    assert succeeded_steps(await store.run_records(run_id)) == Counter(
        {s["name"]: 1 for s in run["steps"]}
    )

    # The leader goes away after the run: the next one takes the state it left (us-west-2
    # active), not its own stale view, and starts nothing.
    assert leader.daemon is not None
    leader.daemon.proc.send_signal(signal.SIGKILL)
    await leader.daemon.proc.wait()
    successor = await taken_over(fleet, leader)

    async def settled() -> bool:
        body = await service(fleet, successor)
        return bool(body["active_region"] == TARGET and body["phase"] != "unknown")

    await fleet.until(settled, f"{successor.name} to see {TARGET} active", 10.0)
    await fleet.one_leader()
    assert world.mutations == ONE_FAILOVER, world.mutations


async def test_a_killed_leader_s_run_is_completed_by_another_within_ttl_plus_2s(
    fleet: Fleet, world: World, store: SharedStore
) -> None:
    leader, run_id = await failing_over(fleet, world, store)
    before_kill = Counter(world.mutations)
    assert before_kill["PromoteReadReplica"] == 1 and not before_kill["ChangeResourceRecordSets"]

    assert leader.daemon is not None
    leader.daemon.proc.send_signal(signal.SIGKILL)
    successor = await taken_over(fleet, leader)

    run = await run_succeeded(fleet, successor, run_id)
    assert all(s["status"] == "succeeded" for s in run["steps"]), run["steps"]
    assert (run["source"], run["target"]) == (SOURCE, TARGET)
    assert_failed_over(world.moto, world.seeded, run_id)
    assert successor.daemon is not None
    assert [e["run_id"] for e in successor.daemon.events("run_resumed")] == [run_id]
    # Nothing applied twice: moto saw each change once, the journal one success per step.
    assert world.mutations == ONE_FAILOVER, world.mutations
    counts = succeeded_steps(await store.run_records(run_id))
    assert set(counts) == {s["name"] for s in run["steps"]} and max(counts.values()) == 1, counts
    steps = steps_by_name(run)
    assert len(steps["promote-db"]["attempts"]) == 1, steps["promote-db"]


async def test_a_frozen_leader_that_wakes_after_its_lease_is_fenced_and_steps_down(
    fleet: Fleet, world: World, store: SharedStore
) -> None:
    leader, run_id = await failing_over(fleet, world, store)

    assert leader.daemon is not None
    leader.daemon.proc.send_signal(signal.SIGSTOP)
    try:
        # Frozen past its lease: the lease expires in etcd (server-side), another leads and
        # finishes the run while the frozen one still believes its hold is running.
        successor = await taken_over(fleet, leader)
        await run_succeeded(fleet, successor, run_id)
    finally:
        leader.daemon.proc.send_signal(signal.SIGCONT)

    # Awake, its hold ends and it tries to journal the step: refused; it steps down.
    async def fenced() -> bool:
        assert leader.daemon is not None
        return any(
            e.get("run_id") == run_id and e.get("error") in ("NotLeader", "FencedOut")
            for e in leader.daemon.events("run_interrupted")
        ) and bool(leader.daemon.events("leader_lease_lost"))

    await fleet.until(fenced, f"{leader.name}'s journal write fenced and its lease lost", 15.0)

    async def follows() -> bool:
        body = await fleet.status(leader)
        assert body is not None and body["is_leader"] is False, body
        return bool(body["leader"] == successor.name)

    await fleet.until(follows, f"{leader.name} to name {successor.name} as the leader", 5.0)
    assert await fleet.one_leader() is successor
    assert world.mutations == ONE_FAILOVER, world.mutations
    counts = succeeded_steps(await store.run_records(run_id))
    assert max(counts.values()) == 1, counts
    assert_failed_over(world.moto, world.seeded, run_id)


async def test_one_etcd_member_down_changes_nothing_two_stop_all_action_until_back(
    fleet: Fleet, world: World, etcd_cluster_factory: Callable[..., EtcdCluster]
) -> None:
    etcd = etcd_cluster_factory(3)  # a cluster of its own: this test kills its members
    store = SharedStore.etcd(etcd.endpoints)
    configure(fleet, world, ("ha-a", "ha-b", "ha-late"), store)
    await fleet.start("ha-a", "ha-b")
    leader = await fleet.one_leader()
    await all_ready(fleet)
    # The raft leader's member first, the worst single loss: the others must elect a new
    # leader (500 ms election timeout here) within one store call (2 s).
    first = await asyncio.to_thread(etcd.raft_leader)
    second = (first + 1) % 3
    try:
        # One member down: the same leader, every instance ready, for two lease periods.
        await asyncio.to_thread(etcd.kill, first)
        until = time.monotonic() + 2 * TTL
        while time.monotonic() < until:
            assert await fleet.leaders() == [leader], fleet.logs()
            for i in fleet.running():
                status, body = await fleet.readyz(i)
                assert status == 200, (i.name, body)
            await asyncio.sleep(0.2)

        # Two down: no quorum. Nobody leads, nobody is ready, an outage starts nothing.
        await asyncio.to_thread(etcd.kill, second)

        async def unready() -> bool:
            for i in fleet.running():
                status, body = await fleet.readyz(i)
                if status != 503 or "the state store is not reachable" not in body["problems"]:
                    return False
                async with fleet.http.get(f"{i.url}/metrics") as response:
                    metrics = await response.text()
                if sample(metrics, "failoverd_store_up", backend="etcd") != 0.0:
                    return False
            return not await fleet.leaders()

        await fleet.until(unready, "every instance unready, store_up 0 and none leading", TTL + 5)
        for i in fleet.running():
            assert i.daemon is not None and i.daemon.events("leader_lease_store_error")
        # A daemon started now comes up and waits for the store (no crash loop).
        await fleet.start("ha-late")
        status, body = await fleet.readyz(fleet["ha-late"])
        assert status == 503 and "the state store is not reachable" in body["problems"], body
        world.targets[SOURCE].status = 503

        async def down_seen() -> bool:
            body = await service(fleet, leader)
            return {v["region"]: v["verdict"] for v in body["verdicts"]}[SOURCE] == "down"

        await fleet.until(down_seen, f"{SOURCE} seen down (by the former leader)", 15.0)
        # Watched for a lease period: a leader would start the failover at once.
        until = time.monotonic() + TTL
        while time.monotonic() < until:
            for i in (fleet["ha-a"], fleet["ha-b"]):
                assert (await service(fleet, i))["run"] is None, (i.name, fleet.logs())
            await asyncio.sleep(0.25)
        assert not world.mutations, world.mutations
        assert fleet["ha-late"].daemon is not None
        assert fleet["ha-late"].daemon.events("state_store_unreachable")
    finally:
        etcd.start_member(first)
        etcd.start_member(second)
        await etcd.wait_healthy_async()

    # Quorum back: a leader again, everyone ready, and the pending outage is acted on.
    new = await fleet.one_leader(within=TTL + 10)

    async def ready() -> bool:
        return all([(await fleet.readyz(i))[0] == 200 for i in fleet.running()])

    await fleet.until(ready, "every instance ready again", 15.0)
    run_id = ""

    async def started() -> bool:
        nonlocal run_id
        run_id = ((await service(fleet, new)).get("run") or {}).get("run_id", "")
        return bool(run_id)

    await fleet.until(started, "a failover run after quorum returned", 20.0)
    await run_succeeded(fleet, new, run_id)
    assert world.mutations == ONE_FAILOVER, world.mutations
