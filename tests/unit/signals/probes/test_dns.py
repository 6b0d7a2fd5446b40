"""DNS probes against a tiny authoritative DNS server on 127.0.0.1 (UDP, dnspython)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import pytest_asyncio

from orchestrator.engine.observation import FailureKind
from orchestrator.signals.probes import DnsProber, ProbeContext

ZONE: dict[tuple[str, str], list[str]] = {
    ("api.us-east-1.shop.test.", "A"): ["127.0.0.1", "127.0.0.2"],
    ("api.us-east-1.shop.test.", "TXT"): ['"region=us-east-1" " ok"'],
    ("v6.shop.test.", "AAAA"): ["0:0:0:0:0:0:0:1"],
    ("www.shop.test.", "CNAME"): ["API.us-east-1.shop.test."],
    ("shop.test.", "MX"): ["10 mail.shop.test."],
}
SILENT = "silent.shop.test."  # the server never answers for this name


class _Server(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text().lower()
        if name == SILENT:
            return
        response = dns.message.make_response(query)
        rdtype = dns.rdatatype.to_text(question.rdtype)
        records = ZONE.get((name, rdtype))
        if records:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 60, "IN", rdtype, records)
            )
        elif not any(known == name for known, _ in ZONE):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest_asyncio.fixture
async def dns_server() -> AsyncIterator[tuple[str, _Server]]:
    """Yields the resolver address (``127.0.0.1:port``) and the server (to count queries)."""
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(_Server, local_addr=("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{transport.get_extra_info('sockname')[1]}", server
    finally:
        transport.close()


def prober(ctx: ProbeContext, resolver: str, **kwargs: object) -> DnsProber:
    kwargs.setdefault("timeout", 2.0)
    return DnsProber(ctx, resolver=resolver, **kwargs)  # type: ignore[arg-type]


async def test_expected_answers_present(
    plain_context: ProbeContext, dns_server: tuple[str, _Server]
) -> None:
    resolver, server = dns_server
    p = prober(plain_context, resolver, expect=["127.0.0.1"])
    result = await p.probe("api.us-east-1.shop.test")
    assert result.ok, result
    assert result.detail == "127.0.0.1, 127.0.0.2"
    # No answer cache: every probe asks the server again.
    await p.probe("api.us-east-1.shop.test")
    assert server.queries == 2


async def test_any_answer_is_enough_without_expectations(
    plain_context: ProbeContext, dns_server: tuple[str, _Server]
) -> None:
    assert (await prober(plain_context, dns_server[0]).probe("api.us-east-1.shop.test")).ok


async def test_missing_expected_answer_is_dns(
    plain_context: ProbeContext, dns_server: tuple[str, _Server]
) -> None:
    p = prober(plain_context, dns_server[0], expect=["127.0.0.1", "127.0.0.9"])
    result = await p.probe("api.us-east-1.shop.test")
    assert (result.ok, result.reason) == (False, FailureKind.DNS)
    assert "127.0.0.9" in result.detail and "got: 127.0.0.1, 127.0.0.2" in result.detail


@pytest.mark.parametrize(
    ("name", "record_type", "expect"),
    [
        ("v6.shop.test", "AAAA", ["::1"]),
        ("www.shop.test", "CNAME", ["api.us-east-1.shop.test"]),
        ("shop.test", "MX", ["10 MAIL.shop.test."]),
        ("api.us-east-1.shop.test", "TXT", ["region=us-east-1 ok"]),
    ],
)
async def test_answers_are_compared_in_canonical_form(
    plain_context: ProbeContext,
    dns_server: tuple[str, _Server],
    name: str,
    record_type: str,
    expect: list[str],
) -> None:
    p = prober(plain_context, dns_server[0], record_type=record_type, expect=expect)
    result = await p.probe(name)
    assert result.ok, result


async def test_nonexistent_name_is_dns(
    plain_context: ProbeContext, dns_server: tuple[str, _Server]
) -> None:
    result = await prober(plain_context, dns_server[0]).probe("nothing.failoverd.invalid")
    assert (result.ok, result.reason) == (False, FailureKind.DNS)
    assert "NXDOMAIN" in result.detail


async def test_no_records_of_the_type_is_dns(
    plain_context: ProbeContext, dns_server: tuple[str, _Server]
) -> None:
    p = prober(plain_context, dns_server[0], record_type="AAAA")
    result = await p.probe("api.us-east-1.shop.test")
    assert (result.ok, result.reason) == (False, FailureKind.DNS)
    assert "no AAAA records" in result.detail


async def test_resolver_that_never_answers_is_timeout(
    plain_context: ProbeContext, dns_server: tuple[str, _Server]
) -> None:
    started = time.monotonic()
    result = await prober(plain_context, dns_server[0], timeout=0.3).probe(SILENT)
    assert (result.ok, result.reason) == (False, FailureKind.TIMEOUT)
    assert time.monotonic() - started < 1.0


def test_bad_settings_are_refused() -> None:
    ctx = ProbeContext()
    with pytest.raises(ValueError, match="resolver must be an IP address"):
        DnsProber(ctx, timeout=1.0, resolver="dns.example.com")
    with pytest.raises(ValueError, match="expected an IP address for a A record"):
        DnsProber(ctx, timeout=1.0, expect=["not-an-ip"])
    with pytest.raises(ValueError, match="not an address for a AAAA record"):
        DnsProber(ctx, timeout=1.0, record_type="AAAA", expect=["127.0.0.1"])
    with pytest.raises(ValueError, match="record_type"):
        DnsProber(ctx, timeout=1.0, record_type="SRV")
    with pytest.raises(ValueError, match="DNS name"):
        DnsProber(ctx, timeout=1.0).validate("two words.example.com")


@pytest.mark.parametrize(
    ("address", "nameserver", "port"),
    [
        ("127.0.0.1", "127.0.0.1", 53),
        ("127.0.0.1:5353", "127.0.0.1", 5353),
        ("[::1]:53", "::1", 53),
    ],
)
def test_resolver_addresses(address: str, nameserver: str, port: int) -> None:
    resolver = ProbeContext().dns_resolver(address)
    assert resolver.nameservers == [nameserver]
    assert resolver.port == port
