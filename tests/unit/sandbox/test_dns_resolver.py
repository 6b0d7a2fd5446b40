"""How the sandbox's DNS server chooses answers, as Route 53 documents it: routing policies by
health, CNAME chains, wildcards, aliases, NXDOMAIN/NODATA/REFUSED. No network: a snapshot
and a health view made by hand."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from orchestrator.sandbox.dns_server import AliasTarget, RecordSet, Resolver, Snapshot, Zone, _name
from orchestrator.sandbox.route53_health import SandboxHealth

ZONE = "shop.example.com."


def rs(name: str, type_: str, *values: str, **extra: Any) -> RecordSet:
    return RecordSet(name=_name(name), type=type_, ttl=extra.pop("ttl", 60), values=values, **extra)


class Health:
    def __init__(self, **states: bool) -> None:
        self.states = states

    def healthy(self, health_check_id: str, checks: Mapping[str, Mapping[str, Any]]) -> bool:
        return self.states.get(health_check_id, True)


def ask(zone_sets: list[RecordSet], name: str, rdtype: str = "A", health: Any = None,
        seed: int = 1) -> dns.message.Message:  # fmt: skip
    snapshot = Snapshot(zones=(Zone("Z1", _name(ZONE), tuple(zone_sets)),))
    resolver = Resolver(snapshot, health or Health(), random.Random(seed))
    return resolver.respond(dns.message.make_query(name, rdtype))


def values(response: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in response.answer for rd in rrset)


SOA = rs(ZONE, "SOA", "ns-1.awsdns.com. hostmaster.shop.example.com. 1 7200 900 1209600 86400")


def test_simple_records_answer_as_stored_with_the_authority_bit() -> None:
    sets = [SOA, rs("www.shop.example.com", "A", "192.0.2.1", "192.0.2.2", ttl=30)]
    response = ask(sets, "WWW.shop.example.com")
    assert values(response) == ["192.0.2.1", "192.0.2.2"]
    assert response.flags & dns.flags.AA and response.answer[0].ttl == 30
    assert response.rcode() == dns.rcode.NOERROR


def test_missing_names_types_and_zones() -> None:
    sets = [SOA, rs("www.shop.example.com", "A", "192.0.2.1"), rs("a.b.shop.example.com", "A",
            "192.0.2.9")]  # fmt: skip
    nx = ask(sets, "nope.shop.example.com")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    nodata = ask(sets, "www.shop.example.com", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority
    empty_non_terminal = ask(sets, "b.shop.example.com")
    assert empty_non_terminal.rcode() == dns.rcode.NOERROR
    refused = ask(sets, "www.example.org")
    assert refused.rcode() == dns.rcode.REFUSED and not refused.flags & dns.flags.AA


def test_a_cname_answers_any_type_and_is_followed_inside_the_zone() -> None:
    sets = [
        SOA,
        rs("api.shop.example.com", "CNAME", "api.us-west-2.shop.example.com"),
        rs("api.us-west-2.shop.example.com", "A", "192.0.2.20"),
        rs("out.shop.example.com", "CNAME", "elsewhere.example.net"),
    ]
    response = ask(sets, "api.shop.example.com")
    assert [r.rdtype for r in response.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert values(response) == ["192.0.2.20", "api.us-west-2.shop.example.com."]
    outside = ask(sets, "out.shop.example.com", "AAAA")
    assert values(outside) == ["elsewhere.example.net."]


def test_wildcards_match_names_without_records() -> None:
    sets = [SOA, rs("*.shop.example.com", "A", "192.0.2.7"), rs("www.shop.example.com", "A",
            "192.0.2.1")]  # fmt: skip
    assert values(ask(sets, "anything.shop.example.com")) == ["192.0.2.7"]
    assert ask(sets, "anything.shop.example.com").answer[0].name.to_text() == (
        "anything.shop.example.com."
    )
    assert values(ask(sets, "www.shop.example.com")) == ["192.0.2.1"]


def failover_pair() -> list[RecordSet]:
    return [
        SOA,
        rs("www.shop.example.com", "CNAME", "www.us-east-1.shop.example.com",
           set_identifier="use1", failover="PRIMARY", health_check_id="hc-use1"),
        rs("www.shop.example.com", "CNAME", "www.us-west-2.shop.example.com",
           set_identifier="usw2", failover="SECONDARY", health_check_id="hc-usw2"),
    ]  # fmt: skip


def test_failover_records_follow_health_as_route53_documents() -> None:
    sets = failover_pair()
    east, west = ["www.us-east-1.shop.example.com."], ["www.us-west-2.shop.example.com."]
    assert values(ask(sets, "www.shop.example.com", health=Health())) == east
    assert values(ask(sets, "www.shop.example.com", health=Health(**{"hc-use1": False}))) == west
    both_down = Health(**{"hc-use1": False, "hc-usw2": False})
    assert values(ask(sets, "www.shop.example.com", health=both_down)) == east
    secondary_down = Health(**{"hc-usw2": False})
    assert values(ask(sets, "www.shop.example.com", health=secondary_down)) == east


def test_weighted_records_skip_the_unhealthy_and_fall_back_to_all() -> None:
    sets = [
        SOA,
        rs("w.shop.example.com", "A", "192.0.2.1", set_identifier="a", weight=1,
           health_check_id="hc-a"),
        rs("w.shop.example.com", "A", "192.0.2.2", set_identifier="b", weight=3,
           health_check_id="hc-b"),
        rs("w.shop.example.com", "A", "192.0.2.3", set_identifier="c", weight=0),
    ]  # fmt: skip
    drawn = Counter(values(ask(sets, "w.shop.example.com", seed=i))[0] for i in range(400))
    assert set(drawn) == {"192.0.2.1", "192.0.2.2"}  # weight 0 only as a last resort
    assert 2 < drawn["192.0.2.2"] / drawn["192.0.2.1"] < 4.5
    one_down = Health(**{"hc-b": False})
    assert {values(ask(sets, "w.shop.example.com", health=one_down, seed=i))[0]
            for i in range(50)} == {"192.0.2.1"}  # fmt: skip
    weighted_down = Health(**{"hc-a": False, "hc-b": False})
    assert values(ask(sets, "w.shop.example.com", health=weighted_down)) == ["192.0.2.3"]


def test_alias_to_a_record_in_the_zone_with_target_health() -> None:
    sets = [
        *failover_pair(),
        RecordSet(name=_name("app.shop.example.com"), type="CNAME",
                  alias=AliasTarget("www.shop.example.com", True)),
    ]  # fmt: skip
    response = ask(sets, "app.shop.example.com", "CNAME", health=Health(**{"hc-use1": False}))
    assert values(response) == ["www.us-west-2.shop.example.com."]
    assert response.answer[0].name.to_text() == "app.shop.example.com."


def test_sandbox_health_follows_routing_controls_endpoints_and_flags() -> None:
    class Arc:
        states = {"rc-on": "On", "rc-off": "Off"}

        def state(self, arn: str) -> str:
            return self.states[arn]

    class Endpoint:
        def __init__(self, port: int, mode: str) -> None:
            self.port, self.mode = port, mode

    endpoints = {"us-east-1": Endpoint(9001, "down"), "us-west-2": Endpoint(9002, "flap")}
    health = SandboxHealth(Arc(), endpoints)
    checks: dict[str, dict[str, Any]] = {
        "on": {"Type": "RECOVERY_CONTROL", "RoutingControlArn": "rc-on"},
        "off": {"Type": "RECOVERY_CONTROL", "RoutingControlArn": "rc-off"},
        "gone": {"Type": "RECOVERY_CONTROL", "RoutingControlArn": "rc-gone"},
        "inverted-off": {"Type": "RECOVERY_CONTROL", "RoutingControlArn": "rc-off",
                         "Inverted": True},
        "by-port": {"Type": "HTTP", "IPAddress": "127.0.0.1", "Port": 9001},
        "by-name": {"Type": "HTTPS", "FullyQualifiedDomainName": "api.us-west-2.example.com"},
        "elsewhere": {"Type": "HTTPS", "FullyQualifiedDomainName": "api.example.org"},
        "disabled": {"Type": "HTTP", "IPAddress": "127.0.0.1", "Port": 9001, "Disabled": True},
        "calc": {"Type": "CALCULATED", "ChildHealthChecks": ["on", "off", "by-name"],
                 "HealthThreshold": 2},
        "calc-3": {"Type": "CALCULATED", "ChildHealthChecks": ["on", "off", "by-name"],
                   "HealthThreshold": 3},
    }  # fmt: skip
    status = {hc: health.healthy(hc, checks) for hc in checks}
    assert status == {
        "on": True, "off": False, "gone": False, "inverted-off": True, "by-port": False,
        "by-name": True, "elsewhere": True, "disabled": True, "calc": True, "calc-3": False,
    }  # fmt: skip
    assert health.healthy("not-a-check", checks)


def test_alias_records_at_the_apex_answer_their_in_zone_target_and_not_aws_resources() -> None:
    sets = [
        SOA,
        rs("www.shop.example.com", "A", "192.0.2.10"),
        RecordSet(name=_name("shop.example.com"), type="A",
                  alias=AliasTarget("www.shop.example.com", False, "Z1")),
        RecordSet(name=_name("lb.shop.example.com"), type="A",
                  alias=AliasTarget("web-123.us-east-1.elb.amazonaws.com", True, "Z35SXDOTRQ7X7K")),
    ]  # fmt: skip
    apex = ask(sets, "shop.example.com")
    assert values(apex) == ["192.0.2.10"] and apex.answer[0].name.to_text() == "shop.example.com."
    # A load balancer the sandbox does not run: no data (the name exists), never a made-up IP.
    lb = ask(sets, "lb.shop.example.com")
    assert lb.rcode() == dns.rcode.NOERROR and not lb.answer
