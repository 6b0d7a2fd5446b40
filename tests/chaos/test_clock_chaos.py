"""Chaos row "clock": the host's wall clock stepped an hour ahead, then an hour back, under a
running daemon (a subprocess on Debian's libfaketime: ``FAKETIME_TIMESTAMP_FILE`` re-read on
every call, the monotonic clock left alone, as a real step leaves it). No decision may
change: the daemon stays the leader, the regions stay healthy, no view goes stale or
freezes, nothing is decided. A real outage afterwards is then detected and acted on as
usual. The step is reported (``wall_clock_stepped``, ``failoverd_wall_clock_offset_seconds``).

Same daemon, world and probe targets as tests/integration/test_daemon_e2e.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.binaries import in_ci
from tests.fixtures.moto_server import MotoServer
from tests.integration import test_daemon_e2e as _e2e
from tests.integration.runbook.webapp_world import SOURCE, TARGET, Seeded
from tests.integration.test_daemon_e2e import (
    DaemonProcess,
    Target,
    e2e_policy,
    get_json,
    running_daemon,
    sample,
    service,
    stop,
    wait_failed_over,
    wait_ready_to_fail_over,
)

http = _e2e.http
seeded = _e2e.seeded
targets = _e2e.targets

LIBFAKETIME = "/usr/lib/*/faketime/libfaketime.so.1"  # Debian's libfaketime, any arch
HOUR = 3600
WATCH = 5.0  # seconds watched after each step: more than the 3 s staleness and lease


def libfaketime() -> Path:
    found = sorted(Path("/").glob(LIBFAKETIME.lstrip("/")))
    if not found:
        message = f"{LIBFAKETIME} is missing (apt-get install libfaketime)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return found[0]


def config(tmp_path: Path, moto: MotoServer, policy: str) -> Path:
    from tests.e2e.test_daemon_kill_resume import write_config

    return write_config(tmp_path, moto, policy)


async def watch(http: aiohttp.ClientSession, daemon: DaemonProcess, seconds: float) -> list[str]:
    """What goes wrong in ``seconds``: a view not healthy, not the leader, not ready."""
    problems: list[str] = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        body = await service(http, daemon)
        verdicts = {v["region"]: v["verdict"] for v in body["verdicts"]}
        if verdicts != {SOURCE: "healthy", TARGET: "healthy"}:
            problems.append(f"verdicts {verdicts}")
        if body["leader"] != body["node_id"]:
            problems.append(f"leader {body['leader']}")
        status, ready = await get_json(http, f"{daemon.base_url}/readyz")
        if status != 200:
            problems.append(f"readyz {ready}")
        await asyncio.sleep(0.2)
    return problems


async def test_a_wall_clock_step_of_an_hour_either_way_changes_no_decision(
    tmp_path: Path,
    moto: MotoServer,
    seeded: Seeded,
    targets: dict[str, Target],
    http: aiohttp.ClientSession,
) -> None:
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(libfaketime()),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",  # the file is read at every call: the step is instant
        "DONT_FAKE_MONOTONIC": "1",
    }
    path = config(tmp_path, moto, e2e_policy(seeded.zone_id, targets))
    async with running_daemon(path, extra_env=env) as daemon:
        await wait_ready_to_fail_over(http, daemon)
        decided = len(daemon.events("decision_changed"))
        problems: dict[str, list[str]] = {}
        for step in (f"+{HOUR}", f"-{HOUR}"):  # an hour ahead; then an hour behind
            offset.write_text(step + "\n")
            problems[step] = await watch(http, daemon, WATCH)
        assert problems == {f"+{HOUR}": [], f"-{HOUR}": []}, problems
        assert len(daemon.events("decision_changed")) == decided, daemon.tail()
        assert not daemon.events("leader_lease_lost"), daemon.tail()
        steps = [round(e["offset_seconds"]) for e in daemon.events("wall_clock_stepped")]
        assert steps[:2] == [HOUR, -HOUR], steps
        async with http.get(f"{daemon.base_url}/metrics") as response:
            offset_metric = sample(await response.text(), "failoverd_wall_clock_offset_seconds")
        assert offset_metric is not None and round(offset_metric) == -HOUR

        # The daemon still acts on what really happens, in the usual time.
        outage = time.monotonic()
        targets[SOURCE].status = 503
        after = await wait_failed_over(http, daemon)
        took = time.monotonic() - outage
        assert after["active_region"] == TARGET
        print(f"\nclock chaos: steps +1h, -1h: 0 decisions changed; outage to failover {took:.1f}s")
        await stop(daemon)
