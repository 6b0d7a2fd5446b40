"""Cross-account access: roles assumed through regional STS (moto's STS), their credentials
cached per role and refreshed before they expire (a short session, on virtual time), and
every client of a role view acting in the role's account."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator.policy.access import AwsRole
from orchestrator.signals.aws_clients import AwsClients, RoleAssumptionError, refresh_windows
from tests.fixtures.binaries import free_port
from tests.fixtures.clock import VirtualClock
from tests.fixtures.moto_server import MotoServer
from tests.integration.actions.step_support import calls

WORKLOAD = "111111111111"  # another account than moto's default 123456789012
ROLE = AwsRole(role_arn=f"arn:aws:iam::{WORKLOAD}:role/failoverd", external_id="ops-2024")


def _workload_cluster(moto: MotoServer, region: str) -> None:
    """An ECS cluster created in the workload account (as the role), not in the default one."""
    import boto3

    sts = moto.boto3_client("sts", region)
    creds = sts.assume_role(RoleArn=ROLE.role_arn, RoleSessionName="seed")["Credentials"]
    boto3.client(
        "ecs",
        region_name=region,
        endpoint_url=moto.endpoint_url,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    ).create_cluster(clusterName="workload")


async def _clusters(aws: AwsClients, region: str) -> list[str]:
    async with aws.client("ecs", region) as ecs:
        arns: list[str] = (await ecs.list_clusters())["clusterArns"]
    return arns


async def test_a_role_view_acts_in_the_role_account(moto: MotoServer) -> None:
    _workload_cluster(moto, "eu-west-1")
    aws = AwsClients(moto.client_config())
    assert await _clusters(aws, "eu-west-1") == []  # the tooling account has none
    assert await _clusters(aws.with_role(ROLE), "eu-west-1") == [
        f"arn:aws:ecs:eu-west-1:{WORKLOAD}:cluster/workload"
    ]
    # A view of None is the factory's own identity again.
    assert await _clusters(aws.with_role(ROLE).with_role(None), "eu-west-1") == []


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    """One virtual time for both sides: moto's STS (in this process) stamps expirations
    with it, and the credentials judge them by it."""
    clock = VirtualClock(start=time.time())
    monkeypatch.setattr(
        "moto.sts.models.utcnow",
        lambda: datetime.fromtimestamp(clock.now(), UTC).replace(tzinfo=None),
    )
    return clock


async def test_credentials_are_cached_per_role_and_refreshed_before_they_expire(
    moto: MotoServer, clock: VirtualClock
) -> None:
    role = AwsRole(role_arn=ROLE.role_arn, duration=900)  # AWS's shortest session
    aws = AwsClients(moto.client_config(), clock=clock)
    before = calls("sts", "AssumeRole")
    await _clusters(aws.with_role(role), "eu-west-1")
    # Another view, another region, another client: the same credentials, no new call.
    await _clusters(aws.with_role(role), "eu-central-1")
    assert calls("sts", "AssumeRole") - before == 1
    advisory, _ = refresh_windows(900)
    assert advisory == 225  # a quarter of a short session, not botocore's 15 minutes
    clock.advance(900 - advisory - 60)  # still fresh
    await _clusters(aws.with_role(role), "eu-west-1")
    assert calls("sts", "AssumeRole") - before == 1
    clock.advance(120)  # inside the refresh window: renewed before the next call
    await _clusters(aws.with_role(role), "eu-west-1")
    assert calls("sts", "AssumeRole") - before == 2
    await _clusters(aws.with_role(role), "eu-west-1")
    assert calls("sts", "AssumeRole") - before == 2
    # A different role (or external id) is a different cache entry.
    await _clusters(aws.with_role(ROLE), "eu-west-1")
    assert calls("sts", "AssumeRole") - before == 3


class _OneDeadRegion(AwsClients):
    """STS of ``dead`` does not answer (a closed loopback port); the others are moto."""

    dead = "eu-west-1"
    closed = f"http://127.0.0.1:{free_port()}"

    def sts_endpoint(self, region: str) -> str:
        return self.closed if region == self.dead else super().sts_endpoint(region)


async def test_a_refresh_falls_back_to_another_regional_sts(
    moto: MotoServer, clock: VirtualClock
) -> None:
    _workload_cluster(moto, "eu-west-1")
    aws = _OneDeadRegion(moto.client_config(connect_timeout=0.5, max_attempts=1), clock=clock)
    role = AwsRole(role_arn=ROLE.role_arn, duration=900)
    before = {o: calls("sts", "AssumeRole", o) for o in ("ok", "error")}
    await _clusters(aws.with_role(role), "eu-central-1")  # through eu-central-1's STS
    clock.advance(850)  # past the mandatory refresh point
    # The refresh tries the region asked for first (its STS does not answer), then the
    # other region the role was used in.
    listed = await _clusters(aws.with_role(role), "eu-west-1")
    assert listed == [f"arn:aws:ecs:eu-west-1:{WORKLOAD}:cluster/workload"]
    assert calls("sts", "AssumeRole", "ok") - before["ok"] == 2
    assert calls("sts", "AssumeRole", "error") - before["error"] == 1


async def test_a_role_no_sts_answers_for_fails_naming_the_regions(moto: MotoServer) -> None:
    aws = _OneDeadRegion(moto.client_config(connect_timeout=0.5, max_attempts=1))
    with pytest.raises(RoleAssumptionError, match="eu-west-1: EndpointConnectionError"):
        await _clusters(aws.with_role(ROLE), "eu-west-1")


@pytest.mark.parametrize(
    ("region", "endpoint"),
    [
        ("eu-central-1", "https://sts.eu-central-1.amazonaws.com"),
        ("cn-northwest-1", "https://sts.cn-northwest-1.amazonaws.com.cn"),
        ("us-gov-west-1", "https://sts.us-gov-west-1.amazonaws.com"),
    ],
)
def test_roles_are_assumed_through_the_regional_sts_endpoint(region: str, endpoint: str) -> None:
    # Never sts.amazonaws.com (the global endpoint, served from us-east-1).
    assert AwsClients().sts_endpoint(region) == endpoint


def test_role_arn_and_limits_follow_sts() -> None:
    from pydantic import ValidationError

    bad: list[dict[str, Any]] = [
        {"role_arn": "arn:aws:iam::12345:role/x"},
        {"role_arn": ROLE.role_arn, "duration": 600},
        {"role_arn": ROLE.role_arn, "duration": 50000},
        {"role_arn": ROLE.role_arn, "session_name": "a b"},
        {"role_arn": ROLE.role_arn, "external_id": "x"},
    ]
    for values in bad:
        with pytest.raises(ValidationError):
            AwsRole(**values)
    assert AwsRole(role_arn="arn:aws-cn:iam::111111111111:role/ops/failoverd").partition == (
        "aws-cn"
    )
