"""``rds.promote_read_replica``: make a cross-region read replica a standalone writer.

Everything runs against the replica's own region (the target region), which is the one that
is up during the outage; nothing here touches the source region.

A replica must be ``available`` to be promoted (the API reference: "a read replica cannot
be promoted to a standalone instance when it is in the backing-up status"; RDS answers
``InvalidDBInstanceState``). Statuses that end by themselves (:data:`PASSING_STATUSES`: a
backup, a modification, storage optimisation, a reboot...) are waited out within the step's
timeout: ``check`` reports them without calling the replica unready, and ``execute`` polls
until it is ``available`` before promoting. Statuses that do not end by themselves (failed,
storage full, incompatible parameters...) are not ready, and fail the step.

Resume after a crash. Once promoted, an instance no longer says which source it was a
replica of, so a re-entered step could not tell "we promoted it" from "it was never a
replica" (which readiness must flag). Just before promoting, ``execute`` therefore tags the
replica ``failoverd:promoted-by=<run id>``; ``check`` accepts a standalone instance only
when that tag names the current run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from orchestrator.actions.base import (
    Action,
    ActionFailed,
    ApiDependency,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    RetryableError,
    StepContext,
    typed_params,
)
from orchestrator.actions.errors import aws_errors, classify, transient_as_pending
from orchestrator.actions.wait import poll_until
from orchestrator.partitions import partition_of
from orchestrator.policy.actions import RdsPromoteReadReplica
from orchestrator.signals.aws_clients import error_code
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions")

SERVICE = "rds"
PROMOTED_BY_TAG = "failoverd:promoted-by"
# arn:<partition>:rds:<region>:<account>:<db|cluster>:<identifier>
_RDS_ARN = re.compile(r"^arn:[a-z-]+:rds:([a-z0-9-]+):(\d{12}):(db|cluster):([A-Za-z0-9-]+)$")
# Codes that mean "the instance is busy with something else right now", not "never".
_BUSY_CODES = frozenset({"InvalidDBInstanceState", "InvalidDBInstanceStateFault"})
# DB instance statuses that end by themselves (RDS User Guide, "Viewing Amazon RDS DB instance
# status"): a promotion waits for them instead of failing the run.
PASSING_STATUSES = frozenset(
    {
        "backing-up",
        "configuring-enhanced-monitoring",
        "configuring-iam-database-auth",
        "configuring-log-exports",
        "converting-to-vpc",
        "maintenance",
        "modifying",
        "moving-to-vpc",
        "rebooting",
        "renaming",
        "resetting-master-credentials",
        "starting",
        "storage-config-upgrade",
        "storage-initialization",
        "storage-optimization",
        "upgrading",
    }
)


@dataclass(frozen=True)
class RdsArn:
    region: str
    account: str
    kind: str  # db or cluster
    identifier: str


def parse_rds_arn(value: str) -> RdsArn | None:
    """The parts of an RDS instance or cluster ARN; None for anything else (an id)."""
    match = _RDS_ARN.match(value.strip())
    if match is None:
        return None
    region, account, kind, identifier = match.groups()
    return RdsArn(region, account, kind, identifier.lower())


def identifier_of(value: str) -> str:
    """The (case-insensitive, so lower-cased) identifier in an ARN or a bare identifier."""
    arn = parse_rds_arn(value)
    return arn.identifier if arn else value.strip().lower()


def same_source(seen: str, expected: str) -> bool:
    """Whether a replica's source (as RDS reports it: an id in-region, an ARN across
    regions) is the expected one. Two ARNs must agree in full; otherwise identifiers."""
    seen_arn, expected_arn = parse_rds_arn(seen), parse_rds_arn(expected)
    if seen_arn and expected_arn:
        return seen_arn == expected_arn
    return identifier_of(seen) == identifier_of(expected)


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {str(t.get("Key")): str(t.get("Value")) for t in resource.get("TagList") or []}


def _where(ctx: StepContext, p: RdsPromoteReadReplica) -> tuple[str, str]:
    """(region, identifier) of the replica: an ARN says both, an id lives in the target."""
    arn = parse_rds_arn(p.db_instance)
    if arn is not None:
        if arn.kind != "db":
            raise ActionFailed(f"{p.db_instance} is a cluster ARN; use aurora.global_failover")
        return arn.region, arn.identifier
    return ctx.target_region, p.db_instance.strip()


async def describe_instance(client: Any, identifier: str) -> dict[str, Any]:
    async with aws_errors():
        response = await client.describe_db_instances(DBInstanceIdentifier=identifier)
    instances = response.get("DBInstances") or []
    if not instances:
        raise ActionFailed(f"DB instance {identifier} not found")
    return dict(instances[0])


def _state(instance: dict[str, Any]) -> str:
    source = instance.get("ReadReplicaSourceDBInstanceIdentifier")
    role = f"replica of {source}" if source else "standalone"
    return f"{instance.get('DBInstanceStatus')}, {role}"


class PromoteReadReplica(Action):
    """Promote the replica to a standalone, writable instance; refuse a replica of any
    source other than ``expected_source``. ``verify`` waits until DescribeDBInstances shows
    it standalone (no source) and ``available`` — RDS reboots it on the way, so a replica
    that merely still says ``available`` right after the call does not pass."""

    name = "rds.promote_read_replica"
    params_model = RdsPromoteReadReplica

    async def check(self, ctx: StepContext) -> CheckReport:
        p = typed_params(ctx, RdsPromoteReadReplica)
        findings: list[str] = []
        region, identifier = _where(ctx, p)
        try:
            async with ctx.aws.client(SERVICE, region) as client:
                instance = await describe_instance(client, identifier)
        except ActionFailed as exc:
            return CheckReport(ready=False, findings=(str(exc),), control_plane_region=region)
        source = instance.get("ReadReplicaSourceDBInstanceIdentifier")
        status = instance.get("DBInstanceStatus")
        if source is None:
            if tags_of(instance).get(PROMOTED_BY_TAG) == ctx.run_id:
                findings_ok = (f"{identifier} already promoted by this run ({status})",)
                return CheckReport(ready=True, findings=findings_ok, control_plane_region=region)
            findings.append(f"{identifier} in {region} is not a read replica (standalone)")
        elif p.expected_source and not same_source(source, p.expected_source):
            findings.append(f"{identifier} is a replica of {source}, not of {p.expected_source}")
        notes: list[str] = []
        if status in PASSING_STATUSES:
            notes.append(
                f"{identifier} is {status} for now: the promotion waits for it to be available"
            )
        elif status != "available":
            findings.append(f"{identifier} is {status}, not available")
        return CheckReport(
            ready=not findings, findings=tuple(findings + notes), control_plane_region=region
        )

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, RdsPromoteReadReplica)
        region, identifier = _where(ctx, p)
        async with ctx.aws.client(SERVICE, region) as client:
            instance = await describe_instance(client, identifier)
            source = instance.get("ReadReplicaSourceDBInstanceIdentifier")
            if source is None:
                # Already standalone: promoted by an earlier attempt (or RDS is finishing
                # it); verify waits for "available" either way.
                return ExecuteOutcome(changed=False, detail=f"{identifier} already standalone")
            if p.expected_source and not same_source(source, p.expected_source):
                raise ActionFailed(
                    f"refusing to promote a replica of {source}: {identifier} in {region} "
                    f"was expected to replicate {p.expected_source}"
                )
            if instance.get("DBInstanceStatus") != "available":
                instance = await self._until_available(ctx, client, identifier, instance)
            async with aws_errors():
                await client.add_tags_to_resource(
                    ResourceName=instance["DBInstanceArn"],
                    Tags=[{"Key": PROMOTED_BY_TAG, "Value": ctx.run_id[:256]}],
                )
            try:
                await client.promote_read_replica(DBInstanceIdentifier=identifier)
            except Exception as exc:
                error = classify(exc)
                if error_code(exc) in _BUSY_CODES:
                    # Backing up, modifying...: RDS refuses now, but will accept it later.
                    error = RetryableError(f"{identifier} cannot be promoted yet: {error}")
                raise error from exc
        log.info(
            "rds_replica_promoted",
            service=ctx.service,
            run_id=ctx.run_id,
            step=ctx.step,
            region=region,
            db_instance=identifier,
            source=source,
        )
        return ExecuteOutcome(
            changed=True, detail=f"promoted {identifier} (was a replica of {source})"
        )

    async def _until_available(
        self, ctx: StepContext, client: Any, identifier: str, instance: dict[str, Any]
    ) -> dict[str, Any]:
        """Wait (within the step's deadline) for a replica in a passing status to become
        ``available``; ActionFailed at once for a status that will not pass by itself."""
        seen = {"instance": instance}

        async def available() -> tuple[bool, str]:
            current = seen["instance"] = await describe_instance(client, identifier)
            status = current.get("DBInstanceStatus")
            if status != "available" and status not in PASSING_STATUSES:
                raise ActionFailed(f"{identifier} is {status}: it cannot be promoted")
            return status == "available", _state(current)

        await poll_until(
            ctx,
            transient_as_pending(available),
            what=f"{identifier} available to be promoted",
            first_delay=2.0,
            max_delay=30.0,
        )
        return seen["instance"]

    async def verify(self, ctx: StepContext) -> None:
        p = typed_params(ctx, RdsPromoteReadReplica)
        region, identifier = _where(ctx, p)
        async with ctx.aws.client(SERVICE, region) as client:

            async def standalone_writer() -> tuple[bool, str]:
                instance = await describe_instance(client, identifier)
                done = (
                    instance.get("ReadReplicaSourceDBInstanceIdentifier") is None
                    and instance.get("DBInstanceStatus") == "available"
                )
                return done, _state(instance)

            await poll_until(
                ctx,
                transient_as_pending(standalone_writer),
                what=f"{identifier} in {region} standalone and available",
                first_delay=1.0,
                max_delay=15.0,
            )

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        p = typed_params(params, RdsPromoteReadReplica)
        arn = parse_rds_arn(p.db_instance)
        region = arn.region if arn is not None else target_region
        return (ApiDependency(SERVICE, "PromoteReadReplica", region, "control"),)

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        p = typed_params(params, RdsPromoteReadReplica)
        arn = parse_rds_arn(p.db_instance)
        if arn is not None:
            resources: tuple[str, ...] = (p.db_instance.strip(),)
        else:
            resources = tuple(
                sorted(
                    partition_of(r).arn("rds", r, account, f"db:{p.db_instance.strip()}")
                    for r in regions
                )
            )
        return [
            IamStatement(
                actions=(
                    "rds:AddTagsToResource",
                    "rds:DescribeDBInstances",
                    "rds:PromoteReadReplica",
                ),
                resources=resources,
            )
        ]
