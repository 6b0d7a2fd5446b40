"""Webhook targets on link-local and instance-metadata addresses are refused unless the
settings allow them: IP literals before anything is sent, names as they resolve."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from orchestrator import netguard
from orchestrator.actions.base import ActionFailed
from orchestrator.actions.webhook import Webhook
from orchestrator.policy.actions import Webhook as WebhookParams
from tests.unit.actions.test_webhook import make_ctx

METADATA = [
    "169.254.169.254",
    "169.254.170.2",
    "fd00:ec2::254",
    "fe80::1",
    "::ffff:169.254.169.254",
]


@pytest.fixture(autouse=True)
def default_rules() -> Iterator[None]:
    netguard.configure_webhooks(allow_link_local=False)
    yield
    netguard.configure_webhooks(allow_link_local=False)


@pytest.mark.parametrize("address", METADATA)
def test_link_local_and_metadata_addresses_are_refused(address: str) -> None:
    why = netguard.refused(address)
    assert why is not None and "webhook.allow_link_local" in why


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "2001:db8::1", "hooks.example.com"])
def test_other_addresses_and_names_are_not_refused_here(address: str) -> None:
    assert netguard.refused(address) is None


def test_the_setting_allows_them() -> None:
    netguard.configure_webhooks(allow_link_local=True)
    assert all(netguard.refused(a) is None for a in METADATA)


def test_urls_are_judged_by_their_host() -> None:
    assert netguard.refused_url("http://169.254.169.254/latest/meta-data/iam/")
    assert netguard.refused_url("http://[fd00:ec2::254]/latest/api/token")
    assert netguard.refused_url("https://hooks.example.com/x") is None
    assert netguard.refused_url("http://[bad") is None  # not a URL: endpoint() says so


class _Fixed(AbstractResolver):
    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        return None


async def test_a_name_resolving_only_to_metadata_is_refused() -> None:
    resolver = netguard.GuardedResolver(_Fixed("169.254.169.254"))
    with pytest.raises(netguard.RefusedAddress, match=r"instance-data\.test resolves only"):
        await resolver.resolve("instance-data.test", 80)


async def test_refused_addresses_are_dropped_from_a_mixed_answer() -> None:
    resolver = netguard.GuardedResolver(_Fixed("169.254.169.254", "127.0.0.1"))
    assert [r["host"] for r in await resolver.resolve("mixed.test", 80)] == ["127.0.0.1"]


async def test_the_webhook_step_fails_before_sending_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[Any] = []

    def never(self: aiohttp.ClientSession, url: str, **kwargs: Any) -> Any:
        sent.append(url)
        raise AssertionError("a request was sent")

    monkeypatch.setattr(aiohttp.ClientSession, "post", never)
    ctx = make_ctx(WebhookParams(url="http://169.254.169.254/latest/meta-data/"))
    report = await Webhook().check(ctx)
    assert not report.ready
    assert "link-local or instance-metadata" in report.findings[0]
    with pytest.raises(ActionFailed, match=r"webhook to http://169\.254\.169\.254: 169\.254"):
        await Webhook().execute(ctx)
    assert sent == []


async def test_a_refused_name_fails_the_step_without_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netguard, "DefaultResolver", lambda: _Fixed("fd00:ec2::254"))
    ctx = make_ctx(WebhookParams(url="http://metadata.test/hook"))
    with pytest.raises(ActionFailed, match="resolves only to refused addresses"):
        await Webhook().execute(ctx)
