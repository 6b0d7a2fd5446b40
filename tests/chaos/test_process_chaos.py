"""Chaos row "process faults": 20 runs in a row (failover, automatic failback, failover...)
of a daemon and a remote agent (subprocesses, the production entry points) over a real
mosquitto and moto, and in each run one of them is SIGKILLed (and started again) or
SIGSTOPped (and continued after up to 3 s, longer than the 2 s lease) at a random, seeded
moment after the outage starts or ends. Every run must end in the same state as without
the fault: its moves done, the service active where the run took it, the DNS record
pointing there, each step journaled as succeeded exactly once, and the record changed in
the world exactly once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from orchestrator.store.base import JournalStatus
from orchestrator.store.sqlite import SqliteStore
from tests.e2e.ha_support import succeeded_steps
from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.moto_server import MotoServer
from tests.integration import test_daemon_e2e as _e2e
from tests.integration.runbook.webapp_world import moto_mutations
from tests.integration.test_daemon_e2e import (
    TOKEN,
    DaemonProcess,
    Target,
    daemon_env,
    running_daemon,
)

targets = _e2e.targets

ROOT = Path(__file__).parents[2]
RUNS = 20
SEED = 2026
A, B = "us-east-1", "us-west-2"
AGENT = "agent-x"
RECORD = "app.chaos.example.test."  # a CNAME, so not at the zone's apex (Route 53 refuses)
RUN_DEADLINE = 30.0
POLL = aiohttp.ClientTimeout(total=1)  # a stopped daemon must not stall the polls


def policy(zone_id: str, targets: dict[str, Target]) -> str:
    flip = {
        "name": "flip",
        "action": "route53.set_record",
        "after": ["hold"],
        "params": {
            "hosted_zone_id": zone_id,
            "name": RECORD,
            "type": "CNAME",
            "value": "{target_region}.chaos.example.test",
            "ttl": 60,
        },
    }
    runbook = [{"name": "hold", "action": "wait", "params": {"duration": "500ms"}}, flip]
    return yaml.safe_dump(
        {
            "service": "chaos",
            "regions": [A, B],
            "rto": "5m",
            "rpo": "1m",
            "vantage_points": ["local", AGENT],
            "detection": {
                "interval": "250ms",
                "timeout": "200ms",
                "consecutive_failures": 2,
                "quorum": 2,
                "staleness": "2s",
            },
            "signals": [
                {
                    "name": "api",
                    "type": "http",
                    "targets": {r: t.url for r, t in targets.items()},
                    "expect_status": [200],
                }
            ],
            "guards": {
                "cooldown": "0s",
                "max_failovers": {"count": 20, "window": "1s"},
                "failback": {"mode": "automatic", "stable_period": "1s"},
            },
            "runbooks": {"failover": runbook, "failback": runbook},
        },
        sort_keys=False,
    )


@dataclass
class Fleet:
    """The daemon and the agent, restartable; the faults dealt to them."""

    config: Path
    agent_argv: list[str]
    stack: AsyncExitStack
    log_dir: Path
    daemon: DaemonProcess | None = None
    agent: subprocess.Popen[bytes] | None = None
    dealt: Counter[str] = field(default_factory=Counter)

    async def start_daemon(self) -> None:
        self.daemon = await self.stack.enter_async_context(running_daemon(self.config))

    def start_agent(self) -> None:
        log = (self.log_dir / "agent.log").open("ab")
        self.agent = subprocess.Popen(
            self.agent_argv, cwd=ROOT, env=daemon_env(), stdout=log, stderr=log
        )

    def pid(self, victim: str) -> int:
        if victim == "daemon":
            assert self.daemon is not None
            return self.daemon.proc.pid
        assert self.agent is not None
        return self.agent.pid

    async def fault(self, rng: random.Random) -> None:
        victim = rng.choice(("daemon", "agent"))
        how = rng.choice(("kill", "stop"))
        self.dealt[f"{how} {victim}"] += 1
        pid = self.pid(victim)
        if how == "stop":
            os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            os.kill(pid, signal.SIGCONT)
            return
        os.kill(pid, signal.SIGKILL)
        if victim == "agent":
            assert self.agent is not None
            await asyncio.to_thread(self.agent.wait, 10)
            self.start_agent()
        else:
            assert self.daemon is not None
            await asyncio.wait_for(self.daemon.proc.wait(), 10)
            await self.start_daemon()

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait(10)


async def snapshot(http: aiohttp.ClientSession, fleet: Fleet) -> dict[str, Any] | None:
    if fleet.daemon is None or fleet.daemon.proc.returncode is not None:
        return None
    try:
        async with http.get(f"{fleet.daemon.base_url}/v1/services/chaos", timeout=POLL) as r:
            body = await r.json()
            return body if r.status == 200 and isinstance(body, dict) else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def dns(moto: MotoServer, zone_id: str) -> str:
    sets = moto.boto3_client("route53").list_resource_record_sets(HostedZoneId=zone_id)
    for rs in sets["ResourceRecordSets"]:
        if rs["Name"] == RECORD:
            return str(rs["ResourceRecords"][0]["Value"])
    return ""


@pytest.fixture
def zone(moto: MotoServer) -> str:
    r53 = moto.boto3_client("route53")
    zone_id = r53.create_hosted_zone(Name="chaos.example.test.", CallerReference="chaos")[
        "HostedZone"
    ]["Id"]
    r53.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": RECORD,
                        "Type": "CNAME",
                        "TTL": 60,
                        "ResourceRecords": [{"Value": f"{A}.chaos.example.test"}],
                    },
                }
            ]
        },
    )
    return str(zone_id).rsplit("/", 1)[-1]


@pytest.fixture
def mutations(zone: str) -> Iterator[Counter[str]]:
    with moto_mutations() as counts:
        yield counts


@pytest.fixture
async def fleet(
    tmp_path: Path, moto: MotoServer, mosquitto: Mosquitto, zone: str, targets: dict[str, Target]
) -> AsyncIterator[Fleet]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "chaos.yaml").write_text(policy(zone, targets))
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = tmp_path / "failoverd.yaml"
    settings = {
        "node_id": "chaos-node",
        "policies": [str(policies)],
        "state": {"path": str(tmp_path / "state.db")},
        "engine": {"tick": "100ms"},
        "leader": {"ttl": "2s"},
        "aws": {"endpoint_url": moto.endpoint_url, "read_timeout": "5s"},
        "mqtt": {"broker": mosquitto.url},
        "http": {"bind": "127.0.0.1", "port": 0, "token_file": str(token)},
        "log": {"format": "json"},
    }
    config.write_text(yaml.safe_dump(settings))
    argv = [sys.executable, "-m", "orchestrator", "agent", "--id", AGENT]
    argv += ["--broker", mosquitto.url, "--policies", str(policies), "--flush-interval", "100ms"]
    async with AsyncExitStack() as stack:
        fleet = Fleet(config, argv, stack, tmp_path)
        try:
            fleet.start_agent()
            await fleet.start_daemon()
            yield fleet
        finally:
            fleet.stop_agent()


async def test_kills_and_freezes_at_random_moments_change_no_run_s_end(
    fleet: Fleet,
    targets: dict[str, Target],
    moto: MotoServer,
    zone: str,
    mutations: Counter[str],
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    ends: list[tuple[str, float]] = []
    async with aiohttp.ClientSession() as http:

        async def steady_in(region: str) -> dict[str, Any]:
            deadline = time.monotonic() + RUN_DEADLINE
            body: dict[str, Any] | None = None
            while time.monotonic() < deadline:
                body = await snapshot(http, fleet)
                if (
                    body is not None
                    and body["active_region"] == region
                    and body["phase"] == "steady"
                    and {v["region"]: v["verdict"] for v in body["verdicts"]}.get(B) == "healthy"
                ):
                    return body
                await asyncio.sleep(0.1)
            tail = fleet.daemon.tail() if fleet.daemon else ""
            if fleet.daemon:
                (tmp_path / "daemon.log").write_text("".join(fleet.daemon.stderr))
            pytest.fail(
                f"not steady in {region} within {RUN_DEADLINE}s ({fleet.dealt}):\n{body}\n{tail}"
            )

        await steady_in(A)
        for i in range(RUNS):
            target = B if i % 2 == 0 else A
            started = time.monotonic()
            targets[A].status = 503 if target == B else 200  # the outage, or its end
            await asyncio.sleep(rng.uniform(0.0, 2.5))  # a random moment of the run
            await fleet.fault(rng)
            await steady_in(target)
            assert dns(moto, zone) == f"{target}.chaos.example.test", (i, fleet.dealt)
            ends.append((target, time.monotonic() - started))
        assert fleet.daemon is not None
        daemon_log = fleet.daemon.tail(5)

    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        run_ids = list(reversed(await store.recent_runs("chaos", 100)))  # oldest first
        assert len(run_ids) == RUNS, (run_ids, daemon_log)  # no run twice, none spurious
        for run_id, (target, _) in zip(run_ids, ends, strict=True):
            records = list(await store.read_run(run_id))
            assert records[0].target_region == target
            assert records[-1].status is JournalStatus.RUN_SUCCEEDED, (run_id, records[-1])
            assert succeeded_steps(records) == Counter(hold=1, flip=1), (run_id, records)
    finally:
        await store.close()
    print(
        f"\nprocess chaos: {RUNS} runs, faults {dict(fleet.dealt)}; run ends"
        f" {[round(t, 1) for _, t in ends]} s"
    )
    assert mutations["ChangeResourceRecordSets"] == RUNS, mutations  # each move once
