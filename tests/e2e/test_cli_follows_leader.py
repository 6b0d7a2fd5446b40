"""The CLI finds the leader: two `failoverd run` instances sharing one SQLite store (several
daemons on one host), each announcing its API address with the lease. The operator points
the CLI at the follower: it is refused with 409 naming the leader and its address, the CLI
sends the command there once, says so, and the leader completes the failover. The follower's
status names the leader, its API and the policy version it acts on."""

from __future__ import annotations

import aiohttp

from tests.e2e import test_ha as ha
from tests.e2e.ha_support import Fleet, SharedStore, write_configs
from tests.integration import test_daemon_e2e as e2e
from tests.integration.runbook.webapp_world import SERVICE, TARGET, assert_failed_over
from tests.integration.test_audit_e2e import failoverd

http = e2e.http
seeded = e2e.seeded
targets = e2e.targets
fleet = ha.fleet
world = ha.world
mutations = ha.mutations


async def test_the_cli_pointed_at_a_follower_completes_a_failover_through_the_leader(
    fleet: Fleet, world: ha.World, http: aiohttp.ClientSession
) -> None:
    store = SharedStore.sqlite(world.tmp_path / "shared.db")
    policy = e2e.e2e_policy(world.seeded.zone_id, world.targets)
    fleet.instances = write_configs(world.tmp_path, ("one", "two"), store, world.moto, policy)
    await fleet.start()
    leader = await fleet.one_leader()
    (follower,) = [i for i in fleet.instances if i is not leader]
    await ha.all_ready(fleet)

    async def announced() -> bool:
        body = await fleet.status(follower)
        return body is not None and body.get("leader_api") == leader.url

    await fleet.until(announced, "the follower to know the leader's API", 10.0)
    status = await fleet.status(follower)
    assert status is not None
    assert status["leader"] == leader.name and not status["is_leader"]
    assert status["leader_policy_version"] == status["policy_version"]

    token_file = str(world.tmp_path / "token")
    # A subprocess that leaves this loop free: the probe targets are served from it.
    code, out, err = await failoverd(
        "failover",
        SERVICE,
        "--to",
        TARGET,
        "--reason",
        "the operator only knew the follower",
        "--api",
        follower.url,
        "--token-file",
        token_file,
    )
    assert code == 0, (out, err)
    assert (
        f"failoverd: {follower.url} does not lead; sending the command to {leader.name}"
        f" at {leader.url}"
    ) in err, err
    assert out.startswith(f"accepted: failover to {TARGET} started (run "), out
    run_id = out.split("(run ")[1].rstrip(")\n")
    run = await ha.run_succeeded(fleet, leader, run_id)
    assert all(s["status"] == "succeeded" for s in run["steps"]), run["steps"]
    assert_failed_over(world.moto, world.seeded, run_id)
    assert follower.daemon is not None and not follower.daemon.events("run_started")
