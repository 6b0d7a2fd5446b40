"""A real Controller over a SqliteStore with a ScriptedAction, on a virtual clock, and the
hand-fed observations that drive it. The fixtures are registered by tests/unit/conftest.py;
a test module changes the setup by overriding ``policy_yaml`` (the shop policy written, or
"" for an empty policy directory), ``lease_ttl`` or ``store``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from orchestrator.daemon.controller import Controller
from orchestrator.engine.observation import Observation
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock
from tests.fixtures.controller import make_controller, policy_text
from tests.unit.runbook.fakes import ScriptedAction

SHOP_POLICY = policy_text()


@pytest.fixture
def policy_yaml() -> str:
    return SHOP_POLICY


@pytest.fixture
def policy_dir(tmp_path: Path, policy_yaml: str) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    if policy_yaml:
        (d / "shop.yaml").write_text(policy_yaml)
    return d


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def action(clock: VirtualClock) -> ScriptedAction:
    return ScriptedAction(clock)


@pytest.fixture
def lease_ttl() -> float:
    return 30.0


@pytest.fixture
async def controller(
    policy_dir: Path,
    store: SqliteStore,
    clock: VirtualClock,
    action: ScriptedAction,
    lease_ttl: float,
) -> AsyncIterator[Controller]:
    c = await make_controller(policy_dir, store, clock, action, lease_ttl=lease_ttl)
    try:
        yield c
    finally:
        await c.close()


@asynccontextmanager
async def running(c: Controller, *, close: bool = False) -> AsyncIterator[None]:
    """``c.run()`` for the block, cancelled after it (and ``c`` closed if ``close``)."""
    task = asyncio.create_task(c.run())
    try:
        yield None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if close:
            await c.close()


def see(c: Controller, clock: VirtualClock, region: str, ok: bool, service: str = "shop") -> None:
    c.put(Observation(service, region, "api", "local", ok, clock.now(), source="test"))


def region_down(c: Controller, clock: VirtualClock, service: str = "shop") -> None:
    for _ in range(3):
        clock.advance(1.0)
        see(c, clock, "us-east-1", False, service)
        see(c, clock, "us-west-2", True, service)
