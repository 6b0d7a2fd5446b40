"""The systemd watchdog follows the engine loop, not the process: while an evaluation is
stuck, `WATCHDOG=1` stops (so systemd restarts a wedged daemon) even though the event loop,
the probes and everything else keep running; once the evaluation returns, the pings resume.

The real :class:`~orchestrator.daemon.Daemon` runs in-process (real store, real probe
scheduler against a loopback server, real controller) with a notifier that records what it
would tell systemd. The only substitution is ``Controller.evaluate``, wrapped by the test so
that it can be made to hang on an event; production code has no hook for this.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from orchestrator.daemon.controller import Controller
from orchestrator.daemon.main import Daemon, DaemonSettings
from orchestrator.daemon.sdnotify import Notifier
from orchestrator.engine.state import Decision, OperatorCommand
from orchestrator.settings import AwsSettings
from orchestrator.store.base import StoreUnavailable
from tests.fixtures.clock import eventually
from tests.fixtures.controller import policy_text

TICK = 0.05
# Probes seen while wedged before concluding that the pings stopped: two regions probed
# every 100 ms (see policy()), so 10 probes span at least 400 ms, eight engine ticks.
WITNESS_PROBES = 10
START_DEADLINE = 10.0
STOP_DEADLINE = 10.0


def policy(port: int) -> str:
    return policy_text(
        interval="100ms",
        timeout="80ms",
        staleness="1m",
        target=f"http://127.0.0.1:{port}/{{region}}",
    )


class RecordingNotifier(Notifier):
    """Records notifications in order instead of sending them to systemd."""

    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[str] = []

    @property
    def pings(self) -> int:
        return self.sent.count("WATCHDOG")

    def ready(self, status: str | None = None) -> bool:
        self.sent.append("READY")
        return True

    def status(self, text: str) -> bool:
        self.sent.append("STATUS")
        return True

    def watchdog(self) -> bool:
        self.sent.append("WATCHDOG")
        return True

    def reloading(self, status: str | None = None) -> bool:
        self.sent.append("RELOADING")
        return True

    def stopping(self, status: str | None = None) -> bool:
        self.sent.append("STOPPING")
        return True


@dataclass
class Wedge:
    """While ``armed``, every evaluation hangs until ``release`` is set."""

    armed: bool = False
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def unwedge(self) -> None:
        self.armed = False
        self.release.set()


@pytest.fixture
def wedge(monkeypatch: pytest.MonkeyPatch) -> Iterator[Wedge]:
    w = Wedge()
    original = Controller.evaluate

    async def evaluate(
        self: Controller, service: str, operator: OperatorCommand | None = None
    ) -> Decision:
        if w.armed:
            w.entered.set()
            await w.release.wait()
        return await original(self, service, operator)

    monkeypatch.setattr(Controller, "evaluate", evaluate)
    try:
        yield w
    finally:
        w.unwedge()  # never leave a daemon task hanging on the event


@dataclass
class ProbeTarget:
    port: int = 0
    hits: int = 0


@pytest.fixture
async def target() -> AsyncIterator[ProbeTarget]:
    """A loopback server answering the probes with 200, counting them."""
    t = ProbeTarget()

    async def ok(request: web.Request) -> web.Response:
        t.hits += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{region}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    t.port = runner.addresses[0][1]
    try:
        yield t
    finally:
        await runner.cleanup()


@dataclass
class Running:
    daemon: Daemon
    notifier: RecordingNotifier
    task: asyncio.Task[int]


@asynccontextmanager
async def start_daemon(tmp_path: Path, target: ProbeTarget, wedge: Wedge) -> AsyncIterator[Running]:
    """The daemon running in this event loop; stopped (and awaited) on the way out."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "shop.yaml").write_text(policy(target.port))
    settings = DaemonSettings(
        node_id="watchdog-test",
        policies=(str(policies),),
        state_path=str(tmp_path / "state.db"),
        tick=TICK,
        lease_ttl=3.0,
        # Never contacted: the policy has no AWS signal and its runbook only waits.
        aws=AwsSettings(endpoint_url="http://127.0.0.1:9"),
        policy_poll_interval=60.0,
    )
    notifier = RecordingNotifier()
    daemon = Daemon(settings, notifier=notifier)
    task = asyncio.create_task(daemon.run())
    try:
        yield Running(daemon, notifier, task)
    finally:
        wedge.unwedge()
        daemon.request_stop()
        try:
            async with asyncio.timeout(STOP_DEADLINE):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            pytest.fail(f"the daemon did not stop within {STOP_DEADLINE}s")


@pytest.fixture
async def running(tmp_path: Path, target: ProbeTarget, wedge: Wedge) -> AsyncIterator[Running]:
    async with start_daemon(tmp_path, target, wedge) as r:
        yield r


async def until(running: Running, predicate: Callable[[], bool], what: str) -> None:
    """Wait for ``predicate`` (deadline); fail at once, saying so, if the daemon exits."""
    await eventually(lambda: running.task.done() or predicate(), what, START_DEADLINE)
    if running.task.done():
        pytest.fail(f"the daemon exited ({running.task.result()!r}) before {what}")


async def entered(running: Running, wedge: Wedge) -> None:
    await until(running, wedge.entered.is_set, "an evaluation to hang")


async def witness_time_passing(running: Running, target: ProbeTarget) -> None:
    """Until WITNESS_PROBES more probes reached the target: proof that time passed and that
    the event loop, the probe scheduler and the daemon's other tasks are alive."""
    seen = target.hits
    await until(running, lambda: target.hits >= seen + WITNESS_PROBES, "more probes")


async def test_a_wedged_evaluation_stops_the_watchdog_pings_until_it_returns(
    running: Running, wedge: Wedge, target: ProbeTarget
) -> None:
    notifier = running.notifier
    await until(running, lambda: notifier.pings >= 3, "the watchdog pings to flow")
    assert notifier.sent.index("READY") < notifier.sent.index("WATCHDOG")

    wedge.armed = True
    await entered(running, wedge)
    pings = notifier.pings
    await witness_time_passing(running, target)
    assert notifier.pings == pings, "WATCHDOG=1 was sent while the engine was stuck"
    assert not running.task.done()

    wedge.unwedge()
    await until(running, lambda: notifier.pings >= pings + 3, "the pings to resume")

    running.daemon.request_stop()
    async with asyncio.timeout(STOP_DEADLINE):
        assert await running.task == 0
    assert notifier.sent[-1] == "STOPPING"


async def test_no_ready_and_no_ping_until_the_first_evaluation_returns(
    tmp_path: Path, target: ProbeTarget, wedge: Wedge
) -> None:
    wedge.armed = True  # before the daemon starts: its very first evaluation hangs
    async with start_daemon(tmp_path, target, wedge) as running:
        notifier = running.notifier
        await entered(running, wedge)
        await witness_time_passing(running, target)
        assert notifier.sent == [], notifier.sent

        wedge.unwedge()
        await until(running, lambda: notifier.pings >= 1, "the first ping")
        assert notifier.sent[0] == "READY"


@pytest.mark.parametrize(
    ("error", "pings_continue"),
    [(RuntimeError("a bug"), False), (StoreUnavailable("store down"), True)],
)
async def test_a_loop_that_only_fails_stops_the_pings_but_a_store_outage_does_not(
    running: Running,
    target: ProbeTarget,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    pings_continue: bool,
) -> None:
    # A bug that fails every pass must get the daemon restarted; a store outage must not
    # (DESIGN: keep observing, take no action; a restart would lose the health windows).
    notifier = running.notifier
    await until(running, lambda: notifier.pings >= 2, "the watchdog pings to flow")

    async def failing(self: Controller) -> None:
        raise error

    monkeypatch.setattr(Controller, "evaluate_all", failing)
    await witness_time_passing(running, target)  # let any pass in flight finish
    pings = notifier.pings
    await witness_time_passing(running, target)
    if pings_continue:
        assert notifier.pings > pings
    else:
        assert notifier.pings == pings, "WATCHDOG=1 was sent by a loop that only fails"
    assert not running.task.done()
