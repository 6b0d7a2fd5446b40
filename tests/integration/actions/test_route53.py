"""route53.set_record and route53.set_health_check_inverted against a real moto server."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.actions.base import ActionError, ActionFailed
from orchestrator.actions.registry import get_action
from orchestrator.actions.route53 import SetHealthCheckInverted, SetRecord, wanted_record_set
from orchestrator.policy.actions import Route53SetHealthCheckInverted, Route53SetRecord
from orchestrator.signals.aws_clients import AwsClients
from tests.fixtures.clock import VirtualClock
from tests.fixtures.moto_server import MotoServer
from tests.integration.actions.step_support import (
    StubbedAws,
    calls,
    make_ctx,
    on_virtual_time,
    rendered,
)

ZONE = "example.com"
APP = "app.example.com"
IP = {"Value": "192.0.2.10"}
WEIGHTED = {
    "Type": "CNAME",
    "TTL": 60,
    "SetIdentifier": "a",
    "Weight": 100,
    "ResourceRecords": [{"Value": "a.example.net"}],
}


class World:
    def __init__(self, moto: MotoServer) -> None:
        self.moto = moto
        self.r53 = moto.boto3_client("route53", "us-east-1")
        zone = self.r53.create_hosted_zone(Name=ZONE, CallerReference="zone")
        self.zone_id: str = zone["HostedZone"]["Id"]  # /hostedzone/Z...
        self.health_check = self.r53.create_health_check(
            CallerReference="hc",
            HealthCheckConfig={
                "Type": "HTTP",
                "IPAddress": "127.0.0.1",
                "Port": 80,
                "ResourcePath": "/health",
            },
        )["HealthCheck"]["Id"]

    def aws(self) -> AwsClients:
        return AwsClients(self.moto.client_config())

    def upsert(self, record: dict[str, Any]) -> None:
        self.r53.change_resource_record_sets(
            HostedZoneId=self.zone_id,
            ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": record}]},
        )

    def records(self, name: str = APP) -> list[dict[str, Any]]:
        listed = self.r53.list_resource_record_sets(HostedZoneId=self.zone_id)
        return [r for r in listed["ResourceRecordSets"] if r["Name"] == name + "."]

    def inverted(self) -> bool:
        check = self.r53.get_health_check(HealthCheckId=self.health_check)["HealthCheck"]
        return bool(check["HealthCheckConfig"].get("Inverted", False))


@pytest.fixture
def world(moto: MotoServer) -> World:
    """example.com with app.example.com -> app.us-east-1.example.net (simple CNAME)."""
    w = World(moto)
    w.upsert(
        {
            "Name": APP,
            "Type": "CNAME",
            "TTL": 60,
            "ResourceRecords": [{"Value": "app.us-east-1.example.net"}],
        }
    )
    return w


def values(record: dict[str, Any]) -> list[str]:
    return [r["Value"] for r in record["ResourceRecords"]]


async def test_set_record_moves_a_simple_record_once(world: World) -> None:
    action = get_action("route53.set_record")
    assert isinstance(action, SetRecord)
    params = Route53SetRecord(
        hosted_zone_id=world.zone_id, name=APP, value="app.us-west-2.example.net", ttl=30
    )
    ctx = make_ctx(world.aws(), params)

    report = await action.check(ctx)
    assert report.ready, report.findings
    assert report.control_plane_region == "us-east-1"

    before = calls("route53", "ChangeResourceRecordSets")
    insync_reads = calls("route53", "GetChange")
    outcome = await action.execute(ctx)
    assert outcome.changed
    await action.verify(ctx)
    [record] = world.records()
    assert values(record) == ["app.us-west-2.example.net"]
    assert record["TTL"] == 30
    assert calls("route53", "GetChange") > insync_reads, "verify waited on the change's INSYNC"

    again = await action.execute(ctx)
    await action.verify(ctx)
    assert not again.changed
    assert calls("route53", "ChangeResourceRecordSets") - before == 1


async def test_set_record_changes_only_its_own_weighted_set(world: World) -> None:
    for ident, weight, value in (("use1", 100, "use1.example.net"), ("usw2", 0, "usw2.net")):
        world.upsert(
            {
                "Name": "api.example.com",
                "Type": "CNAME",
                "TTL": 60,
                "SetIdentifier": ident,
                "Weight": weight,
                "ResourceRecords": [{"Value": value}],
            }
        )
    action = SetRecord()
    params = Route53SetRecord(
        hosted_zone_id=world.zone_id.rsplit("/", 1)[-1],  # the bare id works too
        name="API.example.com.",
        value="usw2.net",
        set_identifier="usw2",
        weight=100,
    )
    ctx = make_ctx(world.aws(), params)
    assert (await action.check(ctx)).ready
    assert (await action.execute(ctx)).changed
    await action.verify(ctx)
    weights = {
        r["SetIdentifier"]: (r["Weight"], values(r)) for r in world.records("api.example.com")
    }
    assert weights == {"use1": (100, ["use1.example.net"]), "usw2": (100, ["usw2.net"])}
    assert not (await action.execute(ctx)).changed


async def test_set_record_writes_a_failover_record_with_its_health_check(world: World) -> None:
    action = SetRecord()
    params = Route53SetRecord(
        hosted_zone_id=world.zone_id,
        name="www.example.com",
        type="A",
        value="192.0.2.10",
        set_identifier="primary",
        failover="PRIMARY",
        health_check_id=world.health_check,
    )
    ctx = make_ctx(world.aws(), params)
    assert (await action.check(ctx)).ready
    assert (await action.execute(ctx)).changed
    await action.verify(ctx)
    [record] = world.records("www.example.com")
    assert record["Failover"] == "PRIMARY"
    assert record["HealthCheckId"] == world.health_check
    assert values(record) == ["192.0.2.10"]
    assert not (await action.execute(ctx)).changed


async def test_set_record_quotes_txt_values_and_stays_idempotent(world: World) -> None:
    action = SetRecord()
    params = Route53SetRecord(
        hosted_zone_id=world.zone_id, name="_active.example.com", type="TXT", value="us-west-2"
    )
    ctx = make_ctx(world.aws(), params)
    assert (await action.execute(ctx)).changed
    await action.verify(ctx)
    assert values(world.records("_active.example.com")[0]) == ['"us-west-2"']
    assert not (await action.execute(ctx)).changed


async def test_check_reports_what_is_missing(world: World) -> None:
    action = SetRecord()
    missing_zone = Route53SetRecord(hosted_zone_id="ZNOSUCHZONE", name=APP, value="x.example.net")
    report = await action.check(make_ctx(world.aws(), missing_zone))
    assert not report.ready
    assert any("ZNOSUCHZONE" in f and "NoSuchHostedZone" in f for f in report.findings)
    assert report.control_plane_region == "us-east-1"

    outside = Route53SetRecord(
        hosted_zone_id=world.zone_id,
        name="app.example.org",
        value="x.example.net",
        set_identifier="a",
        failover="SECONDARY",
        health_check_id="no-such-check",
    )
    report = await action.check(make_ctx(world.aws(), outside))
    assert not report.ready
    assert any("not inside zone example.com." in f for f in report.findings)
    assert any("no-such-check" in f and "NoSuchHealthCheck" in f for f in report.findings)


async def test_bad_record_shapes_are_refused_before_any_call(world: World) -> None:
    action = SetRecord()
    shape = {"hosted_zone_id": world.zone_id, "name": APP, "value": "x.example.net", "weight": 10}
    # A policy with this shape does not load...
    with pytest.raises(ValidationError, match="need a set_identifier"):
        Route53SetRecord.model_validate(shape)
    # ... and the action refuses it anyway when handed one (defence in depth).
    no_identifier = Route53SetRecord.model_construct(**shape)
    ctx = make_ctx(world.aws(), no_identifier)
    assert "need set_identifier" in " ".join((await action.check(ctx)).findings)
    before = calls("route53", "ListResourceRecordSets")
    with pytest.raises(ActionFailed, match="need set_identifier"):
        await action.execute(ctx)
    assert calls("route53", "ListResourceRecordSets") == before


async def test_execute_into_a_missing_zone_fails_with_the_aws_error(world: World) -> None:
    params = Route53SetRecord(hosted_zone_id="ZNOSUCHZONE", name=APP, value="x.example.net")
    with pytest.raises(ActionFailed, match="NoSuchHostedZone"):
        await SetRecord().execute(make_ctx(world.aws(), params))


async def test_verify_gives_up_at_the_deadline_with_what_it_saw(world: World) -> None:
    # Nothing executes: the record keeps its old value, so verify can never succeed.
    clock = VirtualClock()
    params = Route53SetRecord(hosted_zone_id=world.zone_id, name=APP, value="never.example.net")
    ctx = make_ctx(world.aws(), params, clock=clock, within=60.0)
    with pytest.raises(ActionError) as raised:  # at the deadline
        await on_virtual_time(clock, SetRecord().verify(ctx), step=5.0)
    message = str(raised.value)
    assert "never.example.net" in message
    assert "last seen: app.us-east-1.example.net" in message
    assert 60.0 <= clock.monotonic() < 70.0


async def test_invert_health_check_once_and_back(world: World) -> None:
    action = get_action("route53.set_health_check_inverted")
    assert isinstance(action, SetHealthCheckInverted)
    ctx = make_ctx(world.aws(), Route53SetHealthCheckInverted(health_check_id=world.health_check))
    report = await action.check(ctx)
    assert report.ready and report.control_plane_region == "us-east-1"

    before = calls("route53", "UpdateHealthCheck")
    assert (await action.execute(ctx)).changed
    await action.verify(ctx)
    assert world.inverted()
    assert not (await action.execute(ctx)).changed
    assert calls("route53", "UpdateHealthCheck") - before == 1

    restore = make_ctx(
        world.aws(),
        Route53SetHealthCheckInverted(health_check_id=world.health_check, inverted=False),
    )
    assert (await action.execute(restore)).changed
    await action.verify(restore)
    assert not world.inverted()


async def test_missing_health_check_is_a_finding_and_a_failure(world: World) -> None:
    action = SetHealthCheckInverted()
    ctx = make_ctx(world.aws(), Route53SetHealthCheckInverted(health_check_id="no-such-check"))
    report = await action.check(ctx)
    assert not report.ready
    assert "NoSuchHealthCheck" in report.findings[0]
    with pytest.raises(ActionFailed, match="NoSuchHealthCheck"):
        await action.execute(ctx)


def test_iam_statements_name_the_zone_and_the_health_check() -> None:
    record = Route53SetRecord(
        hosted_zone_id="/hostedzone/Z123", name=APP, value="x", health_check_id="hc-1"
    )
    statements = SetRecord().iam_statements(record, ["us-east-1", "us-west-2"], "123456789012")
    by_action = {a: s.resources for s in statements for a in s.actions}
    assert by_action["route53:ChangeResourceRecordSets"] == ("arn:aws:route53:::hostedzone/Z123",)
    assert by_action["route53:GetChange"] == ("arn:aws:route53:::change/*",)
    assert by_action["route53:GetHealthCheck"] == ("arn:aws:route53:::healthcheck/hc-1",)
    inverted = SetHealthCheckInverted().iam_statements(
        Route53SetHealthCheckInverted(health_check_id="hc-1"), ["us-east-1"]
    )
    assert inverted[0].actions == ("route53:GetHealthCheck", "route53:UpdateHealthCheck")
    assert inverted[0].resources == ("arn:aws:route53:::healthcheck/hc-1",)


# --- what Route 53 refuses (InvalidChangeBatch), found by check before failover time -------


@pytest.mark.parametrize(
    ("seed", "params", "why"),
    [
        (  # a CNAME at the zone apex
            None,
            {"name": ZONE, "value": "lb.us-west-2.example.net"},
            "a CNAME is not permitted at the zone apex",
        ),
        (  # a CNAME next to an A record of the same name
            {"Name": "www.example.com", "Type": "A", "TTL": 60, "ResourceRecords": [IP]},
            {"name": "www.example.com", "value": "www.us-west-2.example.net"},
            "a CNAME at www.example.com. would conflict with the A record(s) there",
        ),
        (  # an A record where a CNAME is
            None,
            {"name": APP, "type": "A", "value": "192.0.2.20"},
            "a A record at app.example.com. would conflict with the CNAME there",
        ),
        (  # a simple record beside weighted ones of the same name and type
            {**WEIGHTED, "Name": "api.example.com"},
            {"name": "api.example.com", "value": "api.us-west-2.example.net"},
            "a simple CNAME record at api.example.com. cannot join the weighted/failover sets",
        ),
        (  # a weighted record beside a simple one
            None,
            {"name": APP, "value": "b.example.net", "set_identifier": "b", "weight": 10},
            "set_identifier 'b' cannot join the simple (non-routed) CNAME record",
        ),
    ],
)
async def test_changes_route53_refuses_are_not_ready_and_never_sent(
    world: World, seed: dict[str, Any] | None, params: dict[str, Any], why: str
) -> None:
    if seed is not None:
        world.upsert(seed)
    wanted = Route53SetRecord(hosted_zone_id=world.zone_id, **params)
    ctx = make_ctx(world.aws(), wanted)
    report = await SetRecord().check(ctx)
    assert not report.ready
    assert any(why in f for f in report.findings), report.findings
    before = calls("route53", "ChangeResourceRecordSets")
    with pytest.raises(ActionFailed, match="Route 53 would refuse the change"):
        await SetRecord().execute(ctx)
    assert calls("route53", "ChangeResourceRecordSets") == before
    # And the sandbox's Route 53 refuses it like AWS would, had it been sent.
    with pytest.raises(world.r53.exceptions.InvalidChangeBatch):
        world.upsert(wanted_record_set(wanted, "us-west-2"))


async def test_an_alias_at_the_apex_points_at_the_target_regions_load_balancer(
    world: World,
) -> None:
    alias = {
        "dns_name": "web-lb-1.us-west-2.elb.amazonaws.com",
        "hosted_zone_id": {"us-east-1": "Z35SXDOTRQ7X7K", "us-west-2": "Z1H1FL5HABSF5"},
        "evaluate_target_health": True,
    }
    params = Route53SetRecord(hosted_zone_id=world.zone_id, name=ZONE, type="A", alias=alias)
    ctx = make_ctx(world.aws(), params)  # the run's target region is us-west-2
    report = await SetRecord().check(ctx)
    assert report.ready, report.findings
    assert (await SetRecord().execute(ctx)).changed
    await SetRecord().verify(ctx)
    [apex] = [r for r in world.records(ZONE) if r["Type"] == "A"]
    assert apex["AliasTarget"]["HostedZoneId"] == "Z1H1FL5HABSF5"
    assert apex["AliasTarget"]["DNSName"] == "web-lb-1.us-west-2.elb.amazonaws.com."
    assert not (await SetRecord().execute(ctx)).changed  # idempotent


# --- health checks by id, by region from a map, by Name tag ------------------------------


def _tagged_check(world: World, reference: str, name: str) -> str:
    check_id: str = world.r53.create_health_check(
        CallerReference=reference,
        HealthCheckConfig={"Type": "HTTPS", "FullyQualifiedDomainName": f"{reference}.example.net"},
    )["HealthCheck"]["Id"]
    world.r53.change_tags_for_resource(
        ResourceType="healthcheck", ResourceId=check_id, AddTags=[{"Key": "Name", "Value": name}]
    )
    return check_id


async def test_a_health_check_is_found_by_its_name_tag(world: World) -> None:
    east = _tagged_check(world, "east", "shop-us-east-1")
    west = _tagged_check(world, "west", "shop-us-west-2")
    params = rendered(
        "route53.set_health_check_inverted", {"health_check_name": "shop-{source_region}"}
    )
    ctx = make_ctx(world.aws(), params)  # source us-east-1
    assert (await SetHealthCheckInverted().check(ctx)).ready
    outcome = await SetHealthCheckInverted().execute(ctx)
    await SetHealthCheckInverted().verify(ctx)
    assert outcome.detail == f"health check {east} inverted=True"
    flags = {
        i: world.r53.get_health_check(HealthCheckId=i)["HealthCheck"]["HealthCheckConfig"].get(
            "Inverted"
        )
        for i in (east, west)
    }
    assert flags == {east: True, west: False}


async def test_a_name_no_check_or_several_checks_carry_is_not_ready(world: World) -> None:
    _tagged_check(world, "a", "twin")
    _tagged_check(world, "b", "twin")
    for name, why in (
        ("nobody", "no Route 53 health check is tagged Name=nobody"),
        ("twin", "2 Route 53 health checks are tagged Name=twin"),
    ):
        ctx = make_ctx(world.aws(), Route53SetHealthCheckInverted(health_check_name=name))
        report = await SetHealthCheckInverted().check(ctx)
        assert not report.ready and why in report.findings[0]
        with pytest.raises(ActionFailed, match=why):
            await SetHealthCheckInverted().execute(ctx)


async def test_health_check_ids_by_region(world: World) -> None:
    ids = {"us-east-1": world.health_check, "us-west-2": _tagged_check(world, "w", "w")}
    params = rendered(
        "route53.set_health_check_inverted",
        {"health_check_ids": ids, "health_check_region": "{source_region}", "inverted": True},
    )
    ctx = make_ctx(world.aws(), params)
    assert (await SetHealthCheckInverted().check(ctx)).ready
    await SetHealthCheckInverted().execute(ctx)
    assert world.inverted()  # us-east-1's, the source's


def test_a_name_is_never_taken_for_an_id() -> None:
    with pytest.raises(ValidationError, match="Route 53 generates health-check ids"):
        Route53SetHealthCheckInverted(health_check_id="catalog-{source_region}")
    with pytest.raises(ValidationError, match="health_check_ids has no id for us-west-2"):
        Route53SetHealthCheckInverted.model_validate(
            {"health_check_ids": {"us-east-1": "a"}, "health_check_region": "{source_region}"},
            context={"policy_regions": ("us-east-1", "us-west-2")},
        )
    with pytest.raises(ValidationError, match="name the health check"):
        Route53SetHealthCheckInverted()


@pytest.mark.parametrize(
    ("target", "control"),
    [
        ("cn-north-1", "cn-northwest-1"),
        ("us-gov-east-1", "us-gov-west-1"),
        ("eu-west-1", "us-east-1"),
    ],
)
async def test_route53_calls_go_to_the_control_plane_of_the_partition(
    target: str, control: str
) -> None:
    # Route 53's control plane is one region per partition: never us-east-1 for aws-cn.
    def script(stubber: Any) -> None:
        zone = {"Id": "/hostedzone/Z0SHOP", "Name": "example.com.", "CallerReference": "z"}
        stubber.add_response("get_hosted_zone", {"HostedZone": zone}, {"Id": "Z0SHOP"})
        stubber.add_response(
            "list_resource_record_sets",
            {"ResourceRecordSets": [], "IsTruncated": False, "MaxItems": "100"},
        )

    aws = StubbedAws(script)
    params = Route53SetRecord(hosted_zone_id="Z0SHOP", name="api.example.com", value="x.example")
    ctx = replace(make_ctx(aws, params), target_region=target)
    report = await SetRecord().check(ctx)
    assert report.ready, report.findings
    assert (aws.opened, report.control_plane_region) == ([("route53", control)], control)
