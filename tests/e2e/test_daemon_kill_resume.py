"""SIGKILL `failoverd run` in the middle of a failover runbook, start a new daemon on the
same state file: the run resumes from its journal, completes, and nothing already applied
to the world is applied again.

Same setup as tests/integration/test_daemon_e2e.py (its fixtures and helpers are imported;
only the body of its ``daemon`` fixture, which cannot be imported as a function that starts
two daemons, is restated in :func:`write_config` and :func:`running_daemon`), with one
change to the webapp runbook: a 4 s ``hold`` wait after promote-db (and the steps beside
it) that flip-dns waits for, so that there is a window in which promote-db has changed the
world and the run is still in flight. The daemon is killed in that window.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.fixtures.moto_server import MotoServer
from tests.fixtures.secrets import write_secret

# The integration test's helpers are private to that module; imported here on purpose so
# both tests build the very same daemon setup.
from tests.integration import test_daemon_e2e as _e2e
from tests.integration.runbook.webapp_world import (
    SOURCE,
    TARGET,
    Seeded,
    assert_failed_over,
    moto_mutations,
)
from tests.integration.test_daemon_e2e import (
    FAILOVER_DEADLINE,
    STEPS,
    TOKEN,
    DaemonProcess,
    Target,
    e2e_policy,
    get_json,
    running_daemon,
    service,
    stop,
    until,
    wait_failed_over,
    wait_ready_to_fail_over,
)

# Its fixtures, made visible to pytest in this module under the same names.
http = _e2e.http
seeded = _e2e.seeded
targets = _e2e.targets

HOLD = "hold"
RESUME_DEADLINE = 30.0


def kill_window_policy(zone_id: str, targets: dict[str, Target]) -> str:
    """The e2e policy with a 4 s ``hold`` after promote-db, scale-up and notify-start that
    flip-dns also waits for."""
    policy = yaml.safe_load(e2e_policy(zone_id, targets))
    steps: list[dict[str, Any]] = policy["runbooks"]["failover"]
    names = [s["name"] for s in steps]
    assert {"notify-start", "promote-db", "scale-up", "flip-dns"} <= set(names), names
    flip = steps[names.index("flip-dns")]
    flip["after"] = ["promote-db", "scale-up", HOLD]
    steps.insert(
        names.index("flip-dns"),
        # After the steps that run beside promote-db too: a call of theirs still in flight
        # at the kill would reach moto after the count below is taken (and a notification
        # is, by design, published again by the resumed run: at least once).
        {
            "name": HOLD,
            "action": "wait",
            "params": {"duration": "4s"},
            "after": ["promote-db", "scale-up", "notify-start"],
        },
    )
    return yaml.safe_dump(policy, sort_keys=False)


def write_config(tmp_path: Path, moto: MotoServer, policy: str) -> Path:
    """The same daemon settings as the integration test's fixture; both daemons use them."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "webapp.yaml").write_text(policy)
    token_file = write_secret(tmp_path / "token", TOKEN + "\n")
    config = tmp_path / "failoverd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node_id": "e2e-node",
                "policies": [str(policies)],
                "state": {"path": str(tmp_path / "state.db")},
                "engine": {"tick": "200ms"},
                "leader": {"ttl": "3s"},
                "aws": {"endpoint_url": moto.endpoint_url, "read_timeout": "5s"},
                "http": {"bind": "127.0.0.1", "port": 0, "token_file": str(token_file)},
                "log": {"format": "json"},
            }
        )
    )
    return config


@pytest.fixture
def mutations(seeded: Seeded) -> Iterator[Counter[str]]:
    """Changes that reach moto after the world is seeded (seeding is not counted)."""
    with moto_mutations() as counts:
        yield counts


@pytest.fixture
def launch(
    tmp_path: Path, moto: MotoServer, seeded: Seeded, targets: dict[str, Target]
) -> Callable[[], AbstractAsyncContextManager[DaemonProcess]]:
    """Start a daemon on the kill-window policy; every call uses the same config and state."""
    config = write_config(tmp_path, moto, kill_window_policy(seeded.zone_id, targets))
    return lambda: running_daemon(config)


def steps_by_name(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in run["steps"]}


async def test_a_killed_daemon_resumes_the_run_and_applies_nothing_twice(
    launch: Callable[[], AbstractAsyncContextManager[DaemonProcess]],
    http: aiohttp.ClientSession,
    targets: dict[str, Target],
    moto: MotoServer,
    seeded: Seeded,
    mutations: Counter[str],
) -> None:
    async with launch() as first:
        await wait_ready_to_fail_over(http, first)
        targets[SOURCE].status = 503

        run_id = ""
        mid_flight: dict[str, Any] = {}

        async def holding() -> bool:
            nonlocal run_id, mid_flight
            run = (await service(http, first)).get("run") or {}
            if not run:
                return False
            run_id = run["run_id"]
            status, body = await get_json(http, f"{first.base_url}/v1/runs/{run_id}")
            assert status == 200, body
            steps = steps_by_name(body)
            mid_flight = body
            return bool(
                steps["promote-db"]["status"] == "succeeded" and steps[HOLD]["status"] == "running"
            )

        await until(holding, "promote-db done and hold running", FAILOVER_DEADLINE, first)
        first.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(first.proc.wait(), 10) == -signal.SIGKILL

    # Killed in the window: the world was half moved.
    assert steps_by_name(mid_flight)["flip-dns"]["status"] == "pending", mid_flight
    before_kill = Counter(mutations)
    assert before_kill["PromoteReadReplica"] == 1, before_kill
    assert before_kill["SetDesiredCapacity"] == before_kill["Publish"] == 1, before_kill
    assert before_kill["ChangeResourceRecordSets"] == 0, before_kill

    async with launch() as second:
        run: dict[str, Any] = {}

        async def finished() -> bool:
            nonlocal run
            status, run = await get_json(http, f"{second.base_url}/v1/runs/{run_id}")
            assert status == 200, run
            return bool(run["status"] == "succeeded")

        await until(finished, f"run {run_id} to succeed", RESUME_DEADLINE, second)
        # The service view follows the resumed run to its end, as the status page shows it.
        after = await wait_failed_over(http, second)
        assert after["run"]["run_id"] == run_id, after["run"]
        assert {s["name"] for s in run["steps"]} == STEPS | {HOLD}
        assert all(s["status"] == "succeeded" for s in run["steps"]), run["steps"]
        assert (run["source"], run["target"]) == (SOURCE, TARGET)
        assert_failed_over(moto, seeded, run_id)

        # The new daemon resumed the journal rather than starting over: it made only the
        # changes of the steps still to do (flip-dns, notify-done); promote-db, its tag,
        # scale-up and notify-start reached moto once, from the killed daemon.
        assert [e["run_id"] for e in second.events("run_resumed")] == [run_id]
        assert mutations - before_kill == Counter(ChangeResourceRecordSets=1, Publish=1), (
            before_kill,
            mutations,
        )
        assert mutations["PromoteReadReplica"] == 1, mutations
        steps = steps_by_name(run)
        assert len(steps["promote-db"]["attempts"]) == 1, steps["promote-db"]
        assert steps["promote-db"]["detail"].startswith("changed:"), steps["promote-db"]
        # The interrupted wait was run again in full by the new daemon.
        assert len(steps[HOLD]["attempts"]) == 2, steps[HOLD]

        await stop(second)
