"""The Route 53 fix-ups of moto for routing-control health checks and DNS: each one shown to
close a real gap (moto's own behaviour first, inside ``without_moto_fixups(name)``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.sandbox.moto_fixups import without_moto_fixups
from orchestrator.sandbox.moto_route53_fixups import set_health_status_provider
from tests.fixtures.moto_server import MotoServer

RC = "arn:aws:route53-recovery-control::123456789012:controlpanel/abc/routingcontrol/def"


def create(moto: MotoServer, reference: str) -> str:
    r53 = moto.boto3_client("route53", "us-east-1")
    created = r53.create_health_check(
        CallerReference=reference,
        HealthCheckConfig={"Type": "RECOVERY_CONTROL", "RoutingControlArn": RC},
    )
    return str(created["HealthCheck"]["Id"])


@pytest.fixture
def no_provider() -> Iterator[None]:
    yield
    set_health_status_provider(None)


def test_a_routing_control_health_check_keeps_its_routing_control(moto: MotoServer) -> None:
    r53 = moto.boto3_client("route53", "us-east-1")
    with without_moto_fixups(
        "route53_recovery_control_health_checks", "route53_recovery_control_health_check_config"
    ):
        gap = create(moto, "gap")
        config = r53.get_health_check(HealthCheckId=gap)["HealthCheck"]["HealthCheckConfig"]
        assert "RoutingControlArn" not in config  # moto drops it
        assert config["Port"] == 80  # and invents an endpoint
    fixed = create(moto, "fixed")
    config = r53.get_health_check(HealthCheckId=fixed)["HealthCheck"]["HealthCheckConfig"]
    assert config["Type"] == "RECOVERY_CONTROL"
    assert config["RoutingControlArn"] == RC
    assert not {"IPAddress", "Port", "RequestInterval", "FailureThreshold"} & set(config)
    listed = r53.list_health_checks()["HealthChecks"]
    assert {c["HealthCheckConfig"].get("RoutingControlArn") for c in listed} >= {RC}


def test_health_check_status_reports_the_sandboxs_view(moto: MotoServer, no_provider: None) -> None:
    r53 = moto.boto3_client("route53", "us-east-1")
    check = create(moto, "status")
    healthy = {check: False}
    set_health_status_provider(healthy.get)
    with without_moto_fixups("route53_health_check_status"):
        report = r53.get_health_check_status(HealthCheckId=check)["HealthCheckObservations"]
        assert report[0]["StatusReport"]["Status"].startswith("Success")  # always, in moto
    report = r53.get_health_check_status(HealthCheckId=check)["HealthCheckObservations"]
    assert report[0]["StatusReport"]["Status"].startswith("Failure")
    healthy[check] = True
    report = r53.get_health_check_status(HealthCheckId=check)["HealthCheckObservations"]
    assert report[0]["StatusReport"]["Status"].startswith("Success")
    with pytest.raises(r53.exceptions.NoSuchHealthCheck):
        r53.get_health_check_status(HealthCheckId="nope")


def test_a_new_zone_has_an_soa_record_a_dns_server_can_serve(moto: MotoServer) -> None:
    r53 = moto.boto3_client("route53", "us-east-1")

    def soa(name: str) -> str:
        zone = r53.create_hosted_zone(Name=name, CallerReference=name)["HostedZone"]["Id"]
        sets = r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
        (record,) = [s for s in sets if s["Type"] == "SOA"]
        return str(record["ResourceRecords"][0]["Value"])

    with without_moto_fixups("route53_soa_record"):
        assert soa("gap.example.com").startswith("{'Value'")  # moto's repr of a dict
    value = soa("fixed.example.com")
    assert value.endswith(" 1 7200 900 1209600 86400") and value.startswith("ns-")
