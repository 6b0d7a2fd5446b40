"""The probe scheduler: the pure deadline planner exactly, the async loop on a virtual clock,
and one real-time run against loopback servers."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from orchestrator.engine.observation import FailureKind, Observation
from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.models import Policy
from orchestrator.signals.base import ListSink
from orchestrator.signals.probes import ProbeContext, ProbeResult
from orchestrator.signals.probes.plan import DeadlinePlanner, phase_offset
from orchestrator.signals.scheduler import PROBE_ERROR, ProbeScheduler, ProbeSignal

EPOCH = 1_700_000_000.0  # what the virtual clock's now() adds to its monotonic time
REGIONS = ("us-east-1", "us-west-2")


# --- helpers -------------------------------------------------------------------------------


class VirtualClock:
    """Time that moves only when the test says so. ``advance`` wakes sleepers in deadline
    order, letting the event loop run everything that became ready before moving on."""

    def __init__(self, start: float = 5_000.0) -> None:
        self.t = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return EPOCH + self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(0.0, seconds), next(self._seq), future))
        await future

    async def advance(self, seconds: float) -> None:
        until = self.t + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= until:
            when, _, future = heapq.heappop(self._sleepers)
            self.t = max(self.t, when)
            if not future.done():
                future.set_result(None)
            await settle()
        self.t = until
        await settle()


async def settle() -> None:
    """Let every task that is ready run until it blocks again. Nothing here does I/O, so a
    fixed number of loop turns reaches the same state on every run."""
    for _ in range(30):
        await asyncio.sleep(0)


class FakeProber:
    """Records when each probe starts (virtual time); takes ``duration`` virtual seconds;
    fails with ``reason`` when set; raises when ``crash`` is set (a broken prober)."""

    def __init__(
        self,
        clock: VirtualClock,
        type_: str,
        timeout: float,
        duration: float = 0.0,
        reason: FailureKind | None = None,
        crash: bool = False,
    ) -> None:
        self.clock = clock
        self.type = type_
        self.timeout = timeout
        self.duration = duration
        self.reason = reason
        self.crash = crash
        self.starts: list[tuple[str, float]] = []
        self.active = 0
        self.max_active = 0
        self.cancelled = 0
        self.factory: Factory | None = None

    def validate(self, target: str) -> None:
        if "bad" in target:
            raise ValueError(f"bad target {target!r}")

    async def probe(self, target: str) -> ProbeResult:
        self.starts.append((target, self.clock.monotonic()))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        if self.factory is not None:
            self.factory.started()
        try:
            if self.duration:
                await self.clock.sleep(self.duration)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
            if self.factory is not None:
                self.factory.active -= 1
        if self.crash:
            raise RuntimeError("prober bug")
        if self.reason is not None:
            return ProbeResult.failure(self.reason, self.duration, "fake failure")
        return ProbeResult.success(self.duration)


class Factory:
    """A ProberFactory handing out one FakeProber per signal, kept by signal name."""

    def __init__(self, clock: VirtualClock, **kwargs: Any) -> None:
        self.clock = clock
        self.kwargs = kwargs
        self.probers: dict[str, FakeProber] = {}
        self.active = 0  # across all its probers
        self.max_active = 0

    def __call__(self, signal: ProbeSignal, timeout: float, /) -> FakeProber:
        prober = FakeProber(self.clock, signal.type, timeout, **self.kwargs)
        prober.factory = self
        self.probers[signal.name] = prober
        return prober

    def started(self) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)


def make_policy(
    service: str = "shop",
    signals: list[dict[str, Any]] | None = None,
    vantage_points: list[str] | None = None,
    interval: str = "10s",
    timeout: str = "5s",
) -> Policy:
    data = {
        "service": service,
        "regions": list(REGIONS),
        "rto": "15m",
        "rpo": "1m",
        "vantage_points": vantage_points or ["local"],
        "detection": {
            "interval": interval,
            "timeout": timeout,
            "quorum": 1,
            "staleness": "1h",
        },
        "signals": signals
        or [{"name": "api", "type": "http", "target": "http://api.{region}.shop.test/healthz"}],
        "runbooks": {
            "failover": [
                {
                    "name": "flip-dns",
                    "action": "route53.set_record",
                    "params": {"hosted_zone_id": "Z0", "name": "a.shop.test", "value": "b"},
                }
            ]
        },
    }
    return load_policy_text(yaml.safe_dump(data, sort_keys=False), "<test policy>")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Running:
    """The scheduler's run() as a task, cancelled (and awaited) on exit."""

    def __init__(self, scheduler: ProbeScheduler, sink: ListSink) -> None:
        self.scheduler = scheduler
        self.sink = sink
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.scheduler.run(self.sink))
        await settle()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


# --- the planner (pure) --------------------------------------------------------------------


def test_phases_are_deterministic_and_spread_over_the_interval() -> None:
    keys = [f"svc{i}/us-east-1/api/local" for i in range(2000)]
    phases = [phase_offset(k, 10.0) for k in keys]
    assert all(0.0 <= p < 10.0 for p in phases)
    assert phases == [phase_offset(k, 10.0) for k in keys]  # same key, same phase, always
    per_second = Counter(int(p) for p in phases)
    assert set(per_second) == set(range(10))
    assert all(140 <= n <= 260 for n in per_second.values()), per_second  # ~200 each


def test_first_deadlines_fall_within_one_interval_of_start() -> None:
    cadences = [(f"k{i}", 10.0) for i in range(500)]
    planner = DeadlinePlanner(cadences, start=1234.5)
    for i in range(len(cadences)):
        assert 1234.5 <= planner.deadline(i) < 1244.5


def test_the_grid_does_not_depend_on_when_the_planner_starts() -> None:
    # A rebuilt scheduler (policy reload) keeps every target's phase.
    cadences = [(f"k{i}", 7.0) for i in range(50)]
    early = DeadlinePlanner(cadences, start=100.0)
    late = DeadlinePlanner(cadences, start=100.0 + 3 * 7.0 + 2.5)
    for i in range(50):
        steps = (late.deadline(i) - early.deadline(i)) / 7.0
        assert steps == pytest.approx(round(steps), abs=1e-9)
        assert (early.deadline(i) - early.phase(i)) / 7.0 == pytest.approx(
            round((early.deadline(i) - early.phase(i)) / 7.0), abs=1e-9
        )


def test_deadlines_never_drift_however_late_they_are_served() -> None:
    rng = random.Random(7)
    planner = DeadlinePlanner([("a", 10.0), ("b", 2.5)], start=0.0)
    first = {0: planner.deadline(0), 1: planner.deadline(1)}
    seen: dict[int, list[float]] = {0: [], 1: []}
    while len(seen[0]) < 5_000:
        deadline = planner.next_deadline()
        assert deadline is not None
        # Serve each deadline late by up to 99% of the shorter interval.
        for index, due in planner.pop_due(deadline + rng.uniform(0.0, 2.47)):
            seen[index].append(due)
    for index, interval in ((0, 10.0), (1, 2.5)):
        for n, due in enumerate(seen[index]):
            assert due == pytest.approx(first[index] + n * interval, abs=1e-9)
    assert len(seen[1]) >= 4 * len(seen[0]) - 4  # b ran at its own interval, none skipped


def test_due_targets_come_earliest_first_then_by_index() -> None:
    planner = DeadlinePlanner([(f"k{i}", 10.0) for i in range(20)], start=0.0)
    due = planner.pop_due(10.0)
    assert len(due) == 20
    assert due == sorted(due, key=lambda item: (item[1], item[0]))
    assert planner.pop_due(10.0) == []
    assert all(10.0 < planner.deadline(i) <= 20.0 for i in range(20))


def test_falling_behind_by_whole_intervals_skips_missed_runs_without_a_burst() -> None:
    planner = DeadlinePlanner([("k", 10.0)], start=0.0)
    d0 = planner.deadline(0)
    due = planner.pop_due(d0 + 35.0)  # the caller stalled for three and a half intervals
    assert due == [(0, d0)]
    assert planner.deadline(0) == pytest.approx(d0 + 40.0)  # next grid point, phase kept


def test_planner_refuses_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval of svc/api must be a positive number"):
        DeadlinePlanner([("svc/api", 0.0)], start=0.0)
    assert DeadlinePlanner([], start=0.0).next_deadline() is None


# --- building the scheduler from policies --------------------------------------------------


def test_only_this_vantage_points_signals_are_scheduled() -> None:
    policy = make_policy(
        vantage_points=["local", "agent-eu"],
        signals=[
            {"name": "api", "type": "http", "target": "http://api.{region}.shop.test/"},
            {
                "name": "db",
                "type": "tcp",
                "target": "db.{region}.shop.test:5432",
                "vantage": ["agent-eu"],
            },
            {"name": "aws", "type": "aws_health", "services": ["EC2"]},
        ],
    )
    clock = VirtualClock()
    local = ProbeScheduler([policy], "local", Factory(clock), clock=clock)
    agent = ProbeScheduler([policy], "agent-eu", Factory(clock), clock=clock)
    other = ProbeScheduler([policy], "agent-ap", Factory(clock), clock=clock)
    assert {(t.region, t.signal, t.vantage) for t in local.targets} == {
        (r, "api", "local") for r in REGIONS
    }
    assert {(t.region, t.signal) for t in agent.targets} == {
        (r, s) for r in REGIONS for s in ("api", "db")
    }
    assert other.targets == ()
    db = next(t for t in agent.targets if t.signal == "db" and t.region == "us-west-2")
    assert (db.type, db.target, db.interval, db.timeout) == (
        "tcp",
        "db.us-west-2.shop.test:5432",
        10.0,
        5.0,
    )


async def test_observations_and_logs_never_show_url_credentials() -> None:
    clock = VirtualClock()
    factory = Factory(clock, reason=FailureKind.STATUS)
    policy = make_policy(
        signals=[{"name": "api", "type": "http", "target": "http://bot:hunter2@{region}.t/"}]
    )
    scheduler = ProbeScheduler([policy], "local", factory, clock=clock)
    sink = ListSink()
    with structlog.testing.capture_logs() as logs:
        async with Running(scheduler, sink):
            await clock.advance(10.0)
    assert {o.target for o in sink.items} == {f"http://***@{r}.t/" for r in REGIONS}
    failing = [e for e in logs if e["event"] == "probe_failing"]
    assert len(failing) == 2 and all("hunter2" not in str(e) for e in failing)
    # The prober itself still gets the real target, credentials included.
    assert {t for t, _ in factory.probers["api"].starts} == {
        f"http://bot:hunter2@{r}.t/" for r in REGIONS
    }


def test_signal_timeout_overrides_detection_timeout() -> None:
    policy = make_policy(
        signals=[{"name": "api", "type": "http", "target": "http://{region}.t/", "timeout": "2s"}]
    )
    clock = VirtualClock()
    factory = Factory(clock)
    scheduler = ProbeScheduler([policy], "local", factory, clock=clock)
    assert {t.timeout for t in scheduler.targets} == {2.0}
    assert factory.probers["api"].timeout == 2.0


def test_a_target_the_prober_refuses_names_policy_signal_and_region() -> None:
    policy = make_policy(
        signals=[
            {
                "name": "api",
                "type": "http",
                "targets": {"us-east-1": "http://ok.shop.test/", "us-west-2": "http://bad.shop/"},
            }
        ]
    )
    clock = VirtualClock()
    with pytest.raises(ValueError, match=r"policy 'shop', signal 'api', region 'us-west-2': bad"):
        ProbeScheduler([policy], "local", Factory(clock), clock=clock)


def test_the_same_cell_twice_is_refused() -> None:
    clock = VirtualClock()
    with pytest.raises(ValueError, match="listed twice"):
        ProbeScheduler([make_policy(), make_policy()], "local", Factory(clock), clock=clock)
    with pytest.raises(ValueError, match="max_concurrency"):
        ProbeScheduler([make_policy()], "local", Factory(clock), clock=clock, max_concurrency=0)
    with pytest.raises(ValueError, match="dispatch_slack"):
        ProbeScheduler([make_policy()], "local", Factory(clock), clock=clock, dispatch_slack=-1)


# --- the async loop on virtual time ----------------------------------------------------------


async def test_probes_start_exactly_on_their_deadlines() -> None:
    clock = VirtualClock(start=5_000.0)
    factory = Factory(clock, duration=0.5)
    scheduler = ProbeScheduler([make_policy()], "local", factory, clock=clock, dispatch_slack=0)
    sink = ListSink()
    async with Running(scheduler, sink):
        await clock.advance(100.0)
    starts = factory.probers["api"].starts
    for target in scheduler.targets:
        times = [t for name, t in starts if name == target.target]
        assert len(times) == 10
        phase = phase_offset(target.key, 10.0)
        for n, t in enumerate(times):
            assert 5_000.0 <= t < 5_100.0
            assert (t - phase) / 10.0 == pytest.approx(round((t - phase) / 10.0), abs=1e-9)
            if n:
                assert t - times[0] == pytest.approx(10.0 * n, abs=1e-9)
    assert len(sink.items) == 20


@pytest.mark.parametrize("slack", [0.0, 0.05])
async def test_dispatch_slack_starts_nearby_probes_together_early_never_late(slack: float) -> None:
    clock = VirtualClock()
    factory = Factory(clock)
    signals = [
        {"name": f"s{i}", "type": "tcp", "target": "{region}.shop.test:443"} for i in range(200)
    ]
    scheduler = ProbeScheduler(
        [make_policy(signals=signals)], "local", factory, clock=clock, dispatch_slack=slack
    )
    keys = {(t.target, t.signal): t.key for t in scheduler.targets}
    sink = ListSink()
    async with Running(scheduler, sink):
        await clock.advance(30.0)
    starts: list[float] = []
    for name, prober in factory.probers.items():
        for target in {t for t, _ in prober.starts}:
            phase = phase_offset(keys[(target, name)], 10.0)
            grid: list[int] = []
            for _, start in (item for item in prober.starts if item[0] == target):
                n = math.ceil((start - phase) / 10.0 - 1e-9)  # the grid point at or after start
                early = phase + n * 10.0 - start
                assert 0.0 <= early <= slack + 1e-9
                grid.append(n)
                starts.append(start)
            # Every grid point of the 30 s window ran exactly once: none doubled, none lost.
            expected = [n for n in range(490, 510) if 5_000.0 <= phase + n * 10.0 <= 5_030.0]
            assert grid[: len(expected)] == expected
            assert len(grid) - len(expected) in (0, 1)  # one just past the end, when early
    assert len(starts) >= 3 * 400
    batched = len(starts) - len(set(starts))
    if slack:
        assert batched > 100  # 400 targets in 10 s: many fall within 50 ms of another
    else:
        assert batched == 0


async def test_every_result_becomes_an_observation_and_metrics() -> None:
    clock = VirtualClock()
    factory = Factory(clock, duration=0.25, reason=FailureKind.CONNECT)
    policy = make_policy(service="obs-shop")
    scheduler = ProbeScheduler([policy], "local", factory, clock=clock)
    labels = {"service": "obs-shop", "region": "us-east-1", "signal": "api", "vantage": "local"}
    failures_before = metric("failoverd_probe_failures_total", **labels, reason="connect")
    runs_before = metric("failoverd_probe_runs_total", type="http")
    sink = ListSink()
    async with Running(scheduler, sink):
        await clock.advance(10.0)
    assert len(sink.items) == 2
    obs = next(o for o in sink.items if o.region == "us-east-1")
    assert obs == Observation(
        service="obs-shop",
        region="us-east-1",
        signal="api",
        vantage="local",
        ok=False,
        at=obs.at,
        source="http",
        target="http://api.us-east-1.shop.test/healthz",
        latency=0.25,
        detail="connect",
    )
    start = next(t for name, t in factory.probers["api"].starts if name == obs.target)
    assert obs.at == EPOCH + start + 0.25  # clock.now() when the result came in
    assert metric("failoverd_probe_success", **labels) == 0.0
    assert metric("failoverd_probe_duration_seconds", **labels) == 0.25
    assert metric("failoverd_probe_failures_total", **labels, reason="connect") == (
        failures_before + 1
    )
    assert metric("failoverd_probe_runs_total", type="http") == runs_before + 2


async def test_a_target_still_running_at_its_next_deadline_is_skipped() -> None:
    clock = VirtualClock()
    factory = Factory(clock, duration=25.0)  # each probe spans two and a half intervals
    policy = make_policy(service="overrun-shop")
    scheduler = ProbeScheduler([policy], "local", factory, clock=clock)
    before = metric("failoverd_probe_overruns_total", service="overrun-shop", signal="api")
    sink = ListSink()
    async with Running(scheduler, sink):
        await clock.advance(95.0)
    prober = factory.probers["api"]
    for target in scheduler.targets:
        times = [t for name, t in prober.starts if name == target.target]
        # Runs at d, d+30, d+60, d+90 at most; d+10, d+20, d+40... are skipped, never queued.
        assert [round(t - times[0], 9) for t in times] == [30.0 * n for n in range(len(times))]
    assert prober.max_active == 2  # one per target: never two of the same target
    overruns = metric("failoverd_probe_overruns_total", service="overrun-shop", signal="api")
    assert overruns - before >= 2 * 5


async def test_concurrency_bound_is_honoured_and_queued_probes_still_run() -> None:
    clock = VirtualClock()
    factory = Factory(clock, duration=4.0)
    signals = [
        {"name": f"s{i}", "type": "tcp", "target": "{region}.shop.test:443"} for i in range(10)
    ]
    policy = make_policy(signals=signals, interval="20s", timeout="5s")
    scheduler = ProbeScheduler([policy], "local", factory, clock=clock, max_concurrency=3)
    lateness_before = metric("failoverd_probe_scheduling_lateness_seconds_sum")
    sink = ListSink()
    async with Running(scheduler, sink):
        # 20 targets x 4 s of work per 20 s interval, 3 at a time: the slots stay busy.
        await clock.advance(60.0)
    assert factory.max_active == 3
    assert {(o.region, o.signal) for o in sink.items} == {
        (r, f"s{i}") for r in REGIONS for i in range(10)
    }
    # Probes that waited for a slot started late, and that lateness was recorded.
    assert metric("failoverd_probe_scheduling_lateness_seconds_sum") > lateness_before


async def test_a_crashing_prober_is_reported_unknown_and_others_keep_running() -> None:
    clock = VirtualClock()
    broken = FakeProber(clock, "http", 5.0, crash=True)
    healthy = FakeProber(clock, "tcp", 5.0)
    policy = make_policy(
        signals=[
            {"name": "api", "type": "http", "target": "http://{region}.shop.test/"},
            {"name": "db", "type": "tcp", "target": "{region}.shop.test:5432"},
        ]
    )

    def factory(signal: ProbeSignal, timeout: float, /) -> FakeProber:
        return broken if signal.name == "api" else healthy

    scheduler = ProbeScheduler([policy], "local", factory, clock=clock)
    sink = ListSink()
    async with Running(scheduler, sink):
        await clock.advance(30.0)
    api = [o for o in sink.items if o.signal == "api"]
    db = [o for o in sink.items if o.signal == "db"]
    assert len(api) == 6 and all(o.ok is None and o.detail == PROBE_ERROR for o in api)
    assert len(db) == 6 and all(o.ok for o in db)


async def test_cancelling_run_stops_probes_in_flight_promptly() -> None:
    clock = VirtualClock()
    factory = Factory(clock, duration=1_000.0)
    scheduler = ProbeScheduler([make_policy()], "local", factory, clock=clock)
    in_flight_before = metric("failoverd_probes_in_flight")
    task = asyncio.create_task(scheduler.run(ListSink()))
    await clock.advance(10.0)
    prober = factory.probers["api"]
    assert prober.active == 2
    task.cancel()
    async with asyncio.timeout(2.0):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert prober.active == 0 and prober.cancelled == 2
    assert metric("failoverd_probes_in_flight") == in_flight_before


async def test_a_scheduler_runs_once() -> None:
    clock = VirtualClock()
    scheduler = ProbeScheduler([make_policy()], "local", Factory(clock), clock=clock)
    async with Running(scheduler, ListSink()):
        await clock.advance(1.0)
    with pytest.raises(RuntimeError, match="already ran"):
        await scheduler.run(ListSink())


async def test_a_vantage_with_nothing_to_probe_idles_until_cancelled() -> None:
    clock = VirtualClock()
    scheduler = ProbeScheduler([make_policy()], "agent-x", Factory(clock), clock=clock)
    task = asyncio.create_task(scheduler.run(ListSink()))
    await clock.advance(60.0)
    assert not task.done()
    task.cancel()
    async with asyncio.timeout(2.0):
        with pytest.raises(asyncio.CancelledError):
            await task


# --- real time, real probes ------------------------------------------------------------------


@pytest.fixture
def tcp_listener() -> Iterator[int]:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(512)  # the kernel completes connects; a TCP probe needs nothing more
        yield s.getsockname()[1]


async def test_smoke_real_probes_reach_every_cell(tcp_listener: int) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "region": request.match_info["region"]})

    app = web.Application()
    app.router.add_get("/{region}/healthz", healthz)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        base = f"http://127.0.0.1:{server.port}"
        policy = make_policy(
            interval="200ms",
            timeout="150ms",
            signals=[
                {
                    "name": "api",
                    "type": "http",
                    "target": base + "/{region}/healthz",
                    "body_contains": '"status": "ok"',
                },
                {
                    "name": "db",
                    "type": "tcp",
                    "targets": {r: f"127.0.0.1:{tcp_listener}" for r in REGIONS},
                },
            ],
        )
        async with ProbeContext() as ctx:
            scheduler = ProbeScheduler([policy], "local", ctx.make_prober)
            sink = ListSink()
            expected = {(r, s) for r in REGIONS for s in ("api", "db")}
            task = asyncio.create_task(scheduler.run(sink))
            try:
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:
                    passing = {(o.region, o.signal) for o in sink.items if o.ok}
                    if passing == expected:
                        break
                    await asyncio.sleep(0.02)
                else:
                    pytest.fail(f"observations after 5s: {sink.items}")
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
    assert all(o.source in ("http", "tcp") and o.latency is not None for o in sink.items)
    assert not [o for o in sink.items if not o.ok]
