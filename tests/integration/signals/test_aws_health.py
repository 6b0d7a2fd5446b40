"""The AWS Health poller against the Health API emulator, through the real aiobotocore client.

Time is virtual: the poller sleeps (between polls, and while backing off) on a clock that jumps
forward as far as the test allows, so half an hour of polling takes milliseconds and no test
waits for an interval to pass. The network is real: loopback HTTP to the emulator.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import yaml
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from orchestrator.engine.healthbook import HealthBook
from orchestrator.engine.observation import FailureKind, Observation
from orchestrator.engine.vocabulary import Reason, View
from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.models import AWS_HEALTH_VANTAGE, Policy
from orchestrator.sandbox.health_api import HealthApiEmulator
from orchestrator.signals.aws_health import (
    AwsHealthOptions,
    AwsHealthSource,
    HealthClientSettings,
    HealthEndpoint,
    aiobotocore_client_factory,
)
from orchestrator.signals.base import ListSink
from tests.fixtures.binaries import free_port
from tests.fixtures.health_emulator import client_settings

EAST, WEST, EU = "us-east-1", "us-west-2", "eu-west-1"
START = 1_800_000_000.0
MINUTE = 60.0


class SteppingClock:
    """Virtual time that jumps forward whenever the code under test sleeps, up to ``limit``.
    A sleep past the limit parks until the test raises it with :meth:`run_to`."""

    def __init__(self, limit: float = math.inf) -> None:
        self.t = 0.0
        self.limit = limit
        self.sleeps: list[float] = []
        self._raised = asyncio.Event()
        self._parked = asyncio.Event()

    def now(self) -> float:
        return START + self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        target = self.t + max(0.0, seconds)
        while target > self.limit:
            self._raised.clear()
            self._parked.set()
            await self._raised.wait()
        self.t = target
        await asyncio.sleep(0)

    async def run_to(self, limit: float) -> None:
        """Let virtual time run up to ``limit``; return once the sleeper parks past it (or
        fail after 10 s of real time)."""
        self.limit = limit
        self._parked.clear()
        self._raised.set()
        async with asyncio.timeout(10.0):
            await self._parked.wait()


def policy(service: str = "shop", regions: tuple[str, ...] = (EAST, WEST), **health: Any) -> Policy:
    signal: dict[str, Any] = {"name": "aws", "type": "aws_health", "services": ["EC2", "RDS"]}
    signal.update(health)
    data = {
        "service": service,
        "regions": list(regions),
        "rto": "15m",
        "rpo": "1m",
        "vantage_points": ["local", "agent-eu"],
        "detection": {"quorum": 2, "staleness": "45s"},
        "signals": [
            {"name": "api", "type": "http", "target": "https://api.{region}.example.com/"},
            signal,
        ],
        "runbooks": {
            "failover": [
                {
                    "name": "flip-dns",
                    "action": "route53.set_record",
                    "params": {
                        "hosted_zone_id": "Z0SHOP",
                        "name": "api.example.com",
                        "value": "api.{target_region}.example.com",
                    },
                }
            ]
        },
    }
    return load_policy_text(yaml.safe_dump(data, sort_keys=False), "<test policy>")


def options(**overrides: Any) -> AwsHealthOptions:
    values: dict[str, Any] = {
        "call_timeout": 2.0,
        "retry_budget": 5.0,
        "max_attempts": 4,
        "backoff_base": 0.1,
        "backoff_cap": 1.0,
    }
    values.update(overrides)
    return AwsHealthOptions(**values)


def source(
    emulator: HealthApiEmulator,
    policies: list[Policy],
    clock: SteppingClock,
    **overrides: Any,
) -> AwsHealthSource:
    return AwsHealthSource(
        policies,
        settings=client_settings(emulator),
        clock=clock,
        options=options(**overrides),
        rng=random.Random(7),
    )


def by_region(sink: ListSink) -> dict[str, Observation]:
    """The latest observation of each region."""
    return {o.region: o for o in sink.items}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def calls_metric(operation: str, outcome: str) -> float:
    return metric("failoverd_health_api_calls_total", operation=operation, outcome=outcome)


# --- matching ------------------------------------------------------------------------------


async def test_an_open_event_fails_its_region_only_and_only_for_listed_services(
    health_emulator: HealthApiEmulator,
) -> None:
    emu = health_emulator
    arn = emu.open_event("EC2", EAST)
    emu.open_event("S3", WEST)  # a service the signal does not list
    emu.open_event("RDS", EU)  # a region the policy does not use
    emu.open_event("RDS", WEST, category="accountNotification")  # not an issue
    emu.open_event("EC2", WEST, status="upcoming")  # not open yet
    clock = SteppingClock()
    sink = ListSink()
    async with source(emu, [policy()], clock) as src:
        result = await src.poll(sink)
    assert result.status == "ok"
    seen = by_region(sink)
    assert set(seen) == {EAST, WEST}
    east, west = seen[EAST], seen[WEST]
    assert (east.ok, east.detail, east.target) == (False, FailureKind.EVENT, arn)
    assert (west.ok, west.detail) == (True, "")
    for obs in (east, west):
        assert (obs.service, obs.signal, obs.vantage, obs.source) == (
            "shop",
            "aws",
            AWS_HEALTH_VANTAGE,
            "aws_health",
        )
        assert obs.at == START
    assert metric("failoverd_health_open_events", service="shop", region=EAST) == 1
    assert metric("failoverd_health_open_events", service="shop", region=WEST) == 0
    assert metric("failoverd_health_api_available") == 1
    # One call, filtered server-side the way the real API takes it.
    (request,) = emu.requests()
    assert request["operation"] == "DescribeEvents"
    assert request["body"]["filter"] == {
        "regions": [EAST, WEST],
        "services": ["EC2", "RDS"],
        "eventTypeCategories": ["issue"],
        "eventStatusCodes": ["open", "upcoming"],
    }
    assert request["body"]["maxResults"] == 100


async def test_the_health_book_sees_the_region_failing_then_passing_after_close(
    health_emulator: HealthApiEmulator,
) -> None:
    shop = policy()
    book = HealthBook(shop)
    clock = SteppingClock()
    sink = ListSink()

    def aws_view(region: str) -> View:
        (vantage,) = [
            v for v in book.evidence(region, clock.now()) if v.vantage == AWS_HEALTH_VANTAGE
        ]
        return vantage.view

    async with source(health_emulator, [shop], clock) as src:
        await src.poll(sink)
        book.observe_many(sink.items)
        assert aws_view(EAST) is View.PASSING

        arn = health_emulator.open_event("RDS", EAST)
        clock.t += MINUTE
        await src.poll(sink)
        book.observe_many(sink.items)
        assert aws_view(EAST) is View.FAILING
        assert aws_view(WEST) is View.PASSING

        health_emulator.close_event(arn)
        clock.t += MINUTE
        await src.poll(sink)
        book.observe_many(sink.items)
        assert aws_view(EAST) is View.PASSING
    assert metric("failoverd_health_open_events", service="shop", region=EAST) == 0


async def test_service_codes_in_the_policy_match_whatever_their_case(
    health_emulator: HealthApiEmulator,
) -> None:
    health_emulator.open_event("EC2", WEST)
    sink = ListSink()
    async with source(health_emulator, [policy(services=["ec2"])], SteppingClock()) as src:
        await src.poll(sink)
    assert by_region(sink)[WEST].ok is False


async def test_resources_narrow_account_specific_events_to_the_listed_ones(
    health_emulator: HealthApiEmulator,
) -> None:
    emu = health_emulator
    watched = policy(resources=["i-0abc", "arn:aws:rds:us-west-2:123456789012:db:shop"])
    other = emu.open_event("EC2", EAST, affected_entities=["i-other"])
    sink = ListSink()
    async with source(emu, [watched], SteppingClock()) as src:
        await src.poll(sink)
        assert by_region(sink)[EAST].ok is True  # an event, but not about our resources
        assert emu.calls("DescribeAffectedEntities") == 1

        ours = emu.open_event(
            "RDS", WEST, affected_entities=["arn:aws:rds:us-west-2:123456789012:db:shop"]
        )
        await src.poll(sink)
        assert by_region(sink)[WEST].ok is False
        assert by_region(sink)[WEST].target == ours

        # The entity recovered while the event stays open: no longer ours to worry about.
        emu.update_event(
            ours,
            affected_entities=[
                {
                    "entityValue": "arn:aws:rds:us-west-2:123456789012:db:shop",
                    "statusCode": "RESOLVED",
                }
            ],
        )
        await src.poll(sink)
        assert by_region(sink)[WEST].ok is True

        # A PUBLIC event names no account resources: it is service-wide, so it counts.
        public = emu.open_event("EC2", EAST)
        await src.poll(sink)
        assert by_region(sink)[EAST].ok is False
        assert by_region(sink)[EAST].target == public
    emu.close_event(other)


async def test_affected_entities_are_not_fetched_without_resources(
    health_emulator: HealthApiEmulator,
) -> None:
    health_emulator.open_event("EC2", EAST, affected_entities=["i-1"])
    sink = ListSink()
    async with source(health_emulator, [policy()], SteppingClock()) as src:
        await src.poll(sink)
    assert by_region(sink)[EAST].ok is False
    assert health_emulator.calls("DescribeAffectedEntities") == 0


async def test_every_page_of_a_large_answer_is_read(health_emulator: HealthApiEmulator) -> None:
    for _ in range(45):
        health_emulator.open_event("EC2", WEST)
    sink = ListSink()
    async with source(health_emulator, [policy()], SteppingClock(), page_size=10) as src:
        await src.poll(sink)
    assert health_emulator.calls("DescribeEvents") == 5
    assert metric("failoverd_health_open_events", service="shop", region=WEST) == 45
    # The evidence names a few events, not all 45.
    assert by_region(sink)[WEST].target.endswith(",+42 more")


async def test_policies_share_one_query_and_each_gets_its_observations(
    health_emulator: HealthApiEmulator,
) -> None:
    shop = policy()
    ledger = policy("ledger", (WEST, EU), services=["DYNAMODB"])
    arn = health_emulator.open_event("DYNAMODB", EU)
    sink = ListSink()
    async with source(health_emulator, [shop, ledger], SteppingClock()) as src:
        await src.poll(sink)
    assert health_emulator.calls("DescribeEvents") == 1
    seen = {(o.service, o.region): o.ok for o in sink.items}
    assert seen == {
        ("shop", EAST): True,
        ("shop", WEST): True,
        ("ledger", WEST): True,
        ("ledger", EU): False,
    }
    assert health_emulator.events()[0]["arn"] == arn


# --- when the API does not answer ----------------------------------------------------------


def assert_all_unknown(sink: ListSink) -> None:
    assert sink.items
    for obs in sink.items:
        assert obs.ok is None
        assert obs.detail == FailureKind.HEALTH_API_UNAVAILABLE


async def test_an_unavailable_api_makes_the_vantage_unknown_never_healthy(
    health_emulator: HealthApiEmulator,
) -> None:
    shop = policy()
    book = HealthBook(shop)
    health_emulator.open_event("EC2", EAST)
    health_emulator.set_mode("unavailable")
    before = calls_metric("DescribeEvents", "unavailable")
    clock = SteppingClock()
    sink = ListSink()
    async with source(health_emulator, [shop], clock) as src:
        result = await src.poll(sink)
        assert result.status == "unavailable"
        assert_all_unknown(sink)
        # Bounded: max_attempts calls, with backoff between them.
        assert health_emulator.calls("DescribeEvents") == 4
        assert calls_metric("DescribeEvents", "unavailable") - before == 4
        assert len(clock.sleeps) == 3
        assert metric("failoverd_health_api_available") == 0
        book.observe_many(sink.items)
        verdicts = book.verdicts(clock.now())
        assert Reason.HEALTH_API_UNAVAILABLE in verdicts[EAST].reasons
        assert AWS_HEALTH_VANTAGE in verdicts[EAST].unknown

        health_emulator.set_mode("normal")
        sink.items.clear()
        assert (await src.poll(sink)).status == "ok"
        assert by_region(sink)[EAST].ok is False
        assert metric("failoverd_health_api_available") == 1


async def test_an_unreachable_endpoint_is_unknown(health_emulator: HealthApiEmulator) -> None:
    nobody = HealthClientSettings(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="testing",
        secret_access_key="testing",
        connect_timeout=1.0,
        read_timeout=1.0,
    )
    sink = ListSink()
    async with AwsHealthSource(
        [policy()], settings=nobody, clock=SteppingClock(), options=options(max_attempts=2)
    ) as src:
        result = await src.poll(sink)
    assert result.status == "unavailable"
    assert_all_unknown(sink)


async def test_a_slow_api_is_cut_off_by_the_call_timeout(
    health_emulator: HealthApiEmulator,
) -> None:
    health_emulator.set_delay(2.0)
    sink = ListSink()
    started = time.monotonic()
    async with source(
        health_emulator, [policy()], SteppingClock(), call_timeout=0.2, max_attempts=2
    ) as src:
        result = await src.poll(sink)
    elapsed = time.monotonic() - started
    assert (result.status, result.reason) == ("unavailable", "timeout")
    assert elapsed < 3.0  # an answer would have taken 2 s per attempt
    assert_all_unknown(sink)


async def test_throttling_backs_off_with_jitter_then_succeeds(
    health_emulator: HealthApiEmulator,
) -> None:
    health_emulator.open_event("EC2", EAST)
    health_emulator.set_mode("throttle", calls=2)
    before = calls_metric("DescribeEvents", "throttled")
    clock = SteppingClock()
    sink = ListSink()
    async with source(health_emulator, [policy()], clock) as src:
        result = await src.poll(sink)
    assert result.status == "ok"
    assert by_region(sink)[EAST].ok is False
    assert health_emulator.calls("DescribeEvents") == 3
    assert calls_metric("DescribeEvents", "throttled") - before == 2
    # Full jitter under an exponential ceiling: base 0.1 s, then 0.2 s.
    first, second = clock.sleeps
    assert 0 <= first <= 0.1
    assert 0 <= second <= 0.2


async def test_throttling_past_the_retry_budget_gives_up_for_this_poll(
    health_emulator: HealthApiEmulator,
) -> None:
    health_emulator.set_mode("throttle")
    clock = SteppingClock()
    sink = ListSink()
    async with source(
        health_emulator,
        [policy()],
        clock,
        retry_budget=3.0,
        max_attempts=20,
        backoff_base=0.5,
        backoff_cap=4.0,
    ) as src:
        result = await src.poll(sink)
    assert result.status == "unavailable"
    assert result.reason.startswith("throttled")
    assert sum(clock.sleeps) <= 3.0
    assert health_emulator.calls("DescribeEvents") < 20
    assert_all_unknown(sink)


# --- the run loop --------------------------------------------------------------------------


@asynccontextmanager
async def running(src: AwsHealthSource, sink: ListSink) -> AsyncIterator[asyncio.Task[None]]:
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(src.run(sink))
        try:
            yield task
        finally:
            task.cancel()


async def test_run_polls_each_signal_at_its_own_interval(
    health_emulator: HealthApiEmulator,
) -> None:
    fast = policy("shop", poll_interval="1m")
    slow = policy("ledger", (WEST, EU), services=["DYNAMODB"], poll_interval="2m")
    clock = SteppingClock(limit=0.0)
    sink = ListSink()
    src = source(health_emulator, [fast, slow], clock)
    async with running(src, sink) as task:
        await clock.run_to(0.0)
        await clock.run_to(4 * MINUTE)
        # t=0, 2m, 4m: one shared query; t=1m, 3m: only the fast signal's services.
        services = [r["body"]["filter"]["services"] for r in health_emulator.requests()]
        assert services == [
            ["DYNAMODB", "EC2", "RDS"],
            ["EC2", "RDS"],
            ["DYNAMODB", "EC2", "RDS"],
            ["EC2", "RDS"],
            ["DYNAMODB", "EC2", "RDS"],
        ]
        per_cell: dict[tuple[str, str], list[float]] = {}
        for o in sink.items:
            per_cell.setdefault((o.service, o.region), []).append(o.at - START)
        assert per_cell[("shop", EAST)] == [0, 60, 120, 180, 240]
        assert per_cell[("ledger", EU)] == [0, 120, 240]
    assert task.cancelled()


async def test_no_support_plan_disables_the_signal_without_a_crash_loop(
    health_emulator: HealthApiEmulator,
) -> None:
    health_emulator.set_mode("subscription_required")
    clock = SteppingClock(limit=0.0)
    sink = ListSink()
    src = source(health_emulator, [policy()], clock, subscription_retry_interval=1800.0)
    with capture_logs() as logs:
        async with running(src, sink):
            await clock.run_to(0.0)
            assert src.disabled
            assert metric("failoverd_health_signal_disabled") == 1
            await clock.run_to(29 * MINUTE)
            # One call, then nothing for 30 minutes, but an unknown observation every minute.
            assert health_emulator.calls() == 1
            assert len(sink.items) == 2 * 30
            assert_all_unknown(sink)

            await clock.run_to(31 * MINUTE)
            assert health_emulator.calls() == 2  # the rare retry, still no plan

            health_emulator.set_mode("normal")
            await clock.run_to(61 * MINUTE)
            assert health_emulator.calls("DescribeEvents") == 3 + 1  # retry at 60m, then 61m
            assert not src.disabled
            assert metric("failoverd_health_signal_disabled") == 0
            assert by_region(sink)[EAST].ok is True
    errors = [e for e in logs if e["event"] == "aws_health_subscription_required"]
    assert len(errors) == 1
    assert errors[0]["log_level"] == "error"
    assert "Support plan" in errors[0]["message"]


async def test_run_survives_a_bug_in_the_client_and_keeps_reporting_unknown() -> None:
    class Broken:
        async def describe_events(self, **_: Any) -> Any:
            raise RuntimeError("a bug, not a network error")

    @asynccontextmanager
    async def broken_client(_: HealthEndpoint) -> AsyncIterator[Broken]:
        yield Broken()

    factory: Callable[[HealthEndpoint], AbstractAsyncContextManager[Any]] = broken_client
    clock = SteppingClock(limit=0.0)
    sink = ListSink()
    src = AwsHealthSource(
        [policy()],
        settings=HealthClientSettings(endpoint_url="http://127.0.0.1:9"),
        client_factory=factory,
        clock=clock,
        options=options(),
    )
    async with running(src, sink):
        await clock.run_to(0.0)
        await clock.run_to(2 * MINUTE)
    assert len(sink.items) == 2 * 3
    assert_all_unknown(sink)


# --- the active endpoint and its fallback --------------------------------------------------


class FakeResolver:
    def __init__(self, target: str) -> None:
        self.target = target
        self.lookups = 0

    async def cname(self, name: str) -> str:
        assert name == "global.health.amazonaws.com"
        self.lookups += 1
        return self.target


async def test_falls_back_to_the_standby_region_when_the_active_one_fails(
    health_emulator: HealthApiEmulator,
) -> None:
    # Two emulators stand in for health.us-east-1 and health.us-east-2; the client factory
    # sends each regional endpoint to its emulator, as DNS would send it to AWS.
    active = health_emulator
    active.set_mode("unavailable")
    async with HealthApiEmulator() as standby:
        arn = standby.open_event("EC2", EAST)
        urls = {"us-east-1": active.endpoint_url, "us-east-2": standby.endpoint_url}
        real = aiobotocore_client_factory(
            HealthClientSettings(access_key_id="testing", secret_access_key="testing")
        )

        def factory(endpoint: HealthEndpoint) -> AbstractAsyncContextManager[Any]:
            assert endpoint.url == f"https://health.{endpoint.region}.amazonaws.com"
            return real(HealthEndpoint(endpoint.region, urls[endpoint.region]))

        resolver = FakeResolver("health.us-east-1.amazonaws.com.")
        sink = ListSink()
        async with AwsHealthSource(
            [policy()],
            client_factory=factory,
            resolver=resolver,
            clock=SteppingClock(),
            options=options(),
        ) as src:
            with capture_logs() as logs:
                result = await src.poll(sink)
            assert result.status == "ok"
            assert by_region(sink)[EAST].target == arn
            assert active.calls() == 1
            assert [r["signing_region"] for r in standby.requests()] == ["us-east-2"]
            assert any(e["event"] == "aws_health_endpoint_fallback" for e in logs)

            # The standby stays first while it answers.
            await src.poll(sink)
            assert active.calls() == 1
            assert standby.calls() == 2
