"""The AWS Health API outside the commercial partition: China and GovCloud have their own
global names, regions and DNS suffixes (botocore's endpoint data), and a policy there must
poll them, never global.health.amazonaws.com."""

from __future__ import annotations

import pytest

from orchestrator.partitions import partition_named
from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.yamlsource import SourceErrors
from orchestrator.settings import AwsSettings
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from orchestrator.signals.aws_health import (
    AwsHealthSource,
    HealthEndpoint,
    health_sources,
    region_from_cname,
    regional_endpoint,
)
from tests.unit.signals.test_aws_health_endpoint import FakeResolver, ManualClock


def policy(service: str, regions: str) -> str:
    return f"""\
service: {service}
regions: [{regions}]
rto: 15m
rpo: 1m
detection: {{quorum: 1}}
signals:
  - {{name: api, type: http, target: "https://{service}.{{region}}.example.com/"}}
  - {{name: aws, type: aws_health, services: [EC2]}}
runbooks:
  failover:
    - {{name: w, action: wait, params: {{duration: 1s}}}}
"""


CHINA = load_policy_text(policy("shop-cn", "cn-north-1, cn-northwest-1"), "shop-cn.yaml")
GOV = load_policy_text(policy("shop-gov", "us-gov-west-1, us-gov-east-1"), "shop-gov.yaml")
COMMERCIAL = load_policy_text(policy("shop", "us-east-1, us-west-2"), "shop.yaml")


@pytest.mark.parametrize(
    ("target", "region"),
    [
        ("health.cn-northwest-1.amazonaws.com.cn.", "cn-northwest-1"),
        ("health.us-gov-west-1.amazonaws.com.", "us-gov-west-1"),
        # A name in another partition's DNS suffix is not that region's endpoint.
        ("health.cn-northwest-1.amazonaws.com.", None),
        ("health.us-east-1.amazonaws.com.cn.", None),
    ],
)
def test_a_cname_must_end_in_its_partitions_suffix(target: str, region: str | None) -> None:
    assert region_from_cname(target) == region


def test_regional_endpoints_use_the_partitions_dns_suffix() -> None:
    assert regional_endpoint("cn-northwest-1") == HealthEndpoint(
        "cn-northwest-1", "https://health.cn-northwest-1.amazonaws.com.cn"
    )
    assert regional_endpoint("us-east-2").url == "https://health.us-east-2.amazonaws.com"


@pytest.mark.parametrize(
    ("policy_", "global_name", "active"),
    [
        (CHINA, "global.health.amazonaws.com.cn", "cn-northwest-1"),
        (GOV, "global.health.us-gov.amazonaws.com", "us-gov-west-1"),
    ],
)
async def test_a_source_polls_the_health_api_of_its_policies_partition(
    policy_: object, global_name: str, active: str
) -> None:
    suffix = partition_named("aws-cn" if active.startswith("cn-") else "aws-us-gov").dns_suffix
    resolver = FakeResolver(f"health.{active}.{suffix}.")
    source = AwsHealthSource([policy_], resolver=resolver, clock=ManualClock())  # type: ignore[list-item]
    candidates = await source.selector.candidates()
    assert resolver.lookups == [global_name]
    assert candidates[0] == HealthEndpoint(active, f"https://health.{active}.{suffix}")
    assert all(e.url.endswith(suffix) for e in candidates), candidates


async def test_dns_failing_still_leaves_only_the_partitions_own_endpoints() -> None:
    resolver = FakeResolver()
    resolver.error = OSError("no DNS")
    source = AwsHealthSource([CHINA], resolver=resolver, clock=ManualClock())
    assert await source.selector.candidates() == (
        HealthEndpoint("cn-northwest-1", "https://health.cn-northwest-1.amazonaws.com.cn"),
    )


def test_one_poller_per_partition_for_the_same_identity() -> None:
    clients = AwsClients(AwsClientConfig(access_key_id="testing", secret_access_key="testing"))
    sources = health_sources([COMMERCIAL, CHINA, GOV], clients, AwsSettings())
    by_name = {s.name: ([w.service for w in s.watches], s.partition.name) for s in sources}
    assert by_name == {
        "aws_health": (["shop"], "aws"),
        "aws_health:aws-cn": (["shop-cn"], "aws-cn"),
        "aws_health:aws-us-gov": (["shop-gov"], "aws-us-gov"),
    }


def test_an_aws_health_signal_where_the_api_has_no_endpoint_is_refused() -> None:
    with pytest.raises(SourceErrors) as caught:
        load_policy_text(policy("iso", "us-iso-east-1, us-iso-west-1"), "iso.yaml")
    messages = [str(e) for e in caught.value.errors]
    assert any(
        "signals[1].type" in m and "no endpoint in partition aws-iso" in m for m in messages
    ), messages
