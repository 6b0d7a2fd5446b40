"""Choosing the AWS Health endpoint: the active region from DNS, the standby as fallback.

The resolver is a fake (no test queries real DNS) and time is a manual clock.
"""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.signals.aws_health import (
    AwsHealthOptions,
    EndpointSelector,
    HealthClientSettings,
    HealthEndpoint,
    region_from_cname,
    regional_endpoint,
)

E1 = HealthEndpoint("us-east-1", "https://health.us-east-1.amazonaws.com")
E2 = HealthEndpoint("us-east-2", "https://health.us-east-2.amazonaws.com")


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return 1_800_000_000.0 + self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


class FakeResolver:
    """Answers with ``target``; raises ``error`` instead when set; hangs when ``hang``."""

    def __init__(self, target: str = "health.us-east-1.amazonaws.com.") -> None:
        self.target = target
        self.error: Exception | None = None
        self.hang = False
        self.lookups: list[str] = []

    async def cname(self, name: str) -> str:
        self.lookups.append(name)
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return self.target


def selector(
    resolver: FakeResolver, clock: ManualClock, resolve_timeout: float = 3.0
) -> EndpointSelector:
    return EndpointSelector(
        resolver,
        clock,
        refresh_interval=300.0,
        retry_resolve_after=30.0,
        resolve_timeout=resolve_timeout,
    )


@pytest.mark.parametrize(
    ("target", "region"),
    [
        ("health.us-east-1.amazonaws.com.", "us-east-1"),
        ("health.us-east-2.amazonaws.com", "us-east-2"),
        ("HEALTH.US-EAST-2.AMAZONAWS.COM.", "us-east-2"),
        ("health.eu-central-1.amazonaws.com.", "eu-central-1"),
        ("global.health.amazonaws.com.", None),
        ("health.us-east-1.amazonaws.com.evil.example.", None),
        ("elb-1234.us-east-1.elb.amazonaws.com.", None),
        ("", None),
    ],
)
def test_region_from_cname(target: str, region: str | None) -> None:
    assert region_from_cname(target) == region


async def test_the_active_region_named_by_dns_comes_first() -> None:
    resolver = FakeResolver("health.us-east-2.amazonaws.com.")
    sel = selector(resolver, ManualClock())
    assert await sel.candidates() == (E2, E1)
    assert sel.active_region == "us-east-2"
    assert resolver.lookups == ["global.health.amazonaws.com"]


async def test_the_answer_is_cached_until_the_refresh_interval() -> None:
    resolver = FakeResolver("health.us-east-1.amazonaws.com.")
    clock = ManualClock()
    sel = selector(resolver, clock)
    assert await sel.candidates() == (E1, E2)
    resolver.target = "health.us-east-2.amazonaws.com."  # AWS moved the active region
    clock.t = 299.0
    assert await sel.candidates() == (E1, E2)
    assert len(resolver.lookups) == 1
    clock.t = 300.0
    assert await sel.candidates() == (E2, E1)
    assert len(resolver.lookups) == 2


async def test_a_failed_lookup_keeps_the_default_order_and_retries_later() -> None:
    resolver = FakeResolver()
    resolver.error = OSError("no network")
    clock = ManualClock()
    sel = selector(resolver, clock)
    assert await sel.candidates() == (E1, E2)  # us-east-1 first before anything is known
    clock.t = 29.0
    await sel.candidates()
    assert len(resolver.lookups) == 1  # not hammering DNS
    resolver.error = None
    resolver.target = "health.us-east-2.amazonaws.com."
    clock.t = 30.0
    assert await sel.candidates() == (E2, E1)


async def test_a_failed_lookup_keeps_the_last_known_active_region() -> None:
    resolver = FakeResolver("health.us-east-2.amazonaws.com.")
    clock = ManualClock()
    sel = selector(resolver, clock)
    assert await sel.candidates() == (E2, E1)
    resolver.error = LookupError("NXDOMAIN")
    clock.t = 300.0
    assert await sel.candidates() == (E2, E1)


async def test_an_unexpected_cname_is_ignored() -> None:
    resolver = FakeResolver("something-else.example.com.")
    sel = selector(resolver, ManualClock())
    assert await sel.candidates() == (E1, E2)
    assert sel.active_region is None


async def test_a_hanging_resolver_is_cut_off() -> None:
    resolver = FakeResolver()
    resolver.hang = True
    sel = selector(resolver, ManualClock(), resolve_timeout=0.05)
    async with asyncio.timeout(2.0):
        assert await sel.candidates() == (E1, E2)


async def test_a_region_dns_names_that_we_did_not_know_is_used_first() -> None:
    resolver = FakeResolver("health.us-west-2.amazonaws.com.")
    sel = selector(resolver, ManualClock())
    assert await sel.candidates() == (regional_endpoint("us-west-2"), E1, E2)


async def test_a_working_standby_stays_first_until_the_regular_refresh() -> None:
    resolver = FakeResolver("health.us-east-1.amazonaws.com.")
    clock = ManualClock()
    sel = selector(resolver, clock)
    first, standby = await sel.candidates()
    sel.failed(first)
    sel.succeeded(standby)
    assert await sel.candidates() == (E2, E1)
    # The failure asked for a fresh look-up soon, not at once...
    clock.t = 29.0
    assert await sel.candidates() == (E2, E1)
    assert len(resolver.lookups) == 1
    # ...which finds the same active region: the working standby stays first.
    clock.t = 30.0
    assert await sel.candidates() == (E2, E1)
    assert len(resolver.lookups) == 2
    # The regular refresh gives the active region its chance again.
    clock.t = 330.0
    assert await sel.candidates() == (E1, E2)
    assert len(resolver.lookups) == 3


async def test_dns_naming_a_new_active_region_wins_over_a_fallback() -> None:
    resolver = FakeResolver("health.us-east-1.amazonaws.com.")
    clock = ManualClock()
    sel = selector(resolver, clock)
    first, standby = await sel.candidates()
    sel.failed(first)
    sel.succeeded(standby)
    assert await sel.candidates() == (E2, E1)
    resolver.target = "health.us-west-2.amazonaws.com."
    clock.t = 30.0  # the look-up brought forward by the failure
    assert await sel.candidates() == (regional_endpoint("us-west-2"), E1, E2)


async def test_an_override_skips_resolution_entirely() -> None:
    resolver = FakeResolver()
    emulator = HealthEndpoint("us-east-1", "http://127.0.0.1:4599")
    sel = EndpointSelector(resolver, ManualClock(), override=emulator)
    assert await sel.candidates() == (emulator,)
    sel.failed(emulator)
    assert await sel.candidates() == (emulator,)
    assert resolver.lookups == []


def test_settings_with_an_endpoint_url_override_the_endpoint() -> None:
    settings = HealthClientSettings(endpoint_url="http://127.0.0.1:4599", region="us-east-2")
    assert settings.override() == HealthEndpoint("us-east-2", "http://127.0.0.1:4599")
    assert HealthClientSettings().override() is None


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = HealthClientSettings(
        access_key_id="AKIAEXAMPLE", secret_access_key="s3cr3t", session_token="t0ken"
    )
    assert "s3cr3t" not in repr(settings)
    assert "t0ken" not in repr(settings)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"endpoint_url": "127.0.0.1:4599"}, "must start with http:// or https://"),
        ({"access_key_id": "AKIA"}, "both access_key_id and secret_access_key"),
        ({"read_timeout": 0}, "read_timeout must be positive"),
        ({"region": "useast1"}, "must be an AWS region"),
    ],
)
def test_bad_client_settings_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HealthClientSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"call_timeout": 0}, "call_timeout must be positive"),
        ({"retry_budget": -1}, "retry_budget must be >= 0"),
        ({"max_attempts": 0}, "max_attempts must be 1..20"),
        ({"page_size": 101}, "page_size must be 1..100"),
    ],
)
def test_bad_options_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AwsHealthOptions(**kwargs)  # type: ignore[arg-type]


def test_a_selector_without_resolver_or_override_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a resolver"):
        EndpointSelector(None, ManualClock())
