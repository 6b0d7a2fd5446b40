"""`failoverd readiness` against a moto server: what is missing, what is ready, and which
steps lean on the control plane of the region being evacuated."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import boto3
import pytest

from orchestrator.cli.main import main
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.policy.loader import load_policy_text
from orchestrator.readiness import check_step, format_report, moves, readiness
from orchestrator.sandbox.seed import ALL_REGIONS, example_policy, seed_world
from orchestrator.sandbox.world import MotoWorld
from orchestrator.signals.aws_clients import AwsClients
from tests.fixtures.binaries import free_port, port_open, wait_until
from tests.fixtures.moto_server import MotoServer
from tests.integration.shop_world import POLICY, seed


def by_step(report: Any) -> dict[tuple[str, str, str], Any]:
    return {(s.move.runbook, s.move.target, s.step): s for s in report.steps}


async def test_a_seeded_world_is_ready_and_route53_is_flagged_when_evacuating_its_region(
    moto: MotoServer,
) -> None:
    zone = seed(moto)
    policy = load_policy_text(POLICY.format(zone=zone))
    report = await readiness([policy], AwsClients(moto.client_config()))
    steps = by_step(report)
    assert report.ready, [s for s in report.steps if not s.ready]
    # failover us-east-1 -> us-west-2 and failback us-west-2 -> us-east-1, two steps each
    assert set(steps) == {
        ("failover", "us-west-2", "scale"),
        ("failover", "us-west-2", "dns"),
        ("failback", "us-east-1", "scale"),
        ("failback", "us-east-1", "dns"),
    }
    # Route 53's control plane is us-east-1: evacuating us-east-1 leans on it.
    assert steps[("failover", "us-west-2", "dns")].control_plane_in_source
    assert not steps[("failback", "us-east-1", "dns")].control_plane_in_source
    # Whatever the region left, a record edit is a call to Route 53's global control plane:
    # the failover's dns step is not statically stable; scaling the target region is.
    (note,) = steps[("failover", "us-west-2", "dns")].static_stability
    assert "Route 53's API (ChangeResourceRecordSets)" in note and "us-east-1" in note
    assert steps[("failover", "us-west-2", "scale")].static_stability == ()


async def test_missing_and_undersized_resources_are_reported(moto: MotoServer) -> None:
    zone = seed(moto, max_size=2)  # desired 4 will not fit
    policy = load_policy_text(POLICY.format(zone=zone.replace("Z", "Y", 1) + "X"))
    report = await readiness([policy], AwsClients(moto.client_config()))
    steps = by_step(report)
    assert not report.ready
    scale = steps[("failover", "us-west-2", "scale")]
    assert not scale.ready
    assert "ASG max below desired: max 2 < desired 4" in scale.findings
    dns = steps[("failover", "us-west-2", "dns")]
    assert not dns.ready
    assert dns.findings  # the zone does not exist


def test_cli_exit_codes_and_report(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    zone = seed(moto, max_size=2)
    policy_file = tmp_path / "shop.yaml"
    policy_file.write_text(POLICY.format(zone=zone))
    args = ["readiness", "--policy", str(policy_file), "--endpoint-url", moto.endpoint_url]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "shop: failover us-east-1 -> us-west-2" in out
    assert "NOT READY  scale (autoscaling.set_capacity)" in out
    assert "! not statically stable: step 'dns' (route53.set_record) needs Route 53's API" in out
    assert "1 failover step check(s) not statically stable" in out
    assert main(["readiness", "--policy", str(tmp_path / "nope.yaml")]) == 2


LAG_POLICY = (
    POLICY
    + """
replication:
  sources:
    us-west-2: {{type: rds_replica_lag, db_instance: shop-db-usw2}}
  max_age: 5m
"""
)


def put_lag(moto: MotoServer, value: float, age_s: float) -> None:
    cw = moto.boto3_client("cloudwatch", "us-west-2")
    cw.put_metric_data(
        Namespace="AWS/RDS",
        MetricData=[
            {
                "MetricName": "ReplicaLag",
                "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": "shop-db-usw2"}],
                "Timestamp": datetime.now(UTC) - timedelta(seconds=age_s),
                "Value": value,
                "Unit": "Seconds",
            }
        ],
    )


@pytest.mark.parametrize(
    ("lag", "age", "ready", "words"),
    [
        (None, 0, False, "no metric AWS/RDS ReplicaLag (DBInstanceIdentifier=shop-db-usw2)"),
        (5.0, 30, True, "lag 5s within the RPO 1m"),
        (120.0, 30, False, "lag 2m above the RPO 1m"),
    ],
)
async def test_replica_lag_is_held_against_the_rpo(
    moto: MotoServer, lag: float | None, age: float, ready: bool, words: str
) -> None:
    zone = seed(moto)
    if lag is not None:
        put_lag(moto, lag, age)
    policy = load_policy_text(LAG_POLICY.format(zone=zone))
    report = await readiness([policy], AwsClients(moto.client_config()))
    (replica,) = report.lag
    assert replica.region == "us-west-2"
    assert replica.ready is ready
    assert words in replica.finding
    assert report.ready is ready  # the steps themselves are ready in the seeded world


class _SeedInto:
    """The sandbox's seeding, pointed at the test's moto server (it needs only boto3
    clients from its world; made once each, as making one takes a while)."""

    def __init__(self, moto: MotoServer) -> None:
        self.moto = moto
        self.clients: dict[tuple[str, str], Any] = {}

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self.clients:
            self.clients[key] = self.moto.boto3_client(service, region)
        return self.clients[key]


# Steps of the examples that act in the region being left (`region: "{source_region}"`).
SOURCE_REGION_STEPS = {
    ("ledger", "fence-old-writers"),
    ("ledger", "stop-old-writers"),
    ("catalog", "scale-down-standby"),
}


async def test_example_steps_for_the_region_being_left_are_checked_there(
    moto: MotoServer,
) -> None:
    seeded = seed_world(cast(MotoWorld, _SeedInto(moto)))
    ports = dict.fromkeys(ALL_REGIONS, 9)  # probe targets: readiness probes nothing
    aws = AwsClients(moto.client_config())
    checked = []
    for name in ("ledger", "catalog"):
        policy = load_policy_text(example_policy(name, seeded.zones, ports, ["local"]))
        for move, steps in moves(policy):
            for step in steps:
                if (name, step.name) in SOURCE_REGION_STEPS:
                    checked.append(await check_step(policy, move, step, aws, SYSTEM_CLOCK))
    # ledger: failover, switchover and failback; catalog: failback from each standby.
    assert len(checked) == 5, checked
    for s in checked:
        assert (s.ready, s.checked) == (True, True), s
        assert all(f.startswith("will set scalable target") for f in s.findings), s
        # The ECS service of the region being left, read through that region's API (and so
        # flagged as leaning on the control plane of the region being evacuated).
        assert s.control_plane_region == s.move.source
        assert s.control_plane_in_source


async def test_a_lag_metric_under_other_dimensions_is_not_taken_for_the_replicas(
    moto: MotoServer,
) -> None:
    # The metric is published, but for another instance: ListMetrics finds nothing for the
    # dimensions the policy names (a typo, or an identifier that changed).
    zone = seed(moto)
    put_lag(moto, 1.0, 30)
    policy = load_policy_text(LAG_POLICY.replace("shop-db-usw2", "shop-db-west").format(zone=zone))
    report = await readiness([policy], AwsClients(moto.client_config()))
    (replica,) = report.lag
    assert not replica.ready
    assert replica.finding == (
        "no metric AWS/RDS ReplicaLag (DBInstanceIdentifier=shop-db-west) in us-west-2"
        " (ListMetrics): check the dimensions (a new metric can take 15 minutes to be listed)"
    )


def _sandbox_ledger(moto: MotoServer, **changes: Any) -> tuple[Any, Any]:
    """The sandbox's seeded world and its ledger copy, with ``changes`` to the failover's
    steps (step name -> params to update)."""
    import yaml

    seeded = seed_world(cast(MotoWorld, _SeedInto(moto)))
    text = example_policy("ledger", seeded.zones, dict.fromkeys(ALL_REGIONS, 9), ["local"])
    data = yaml.safe_load(text)
    for step in data["runbooks"]["failover"]:
        step["params"].update(changes.get(step["name"].replace("-", "_"), {}))
    return seeded, load_policy_text(yaml.safe_dump(data, sort_keys=False), "ledger.yaml")


async def test_readiness_against_the_sandbox_says_no_where_aws_would(moto: MotoServer) -> None:
    # A CNAME flip at the zone apex, and a fence the writers' scalable target (MinCapacity 2)
    # would undo: AWS would refuse the first at failover time and silently undo the second.
    _, policy = _sandbox_ledger(
        moto,
        flip_dns={"name": "payments.example.com"},
        fence_old_writers={"scalable_target": "refuse"},
    )
    report = await readiness([policy], AwsClients(moto.client_config()))
    steps = by_step(report)
    assert not report.ready
    dns = steps[("failover", "eu-central-1", "flip-dns")]
    assert not dns.ready
    assert (
        "a CNAME is not permitted at the zone apex (payments.example.com.): use an alias record"
        " (type A or AAAA) instead"
    ) in dns.findings
    fence = steps[("failover", "eu-central-1", "fence-old-writers")]
    assert not fence.ready
    assert fence.findings == (
        "scalable target service/ledger-eu-west-1/ledger-writer has MinCapacity 2: Application"
        " Auto Scaling would undo a fence to 0 (scalable_target: adjust lowers it first)",
    )
    text = format_report(report)
    assert "NOT READY  flip-dns (route53.set_record)" in text
    assert "NOT READY  fence-old-writers (ecs.set_desired_count)" in text


async def test_the_sandbox_ledger_as_shipped_is_ready(moto: MotoServer) -> None:
    # The example as it is: the fence adjusts the scalable target, the record is no apex.
    _, policy = _sandbox_ledger(moto)
    report = await readiness([policy], AwsClients(moto.client_config()))
    # (A failback from the steady state finds the primary already the writer: that one is
    # expected not to be ready until a failover happened.)
    not_ready = [
        (s.move.runbook, s.step, s.findings)
        for s in report.steps
        if not s.ready and s.move.runbook != "failback"
    ]
    assert not_ready == [], not_ready
    assert all(x.ready for x in report.lag), report.lag
    fence = by_step(report)[("failover", "eu-central-1", "fence-old-writers")]
    assert fence.findings == (
        "will set scalable target service/ledger-eu-west-1/ledger-writer to [0, 0] (was [2, 12])",
    )


# --- when AWS calls fail: the cause, not "replica absent" ---------------------------------
NO_CREDENTIALS_ENV = {
    # Nothing the standard chain could find: no keys, no profile files, no instance role.
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _readiness_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, policy_file: Path, env: dict[str, str]
) -> str:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["readiness", "--policy", str(policy_file)]) == 1
    out: str = capsys.readouterr().out
    return out


def test_without_credentials_readiness_says_so_instead_of_replica_absent(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    zone = seed(moto)
    policy_file = tmp_path / "shop.yaml"
    policy_file.write_text(LAG_POLICY.format(zone=zone))
    env = {**NO_CREDENTIALS_ENV, "AWS_ENDPOINT_URL": moto.endpoint_url}
    out = _readiness_cli(monkeypatch, capsys, policy_file, env)
    assert out.splitlines()[0].startswith("AWS calls failed in 5 check(s): no AWS credentials")
    assert "replica absent" not in out
    assert "replica in us-west-2: NOT READY - could not read the lag (no AWS credentials)" in out
    assert "UNCHECKED  scale (autoscaling.set_capacity)" in out


def test_an_unreachable_endpoint_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    policy_file = tmp_path / "shop.yaml"
    policy_file.write_text(LAG_POLICY.format(zone="Z0SHOP"))
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_MAX_ATTEMPTS": "1",
    }
    out = _readiness_cli(monkeypatch, capsys, policy_file, env)
    assert "AWS calls failed in 5 check(s): an AWS endpoint could not be reached" in out
    assert "could not read the lag (AWS endpoint unreachable): EndpointConnectionError" in out
    assert "replica absent" not in out


@pytest.fixture
def moto_with_iam() -> Iterator[str]:
    """A moto server of its own that enforces IAM after its first two calls (which create a
    user and its key): every call of that user, who has no policy, is denied."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(port), 30.0, "the IAM-enforcing moto server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_access_denied_is_named_with_the_iam_policy_to_attach(
    moto_with_iam: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    iam = boto3.client(
        "iam",
        endpoint_url=moto_with_iam,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="failoverd")
    key = iam.create_access_key(UserName="failoverd")["AccessKey"]
    policy_file = tmp_path / "shop.yaml"
    policy_file.write_text(LAG_POLICY.format(zone="Z0SHOP"))
    env = {
        "AWS_ENDPOINT_URL": moto_with_iam,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    out = _readiness_cli(monkeypatch, capsys, policy_file, env)
    assert "AWS denied access: attach the policy `failoverd iam-policy` prints" in out, out
    assert "could not read the lag (access denied by AWS)" in out, out
    assert "replica absent" not in out
