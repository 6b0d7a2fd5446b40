"""Route 53 actions: point a record set at the target region, or flip a health check.

Route 53 is a global service whose control plane (every API call here) lives in us-east-1;
the clients are made for that region and ``check`` says so, so the readiness report can flag
a runbook that edits records while us-east-1 is the region being evacuated (DESIGN
principle 5). Identifiers are accepted as Route 53 writes them or bare: ``/hostedzone/Z1``
and ``Z1`` are the same zone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from orchestrator.actions.base import (
    GLOBAL_CONTROL_PLANE_HOME,
    Action,
    ActionFailed,
    ApiDependency,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    RetryableError,
    StepContext,
    partition_of,
    typed_params,
)
from orchestrator.actions.errors import aws_errors, classify, transient_as_pending
from orchestrator.actions.wait import poll_until
from orchestrator.policy.actions import Route53SetHealthCheckInverted, Route53SetRecord
from orchestrator.signals.aws_clients import error_code
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions")

CONTROL_PLANE_REGION = "us-east-1"
SERVICE = "route53"
_MAX_REMEMBERED_CHANGES = 1024


def zone_id(raw: str) -> str:
    """``Z1`` from ``Z1`` or ``/hostedzone/Z1``."""
    value = raw.strip().rsplit("/", 1)[-1]
    if not value:
        raise ActionFailed(f"not a hosted zone id: {raw!r}")
    return value


def health_check_id(raw: str) -> str:
    value = raw.strip().rsplit("/", 1)[-1]
    if not value:
        raise ActionFailed(f"not a health check id: {raw!r}")
    return value


def dns_name(name: str) -> str:
    """Route 53's canonical spelling: lower case, one trailing dot, ``*`` as written
    (Route 53 answers a wildcard as ``\\052``)."""
    value = name.strip().lower().replace("\\052", "*")
    return value if value.endswith(".") else value + "."


def in_zone(record: str, zone: str) -> bool:
    record, zone = dns_name(record), dns_name(zone)
    return record == zone or record.endswith("." + zone)


def record_problems(p: Route53SetRecord) -> list[str]:
    """What is wrong with the shape of the wanted record set (Route 53 would refuse it)."""
    problems: list[str] = []
    routed = p.weight is not None or p.failover is not None
    if routed and not p.set_identifier:
        problems.append("weighted and failover records need set_identifier")
    if p.set_identifier and not routed:
        problems.append("set_identifier needs weight or failover (simple records have none)")
    if p.weight is not None and p.failover is not None:
        problems.append("a record set is weighted or failover, not both")
    return problems


def _wanted_value(p: Route53SetRecord) -> str:
    # Route 53 stores TXT values as quoted character-strings; a bare value would be
    # refused, and a comparison with the stored form would never match.
    if p.type == "TXT" and not p.value.startswith('"'):
        return '"' + p.value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return p.value


def wanted_record_set(p: Route53SetRecord) -> dict[str, Any]:
    record: dict[str, Any] = {
        "Name": dns_name(p.name),
        "Type": p.type,
        "TTL": p.ttl,
        "ResourceRecords": [{"Value": _wanted_value(p)}],
    }
    if p.set_identifier:
        record["SetIdentifier"] = p.set_identifier
    if p.weight is not None:
        record["Weight"] = p.weight
    if p.failover is not None:
        record["Failover"] = p.failover
    if p.health_check_id:
        record["HealthCheckId"] = health_check_id(p.health_check_id)
    return record


def _normal_value(record_type: Any, value: str) -> str:
    # Host names compare without case and trailing dot (Route 53 treats "a.example.net" as
    # fully qualified either way); TXT data is case-sensitive.
    if record_type == "TXT":
        return value
    return value.lower().rstrip(".")


def _comparable(record: dict[str, Any]) -> tuple[Any, ...]:
    record_type = record.get("Type")
    values = sorted(
        _normal_value(record_type, str(r.get("Value", "")))
        for r in record.get("ResourceRecords", [])
    )
    return (
        dns_name(str(record.get("Name", ""))),
        record_type,
        record.get("TTL"),
        tuple(values),
        record.get("SetIdentifier"),
        record.get("Weight"),
        record.get("Failover"),
        record.get("HealthCheckId"),
        "alias" if record.get("AliasTarget") else None,
    )


def same_record_set(current: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    return current is not None and _comparable(current) == _comparable(wanted)


async def current_record_set(
    client: Any, zone: str, wanted: dict[str, Any]
) -> dict[str, Any] | None:
    """The stored record set with ``wanted``'s name, type and set identifier, or None.
    Record sets are listed in (name, type, set identifier) order from a start point, so
    this reads only the pages holding that name and type."""
    kwargs: dict[str, Any] = {
        "HostedZoneId": zone,
        "StartRecordName": wanted["Name"],
        "StartRecordType": wanted["Type"],
        "MaxItems": "100",
    }
    while True:
        page = await client.list_resource_record_sets(**kwargs)
        for record in page.get("ResourceRecordSets", []):
            if dns_name(record["Name"]) != wanted["Name"] or record["Type"] != wanted["Type"]:
                return None  # past the name and type: no such set
            if record.get("SetIdentifier") == wanted.get("SetIdentifier"):
                return dict(record)
        if not page.get("IsTruncated"):
            return None
        kwargs["StartRecordName"] = page["NextRecordName"]
        kwargs["StartRecordType"] = page["NextRecordType"]
        if "NextRecordIdentifier" in page:
            kwargs["StartRecordIdentifier"] = page["NextRecordIdentifier"]
        else:
            kwargs.pop("StartRecordIdentifier", None)


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "absent"
    values = ",".join(str(r.get("Value")) for r in record.get("ResourceRecords", []))
    extra = "".join(
        f" {key}={record[key]}" for key in ("Weight", "Failover", "HealthCheckId") if key in record
    )
    return f"{values or 'alias'} ttl={record.get('TTL')}{extra}"


class SetRecord(Action):
    """``route53.set_record``: UPSERT one record set (simple, weighted or failover) to the
    wanted value, only when what is stored differs; ``verify`` waits until Route 53 reports
    the change INSYNC (on every authoritative server) and the set lists with the value.

    The change id ``execute`` got is kept in memory for ``verify`` of the same run and step
    (a bounded map; the action holds nothing else). After a crash between the two, the
    resumed ``execute`` finds the record already right, and ``verify`` can only confirm
    what ListResourceRecordSets shows, not INSYNC, which by then is long past in practice."""

    name = "route53.set_record"
    params_model = Route53SetRecord

    def __init__(self) -> None:
        self._changes: dict[tuple[str, str, str], str] = {}

    async def check(self, ctx: StepContext) -> CheckReport:
        p = typed_params(ctx, Route53SetRecord)
        findings = record_problems(p)
        zone = zone_id(p.hosted_zone_id)
        async with ctx.aws.client(SERVICE, CONTROL_PLANE_REGION) as client:
            zone_name = await _read_or_finding(
                findings, client.get_hosted_zone(Id=zone), "hosted zone", zone
            )
            if zone_name is not None:
                name = zone_name["HostedZone"]["Name"]
                if not in_zone(p.name, name):
                    findings.append(f"record {dns_name(p.name)} is not inside zone {name}")
            if p.health_check_id:
                await _read_or_finding(
                    findings,
                    client.get_health_check(HealthCheckId=health_check_id(p.health_check_id)),
                    "health check",
                    p.health_check_id,
                )
        return CheckReport(
            ready=not findings,
            findings=tuple(findings),
            control_plane_region=CONTROL_PLANE_REGION,
        )

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, Route53SetRecord)
        if problems := record_problems(p):
            raise ActionFailed("; ".join(problems))
        zone = zone_id(p.hosted_zone_id)
        wanted = wanted_record_set(p)
        async with ctx.aws.client(SERVICE, CONTROL_PLANE_REGION) as client, aws_errors():
            current = await current_record_set(client, zone, wanted)
            if same_record_set(current, wanted):
                return ExecuteOutcome(
                    changed=False, detail=f"{wanted['Name']} already {_describe(current)}"
                )
            response = await client.change_resource_record_sets(
                HostedZoneId=zone,
                ChangeBatch={
                    "Comment": f"failoverd {ctx.service} run {ctx.run_id} step {ctx.step}"[:256],
                    "Changes": [{"Action": "UPSERT", "ResourceRecordSet": wanted}],
                },
            )
        change = str(response["ChangeInfo"]["Id"]).rsplit("/", 1)[-1]
        self._remember(ctx, change)
        log.info(
            "route53_record_upserted",
            service=ctx.service,
            run_id=ctx.run_id,
            step=ctx.step,
            zone=zone,
            record=wanted["Name"],
            type=wanted["Type"],
            change=change,
        )
        return ExecuteOutcome(
            changed=True,
            detail=f"{wanted['Name']}: {_describe(current)} -> {_describe(wanted)} ({change})",
        )

    async def verify(self, ctx: StepContext) -> None:
        p = typed_params(ctx, Route53SetRecord)
        zone = zone_id(p.hosted_zone_id)
        wanted = wanted_record_set(p)
        change = self._changes.get(_key(ctx))
        async with ctx.aws.client(SERVICE, CONTROL_PLANE_REGION) as client:
            if change is not None:

                async def insync() -> tuple[bool, str]:
                    async with aws_errors():
                        info = (await client.get_change(Id=change))["ChangeInfo"]
                    return info["Status"] == "INSYNC", f"change {change} {info['Status']}"

                await poll_until(
                    ctx, transient_as_pending(insync), what=f"Route 53 change {change} INSYNC"
                )

            async def listed() -> tuple[bool, str]:
                async with aws_errors():
                    current = await current_record_set(client, zone, wanted)
                return same_record_set(current, wanted), _describe(current)

            await poll_until(
                ctx,
                transient_as_pending(listed),
                what=f"{wanted['Name']} {wanted['Type']} listed as {p.value}",
            )
        self._changes.pop(_key(ctx), None)

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        # Route 53's API, records included, is one control plane in us-east-1.
        return (
            ApiDependency(SERVICE, "ChangeResourceRecordSets", CONTROL_PLANE_REGION, "control"),
        )

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        p = typed_params(params, Route53SetRecord)
        statements = [
            IamStatement(
                actions=(
                    "route53:ChangeResourceRecordSets",
                    "route53:GetHostedZone",
                    "route53:ListResourceRecordSets",
                ),
                resources=(f"arn:aws:route53:::hostedzone/{zone_id(p.hosted_zone_id)}",),
            ),
            IamStatement(actions=("route53:GetChange",), resources=("arn:aws:route53:::change/*",)),
        ]
        if p.health_check_id:
            statements.append(
                IamStatement(
                    actions=("route53:GetHealthCheck",),
                    resources=(_health_check_arn(p.health_check_id),),
                )
            )
        return statements

    def _remember(self, ctx: StepContext, change: str) -> None:
        if len(self._changes) >= _MAX_REMEMBERED_CHANGES:
            self._changes.pop(next(iter(self._changes)))  # the oldest: dicts keep order
        self._changes[_key(ctx)] = change


class SetHealthCheckInverted(Action):
    """``route53.set_health_check_inverted``: set a health check's ``Inverted`` flag, only
    when it differs; ``verify`` reads it back.

    This is how traffic moves through failover (or weighted) records created in advance: the
    record sets are never edited during an outage. Inverting the primary's health check makes
    Route 53's health checkers report it unhealthy, and the DNS data plane — answering from
    every edge location, with no dependency on us-east-1 — starts answering with the
    secondary. The ``UpdateHealthCheck`` call itself is still a control-plane call in
    us-east-1; for failover with no control-plane dependency at all, use ARC routing
    controls. Propagation takes the health check's interval times its failure threshold,
    plus the record TTL: ``verify`` confirms the flag, not the DNS answers."""

    name = "route53.set_health_check_inverted"
    params_model = Route53SetHealthCheckInverted

    async def check(self, ctx: StepContext) -> CheckReport:
        p = typed_params(ctx, Route53SetHealthCheckInverted)
        findings: list[str] = []
        async with ctx.aws.client(SERVICE, CONTROL_PLANE_REGION) as client:
            await _read_or_finding(
                findings,
                client.get_health_check(HealthCheckId=health_check_id(p.health_check_id)),
                "health check",
                p.health_check_id,
            )
        return CheckReport(
            ready=not findings, findings=tuple(findings), control_plane_region=CONTROL_PLANE_REGION
        )

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, Route53SetHealthCheckInverted)
        check_id = health_check_id(p.health_check_id)
        async with ctx.aws.client(SERVICE, CONTROL_PLANE_REGION) as client:
            async with aws_errors():
                health_check = (await client.get_health_check(HealthCheckId=check_id))[
                    "HealthCheck"
                ]
            if _inverted(health_check) == p.inverted:
                return ExecuteOutcome(
                    changed=False, detail=f"health check {check_id} already inverted={p.inverted}"
                )
            try:
                await client.update_health_check(
                    HealthCheckId=check_id,
                    Inverted=p.inverted,
                    # Optimistic concurrency: if someone changed the check since we read it,
                    # AWS refuses and the retry re-reads instead of overwriting their edit.
                    HealthCheckVersion=health_check["HealthCheckVersion"],
                )
            except Exception as exc:
                error = classify(exc)
                if error_code(exc) == "HealthCheckVersionMismatch":
                    error = RetryableError(f"health check {check_id} changed meanwhile: {error}")
                raise error from exc
        log.info(
            "route53_health_check_inverted",
            service=ctx.service,
            run_id=ctx.run_id,
            step=ctx.step,
            health_check=check_id,
            inverted=p.inverted,
        )
        return ExecuteOutcome(changed=True, detail=f"health check {check_id} inverted={p.inverted}")

    async def verify(self, ctx: StepContext) -> None:
        p = typed_params(ctx, Route53SetHealthCheckInverted)
        check_id = health_check_id(p.health_check_id)
        async with ctx.aws.client(SERVICE, CONTROL_PLANE_REGION) as client:

            async def flag() -> tuple[bool, str]:
                async with aws_errors():
                    health_check = (await client.get_health_check(HealthCheckId=check_id))[
                        "HealthCheck"
                    ]
                seen = _inverted(health_check)
                return seen == p.inverted, f"inverted={seen}"

            await poll_until(
                ctx,
                transient_as_pending(flag),
                what=f"health check {check_id} inverted={p.inverted}",
            )

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        # Inverting a health check is a Route 53 API call too: not a data-plane switch.
        home = GLOBAL_CONTROL_PLANE_HOME[partition_of(target_region)]
        return (ApiDependency(SERVICE, "UpdateHealthCheck", home, "control"),)

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        p = typed_params(params, Route53SetHealthCheckInverted)
        return [
            IamStatement(
                actions=("route53:GetHealthCheck", "route53:UpdateHealthCheck"),
                resources=(_health_check_arn(p.health_check_id),),
            )
        ]


def _key(ctx: StepContext) -> tuple[str, str, str]:
    return (ctx.service, ctx.run_id, ctx.step)


def _inverted(health_check: dict[str, Any]) -> bool:
    return bool(health_check.get("HealthCheckConfig", {}).get("Inverted", False))


def _health_check_arn(raw: str) -> str:
    return f"arn:aws:route53:::healthcheck/{health_check_id(raw)}"


async def _read_or_finding(
    findings: list[str], call: Any, kind: str, ident: str
) -> dict[str, Any] | None:
    """Await a read for ``check``: a missing resource or a refusal (4xx) becomes a finding
    for the readiness report; a transient error is raised as :class:`RetryableError`, since
    it says nothing about readiness."""
    try:
        async with aws_errors():
            return dict(await call)
    except ActionFailed as exc:
        findings.append(f"{kind} {ident}: {exc}")
        return None
