"""The sandbox's authoritative DNS server, queried like a client (dnspython over UDP and TCP on
loopback) for zones held in a real moto Route 53: answers before and after a move, whether
the move is a flip of ARC routing controls, a region endpoint going down, or a record edit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from orchestrator.sandbox.arc_cluster import ArcClusterEmulator
from orchestrator.sandbox.dns_server import DnsServer, Route53Reader
from orchestrator.sandbox.route53_health import SandboxHealth
from tests.fixtures.moto_server import MotoServer

ZONE = "shop.example.com"
NAME = "www.shop.example.com"
TIMEOUT = 3.0


@dataclass
class Endpoint:
    port: int
    mode: str = "up"


class World:
    """A zone with failover records on routing-control health checks, a record behind an
    endpoint health check, and a simple record; the cluster and two region endpoints."""

    def __init__(self, moto: MotoServer, cluster: ArcClusterEmulator) -> None:
        self.r53 = moto.boto3_client("route53", "us-east-1")
        self.cluster = cluster
        panel = cluster.create_control_panel("shop")
        self.use1 = cluster.create_routing_control(panel, "use1", state="On")
        self.usw2 = cluster.create_routing_control(panel, "usw2", state="On")
        self.zone = self.r53.create_hosted_zone(Name=ZONE, CallerReference="z")["HostedZone"]["Id"]
        self.endpoints = {"us-east-1": Endpoint(9101), "us-west-2": Endpoint(9102)}
        changes = []
        for region, arn, role in (
            ("us-east-1", self.use1, "PRIMARY"),
            ("us-west-2", self.usw2, "SECONDARY"),
        ):
            check = self.health_check({"Type": "RECOVERY_CONTROL", "RoutingControlArn": arn})
            changes.append(self.failover(NAME, region, role, check))
            endpoint_check = self.health_check(
                {"Type": "HTTP", "IPAddress": "127.0.0.1",
                 "Port": self.endpoints[region].port, "ResourcePath": "/healthz"}
            )  # fmt: skip
            changes.append(self.failover(f"api.{ZONE}", region, role, endpoint_check))
        changes.append(self.cname(f"static.{ZONE}", "static.us-east-1.shop.example.com"))
        self.change(changes)

    def health_check(self, config: dict[str, Any]) -> str:
        reference = f"hc-{len(self.r53.list_health_checks()['HealthChecks'])}"
        created = self.r53.create_health_check(CallerReference=reference, HealthCheckConfig=config)
        return str(created["HealthCheck"]["Id"])

    @staticmethod
    def failover(name: str, region: str, role: str, check: str) -> dict[str, Any]:
        first = name.split(".", 1)
        value = f"{first[0]}.{region}.{first[1]}"
        return {
            "Name": name, "Type": "CNAME", "TTL": 60, "SetIdentifier": region,
            "Failover": role, "HealthCheckId": check, "ResourceRecords": [{"Value": value}],
        }  # fmt: skip

    @staticmethod
    def cname(name: str, value: str) -> dict[str, Any]:
        return {"Name": name, "Type": "CNAME", "TTL": 60, "ResourceRecords": [{"Value": value}]}

    def change(self, records: list[dict[str, Any]]) -> None:
        self.r53.change_resource_record_sets(
            HostedZoneId=self.zone,
            ChangeBatch={
                "Changes": [{"Action": "UPSERT", "ResourceRecordSet": r} for r in records]
            },
        )


@pytest.fixture
async def served(
    moto: MotoServer, arc_cluster: ArcClusterEmulator
) -> AsyncIterator[tuple[World, DnsServer]]:
    world = World(moto, arc_cluster)
    reader = Route53Reader(lambda: moto.boto3_client("route53", "us-east-1"))
    server = DnsServer(reader, SandboxHealth(arc_cluster, world.endpoints), refresh=0.0)
    await server.start()
    try:
        yield world, server
    finally:
        await server.stop()


async def udp(server: DnsServer, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.udp(query, server.host, port=server.port, timeout=TIMEOUT)


async def tcp(server: DnsServer, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.tcp(query, server.host, port=server.port, timeout=TIMEOUT)


def target(response: dns.message.Message) -> str:
    cnames = [rd.target.to_text() for rrset in response.answer for rd in rrset
              if rrset.rdtype == dns.rdatatype.CNAME]  # fmt: skip
    return cnames[0] if cnames else ""


async def test_a_routing_control_flip_moves_the_answer(
    served: tuple[World, DnsServer],
) -> None:
    world, server = served
    before = await udp(server, NAME)
    assert before.rcode() == dns.rcode.NOERROR and before.flags & dns.flags.AA
    assert target(before) == "www.us-east-1.shop.example.com."
    world.cluster.set_state(world.use1, "Off")  # the flip, as arc.set_routing_controls does
    assert target(await udp(server, NAME)) == "www.us-west-2.shop.example.com."
    assert target(await tcp(server, NAME)) == "www.us-west-2.shop.example.com."
    # Both cells off: Route 53 answers the primary (its last resort).
    world.cluster.set_state(world.usw2, "Off")
    assert target(await udp(server, NAME)) == "www.us-east-1.shop.example.com."


async def test_endpoint_health_checks_follow_the_region_endpoints(
    served: tuple[World, DnsServer],
) -> None:
    world, server = served
    assert target(await udp(server, f"api.{ZONE}")) == "api.us-east-1.shop.example.com."
    world.endpoints["us-east-1"].mode = "down"
    assert target(await udp(server, f"api.{ZONE}")) == "api.us-west-2.shop.example.com."
    world.endpoints["us-east-1"].mode = "local-down"  # only the daemon's probes see it
    assert target(await udp(server, f"api.{ZONE}")) == "api.us-east-1.shop.example.com."


async def test_a_record_edit_through_the_api_is_answered(served: tuple[World, DnsServer]) -> None:
    world, server = served
    name = f"static.{ZONE}"
    assert target(await udp(server, name)) == "static.us-east-1.shop.example.com."
    world.change([World.cname(name, "static.us-west-2.shop.example.com")])
    assert target(await tcp(server, name)) == "static.us-west-2.shop.example.com."


async def test_negative_answers_and_other_zones(served: tuple[World, DnsServer]) -> None:
    _, server = served
    missing = await udp(server, f"nope.{ZONE}")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.authority and missing.authority[0].rdtype == dns.rdatatype.SOA
    apex = await tcp(server, ZONE, "NS")
    assert apex.rcode() == dns.rcode.NOERROR and apex.answer  # moto's NS set at the apex
    refused = await udp(server, "www.example.org")
    assert refused.rcode() == dns.rcode.REFUSED


async def test_large_answers_are_truncated_over_udp_and_whole_over_tcp(
    served: tuple[World, DnsServer],
) -> None:
    world, server = served
    values = [{"Value": f'"{i:03d} ' + "x" * 200 + '"'} for i in range(10)]
    world.change([{"Name": f"big.{ZONE}", "Type": "TXT", "TTL": 60, "ResourceRecords": values}])
    truncated = await udp(server, f"big.{ZONE}", "TXT")
    assert truncated.flags & dns.flags.TC and not truncated.answer
    whole = await tcp(server, f"big.{ZONE}", "TXT")
    assert len(whole.answer[0]) == 10
    assert server.queries >= 2


async def test_broken_tcp_clients_do_not_stop_the_server(served: tuple[World, DnsServer]) -> None:
    import asyncio
    import struct

    _, server = served
    for payload in (b"\x00\x40short", b"\x00\x02\xff\xff", b"\xff"):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(payload)
        await writer.drain()
        writer.close()
    # A garbled query on a live connection: FORMERR, and the connection still answers.
    reader, writer = await asyncio.open_connection(server.host, server.port)
    garbled = b"\x12\x34" + b"\x00" * 10 + b"\x05junk"
    writer.write(struct.pack("!H", len(garbled)) + garbled)
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    reply = dns.message.from_wire(await reader.readexactly(length))
    assert reply.id == 0x1234 and reply.rcode() == dns.rcode.FORMERR
    writer.close()
    assert target(await tcp(server, NAME)) == "www.us-east-1.shop.example.com."
    assert target(await udp(server, NAME)) == "www.us-east-1.shop.example.com."
