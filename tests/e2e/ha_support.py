"""Several `failoverd run` processes sharing one state store: starting them, finding the
leader, reading the shared journal.

The daemons are the very ones tests/integration/test_daemon_e2e.py runs (its
``running_daemon``, policy and world are reused), each with its own node id, API port and
settings file, all on the same store: an etcd cluster (the HA deployment) or one SQLite
file (several daemons on one host).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from orchestrator.settings import StateSettings
from orchestrator.store.base import JournalRecord, JournalStatus
from orchestrator.store.open import open_store
from tests.fixtures.moto_server import MotoServer
from tests.fixtures.secrets import write_secret
from tests.integration.test_daemon_e2e import TOKEN, DaemonProcess, running_daemon

TTL = 3.0  # the lease in these tests: takeover must come within TTL + 2 s
TICK = "200ms"
# Long enough for the remaining etcd members to elect a new raft leader (1 s election
# timeout) inside one call, short enough that a lease step ends before the lease could.
STORE_TIMEOUT = "2s"
POLL_TIMEOUT = aiohttp.ClientTimeout(total=2)  # a frozen instance must not stall the polls


@dataclass(frozen=True)
class SharedStore:
    """The ``state`` settings section every instance gets (and the test reads through)."""

    section: dict[str, Any]

    @classmethod
    def etcd(cls, endpoints: Sequence[str]) -> SharedStore:
        prefix = f"/failoverd-test/{uuid.uuid4().hex[:12]}"  # one deployment per test
        return cls(
            {
                "backend": "etcd",
                "timeout": STORE_TIMEOUT,
                "etcd": {"endpoints": list(endpoints), "prefix": prefix},
            }
        )

    @classmethod
    def sqlite(cls, path: Path) -> SharedStore:
        return cls({"backend": "sqlite", "path": str(path), "timeout": STORE_TIMEOUT})

    async def run_records(self, run_id: str) -> list[JournalRecord]:
        """The run's journal, read from the store itself (not through a daemon)."""
        state = StateSettings.model_validate(self.section)
        store = await open_store(state)
        try:
            return list(await store.read_run(run_id))
        finally:
            await store.close()


def succeeded_steps(records: Sequence[JournalRecord]) -> Counter[str]:
    return Counter(r.step for r in records if r.status is JournalStatus.STEP_SUCCEEDED)


@dataclass
class Instance:
    name: str
    config: Path
    daemon: DaemonProcess | None = None

    @property
    def url(self) -> str:
        assert self.daemon is not None, f"{self.name} is not running"
        return self.daemon.base_url

    @property
    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.proc.returncode is None


@dataclass
class Fleet:
    """The instances of one deployment; ``start`` adds their processes to ``stack``."""

    stack: AsyncExitStack
    http: aiohttp.ClientSession
    instances: list[Instance] = field(default_factory=list)

    def __getitem__(self, name: str) -> Instance:
        for i in self.instances:
            if i.name == name:
                return i
        raise KeyError(name)

    async def start(self, *names: str) -> None:
        async def one(instance: Instance) -> None:
            instance.daemon = await self.stack.enter_async_context(running_daemon(instance.config))

        chosen = [self[n] for n in names] if names else self.instances
        await asyncio.gather(*(one(i) for i in chosen))

    def running(self) -> list[Instance]:
        return [i for i in self.instances if i.alive]

    def logs(self) -> str:
        return "\n".join(
            f"--- {i.name} ---\n{i.daemon.tail(20)}" for i in self.instances if i.daemon
        )

    async def status(self, instance: Instance) -> dict[str, Any] | None:
        """/v1/status, or None when the instance does not answer (within a second)."""
        try:
            url = f"{instance.url}/v1/status"
            async with self.http.get(url, timeout=POLL_TIMEOUT) as response:
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def readyz(self, instance: Instance) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{instance.url}/readyz", timeout=POLL_TIMEOUT) as response:
            return response.status, await response.json()

    async def leaders(self, exclude: Instance | None = None) -> list[Instance]:
        """The running instances (but ``exclude``) that say they lead (asked at once)."""
        running = [i for i in self.running() if i is not exclude]
        bodies = await asyncio.gather(*(self.status(i) for i in running))
        return [i for i, body in zip(running, bodies, strict=True) if body and body["is_leader"]]

    async def until(self, check: Callable[[], Awaitable[bool]], what: str, within: float) -> float:
        """Poll ``check`` every 50 ms until it holds; the seconds it took. Fails naming
        ``what`` with every instance's last log lines after ``within`` seconds."""
        started = time.monotonic()
        while not await check():
            if time.monotonic() - started > within:
                pytest.fail(f"timed out after {within}s waiting for {what}:\n{self.logs()}")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def one_leader(self, within: float = 20.0) -> Instance:
        """Wait until exactly one running instance leads and every other names it."""
        found: list[Instance] = []

        async def agreed() -> bool:
            nonlocal found
            found = await self.leaders()
            if len(found) != 1:
                return False
            bodies = await asyncio.gather(*(self.status(i) for i in self.running()))
            return all(body is not None and body["leader"] == found[0].name for body in bodies)

        await self.until(agreed, "exactly one leader that every instance names", within)
        return found[0]


def write_configs(
    tmp_path: Path,
    names: Sequence[str],
    store: SharedStore,
    moto: MotoServer,
    policy: str,
) -> list[Instance]:
    """One settings file per instance (own node id, API on a free port), one policy folder
    and token shared by all."""
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "webapp.yaml").write_text(policy)
    token_file = write_secret(tmp_path / "token", TOKEN + "\n")
    out = []
    for name in names:
        config = tmp_path / f"{name}.yaml"
        settings = {
            "node_id": name,
            "policies": [str(policies)],
            "state": store.section,
            "engine": {"tick": TICK},
            "leader": {"ttl": f"{TTL:g}s"},
            "aws": {"endpoint_url": moto.endpoint_url, "read_timeout": "5s"},
            "http": {"bind": "127.0.0.1", "port": 0, "token_file": str(token_file)},
            "log": {"format": "json"},
        }
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        out.append(Instance(name, config))
    return out
