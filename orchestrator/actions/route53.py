"""Route 53 actions: point a record set at the target region, or flip a health check.

Route 53 is a global service whose control plane (every API call here) lives in one region
of the partition: us-east-1 in ``aws`` (cn-northwest-1 in ``aws-cn``, us-gov-west-1 in
``aws-us-gov``; :mod:`orchestrator.partitions`). The clients are made for that region and
``check`` says so, so the readiness report can flag a runbook that edits records while that
region is the one being evacuated (DESIGN principle 5). Identifiers are accepted as Route 53
writes them or bare: ``/hostedzone/Z1`` and ``Z1`` are the same zone.

What Route 53 refuses with ``InvalidChangeBatch`` at failover time, ``check`` finds first
(:func:`record_conflicts`, from the Developer Guide's rules on record types and routing
policies): a CNAME at the zone apex; a CNAME next to records of another type at the same
name (either way round); a simple record set next to weighted or failover sets of the same
name and type (either way round). ``execute`` refuses them too, with the same words, before
calling. An alias (``alias:``, type A or AAAA) is how an apex points at a load balancer.

Health checks are named by id, by region from a map of ids, or by their ``Name`` tag
(:func:`resolve_health_check`: ListHealthChecks, then ListTagsForResources ten at a time):
Route 53 generates ids, so the tag is what keeps one policy portable between accounts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
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
from orchestrator.partitions import partition_named, partition_of
from orchestrator.policy.actions import Route53SetHealthCheckInverted, Route53SetRecord
from orchestrator.signals.aws_clients import error_code
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions")

SERVICE = "route53"
_MAX_REMEMBERED_CHANGES = 1024
TAGS_PER_CALL = 10  # ListTagsForResources takes at most 10 ResourceIds (botocore's model)


def control_plane_region(region: str) -> str:
    """The region Route 53's control plane is signed for and served from, in ``region``'s
    partition (us-east-1 in the commercial partition)."""
    return partition_of(region).route53_region


def _arn(regions: Sequence[str], resource: str) -> str:
    partition = partition_of(regions[0]) if regions else partition_named("aws")
    return partition.arn("route53", "", "", resource)


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


def _wanted_value(value: str, record_type: str) -> str:
    # Route 53 stores TXT values as quoted character-strings; a bare value would be
    # refused, and a comparison with the stored form would never match.
    if record_type == "TXT" and not value.startswith('"'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def wanted_record_set(
    p: Route53SetRecord, region: str, check_id: str | None = None
) -> dict[str, Any]:
    """The record set to UPSERT for a run whose target is ``region`` (an alias's zone may
    depend on it), with the resolved health check id."""
    record: dict[str, Any] = {"Name": dns_name(p.name), "Type": p.type}
    if p.alias is not None:
        try:
            zone = p.alias.zone_for(region)
        except ValueError as exc:
            raise ActionFailed(str(exc)) from None
        record["AliasTarget"] = {
            "HostedZoneId": zone_id(zone),
            "DNSName": dns_name(p.alias.dns_name),
            "EvaluateTargetHealth": p.alias.evaluate_target_health,
        }
    else:
        assert p.value is not None  # the model requires a value or an alias
        record["TTL"] = p.ttl
        record["ResourceRecords"] = [{"Value": _wanted_value(p.value, p.type)}]
    if p.set_identifier:
        record["SetIdentifier"] = p.set_identifier
    if p.weight is not None:
        record["Weight"] = p.weight
    if p.failover is not None:
        record["Failover"] = p.failover
    if check_id:
        record["HealthCheckId"] = check_id
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
    alias = record.get("AliasTarget")
    target = (
        (
            zone_id(str(alias.get("HostedZoneId", ""))),
            dns_name(str(alias.get("DNSName", ""))),
            bool(alias.get("EvaluateTargetHealth")),
        )
        if alias
        else None
    )
    return (
        dns_name(str(record.get("Name", ""))),
        record_type,
        None if alias else record.get("TTL"),
        tuple(values),
        record.get("SetIdentifier"),
        record.get("Weight"),
        record.get("Failover"),
        record.get("HealthCheckId"),
        target,
    )


def same_record_set(current: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    return current is not None and _comparable(current) == _comparable(wanted)


async def _listed_from(client: Any, kwargs: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Record sets in Route 53's (name, type, set identifier) order from the start point in
    ``kwargs``, page after page; the caller stops when it is past what it wants."""
    while True:
        page = await client.list_resource_record_sets(**kwargs)
        for record in page.get("ResourceRecordSets", []):
            yield dict(record)
        if not page.get("IsTruncated"):
            return
        kwargs["StartRecordName"] = page["NextRecordName"]
        kwargs["StartRecordType"] = page["NextRecordType"]
        if "NextRecordIdentifier" in page:
            kwargs["StartRecordIdentifier"] = page["NextRecordIdentifier"]
        else:
            kwargs.pop("StartRecordIdentifier", None)


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
    async for record in _listed_from(client, kwargs):
        if dns_name(record["Name"]) != wanted["Name"] or record["Type"] != wanted["Type"]:
            return None  # past the name and type: no such set
        if record.get("SetIdentifier") == wanted.get("SetIdentifier"):
            return record
    return None


async def sets_named(client: Any, zone: str, name: str) -> list[dict[str, Any]]:
    """Every record set of the zone with this name (all types and set identifiers)."""
    out: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"HostedZoneId": zone, "StartRecordName": name, "MaxItems": "100"}
    async for record in _listed_from(client, kwargs):
        if dns_name(record["Name"]) != name:
            break
        out.append(record)
    return out


def record_conflicts(
    wanted: dict[str, Any], zone_name: str, existing: Sequence[dict[str, Any]]
) -> list[str]:
    """Why Route 53 would answer InvalidChangeBatch to UPSERTing ``wanted`` into the zone
    ``zone_name`` holding ``existing`` record sets of the same name (the set ``wanted``
    replaces, same type and set identifier, does not count). The rules are the Route 53
    Developer Guide's: "Choosing between alias and non-alias records" (no CNAME at the
    zone apex), "Supported DNS record types" (a CNAME cannot share its name with any other
    record, RFC 1912 2.4) and "Values for weighted/failover records" (every set of one name
    and type has the same routing policy)."""
    name, kind = dns_name(str(wanted["Name"])), str(wanted["Type"])
    ident = wanted.get("SetIdentifier")
    problems: list[str] = []
    if kind == "CNAME" and name == dns_name(zone_name):
        problems.append(
            f"a CNAME is not permitted at the zone apex ({name}): use an alias record"
            " (type A or AAAA) instead"
        )
    others = [
        r
        for r in existing
        if dns_name(str(r.get("Name", ""))) == name
        and not (r.get("Type") == kind and r.get("SetIdentifier") == ident)
    ]
    types = sorted({str(r.get("Type")) for r in others if r.get("Type") != kind})
    if kind == "CNAME" and types:
        problems.append(
            f"a CNAME at {name} would conflict with the {', '.join(types)} record(s) there"
        )
    elif kind != "CNAME" and "CNAME" in types:
        problems.append(f"a {kind} record at {name} would conflict with the CNAME there")
    same_type = [r for r in others if r.get("Type") == kind]
    if ident is None and any(r.get("SetIdentifier") for r in same_type):
        problems.append(
            f"a simple {kind} record at {name} cannot join the weighted/failover sets of the"
            " same name and type"
        )
    elif ident is not None and any(not r.get("SetIdentifier") for r in same_type):
        problems.append(
            f"a {kind} set with set_identifier {ident!r} cannot join the simple (non-routed)"
            f" {kind} record at {name}"
        )
    return problems


async def resolve_health_check(
    client: Any, p: Route53SetRecord | Route53SetHealthCheckInverted
) -> str | None:
    """The health check id the parameters name (None: they name none). By ``Name`` tag:
    exactly one health check must carry it (ActionFailed otherwise)."""
    if p.health_check_id is not None:
        return health_check_id(p.health_check_id)
    if p.health_check_ids is not None:
        region = p.health_check_region
        if region is None or region not in p.health_check_ids:
            raise ActionFailed(f"health_check_ids has no id for region {region}")
        return health_check_id(p.health_check_ids[region])
    if p.health_check_name is None:
        return None
    wanted = p.health_check_name
    ids: list[str] = []
    kwargs: dict[str, Any] = {"MaxItems": "1000"}
    async with aws_errors():
        while True:
            page = await client.list_health_checks(**kwargs)
            ids.extend(str(h["Id"]) for h in page.get("HealthChecks", []))
            if not page.get("IsTruncated") or not page.get("NextMarker"):
                break
            kwargs["Marker"] = page["NextMarker"]
        found: list[str] = []
        for i in range(0, len(ids), TAGS_PER_CALL):
            batch = ids[i : i + TAGS_PER_CALL]
            tags = await client.list_tags_for_resources(
                ResourceType="healthcheck", ResourceIds=batch
            )
            for resource in tags.get("ResourceTagSets", []):
                names = {t.get("Key"): t.get("Value") for t in resource.get("Tags", [])}
                if names.get("Name") == wanted:
                    found.append(str(resource["ResourceId"]))
    if not found:
        raise ActionFailed(f"no Route 53 health check is tagged Name={wanted}")
    if len(found) > 1:
        raise ActionFailed(
            f"{len(found)} Route 53 health checks are tagged Name={wanted} ({', '.join(found)}):"
            " the name must pick exactly one"
        )
    return found[0]


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "absent"
    if record.get("AliasTarget"):
        return f"alias {record['AliasTarget'].get('DNSName')}"
    values = ",".join(str(r.get("Value")) for r in record.get("ResourceRecords", []))
    extra = "".join(
        f" {key}={record[key]}" for key in ("Weight", "Failover", "HealthCheckId") if key in record
    )
    return f"{values or 'alias'} ttl={record.get('TTL')}{extra}"


class SetRecord(Action):
    """``route53.set_record``: UPSERT one record set (simple, weighted or failover; a value
    or an alias) to the wanted target, only when what is stored differs; ``verify`` waits
    until Route 53 reports the change INSYNC (on every authoritative server) and the set
    lists as wanted.

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
        control = control_plane_region(ctx.target_region)
        async with ctx.aws.client(SERVICE, control) as client:
            hosted = await _read_or_finding(
                findings, client.get_hosted_zone(Id=zone), "hosted zone", zone
            )
            check_id = await _resolve_or_finding(findings, client, p)
            if hosted is not None:
                zone_name = hosted["HostedZone"]["Name"]
                if not in_zone(p.name, zone_name):
                    findings.append(f"record {dns_name(p.name)} is not inside zone {zone_name}")
                else:
                    try:
                        wanted = wanted_record_set(p, ctx.target_region, check_id)
                    except ActionFailed as exc:
                        findings.append(str(exc))
                    else:
                        async with aws_errors():
                            existing = await sets_named(client, zone, wanted["Name"])
                        findings.extend(record_conflicts(wanted, zone_name, existing))
            if check_id is not None:
                await _read_or_finding(
                    findings,
                    client.get_health_check(HealthCheckId=check_id),
                    "health check",
                    check_id,
                )
        return CheckReport(
            ready=not findings, findings=tuple(findings), control_plane_region=control
        )

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, Route53SetRecord)
        if problems := record_problems(p):
            raise ActionFailed("; ".join(problems))
        zone = zone_id(p.hosted_zone_id)
        async with (
            ctx.aws.client(SERVICE, control_plane_region(ctx.target_region)) as client,
            aws_errors(),
        ):
            wanted = wanted_record_set(p, ctx.target_region, await resolve_health_check(client, p))
            current = await current_record_set(client, zone, wanted)
            if same_record_set(current, wanted):
                return ExecuteOutcome(
                    changed=False, detail=f"{wanted['Name']} already {_describe(current)}"
                )
            # Route 53 would refuse these with InvalidChangeBatch: say why in our words.
            hosted = await client.get_hosted_zone(Id=zone)
            existing = await sets_named(client, zone, wanted["Name"])
            conflicts = record_conflicts(wanted, hosted["HostedZone"]["Name"], existing)
            if conflicts:
                raise ActionFailed("Route 53 would refuse the change: " + "; ".join(conflicts))
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
        change = self._changes.get(_key(ctx))
        async with ctx.aws.client(SERVICE, control_plane_region(ctx.target_region)) as client:
            async with aws_errors():
                wanted = wanted_record_set(
                    p, ctx.target_region, await resolve_health_check(client, p)
                )
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
                what=f"{wanted['Name']} {wanted['Type']} listed as {_describe(wanted)}",
            )
        self._changes.pop(_key(ctx), None)

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        # Route 53's API, records included, is one control plane (us-east-1 in aws).
        home = control_plane_region(target_region)
        return (ApiDependency(SERVICE, "ChangeResourceRecordSets", home, "control"),)

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
                resources=(_arn(regions, f"hostedzone/{zone_id(p.hosted_zone_id)}"),),
            ),
            IamStatement(actions=("route53:GetChange",), resources=(_arn(regions, "change/*"),)),
        ]
        statements.extend(_health_check_statements(p, regions, ("route53:GetHealthCheck",)))
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
        control = control_plane_region(ctx.target_region)
        async with ctx.aws.client(SERVICE, control) as client:
            check_id = await _resolve_or_finding(findings, client, p)
            if check_id is not None:
                await _read_or_finding(
                    findings,
                    client.get_health_check(HealthCheckId=check_id),
                    "health check",
                    check_id,
                )
        return CheckReport(
            ready=not findings, findings=tuple(findings), control_plane_region=control
        )

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, Route53SetHealthCheckInverted)
        async with ctx.aws.client(SERVICE, control_plane_region(ctx.target_region)) as client:
            check_id = await _resolved(client, p)
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
        async with ctx.aws.client(SERVICE, control_plane_region(ctx.target_region)) as client:
            check_id = await _resolved(client, p)

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
        home = control_plane_region(target_region)
        return (ApiDependency(SERVICE, "UpdateHealthCheck", home, "control"),)

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        p = typed_params(params, Route53SetHealthCheckInverted)
        actions = ("route53:GetHealthCheck", "route53:UpdateHealthCheck")
        return _health_check_statements(p, regions, actions)


def _health_check_statements(
    p: Route53SetRecord | Route53SetHealthCheckInverted,
    regions: Sequence[str],
    actions: tuple[str, ...],
) -> list[IamStatement]:
    """The health check permissions: on the named ids; by Name tag, on every health check
    (its id is not known before it is resolved), plus the two calls that resolve it."""
    if p.health_check_name is not None:
        any_check = _arn(regions, "healthcheck/*")
        return [
            IamStatement(actions=actions, resources=(any_check,)),
            # ListHealthChecks supports no resource-level permissions.
            IamStatement(actions=("route53:ListHealthChecks",)),
            IamStatement(actions=("route53:ListTagsForResources",), resources=(any_check,)),
        ]
    ids: list[str] = []
    if p.health_check_id is not None:
        ids = [p.health_check_id]
    elif p.health_check_ids is not None:
        region = p.health_check_region
        ids = (
            [p.health_check_ids[region]]
            if region in p.health_check_ids
            else list(p.health_check_ids.values())
        )
    if not ids:
        return []
    arns = tuple(sorted(_arn(regions, f"healthcheck/{health_check_id(i)}") for i in ids))
    return [IamStatement(actions=actions, resources=arns)]


def _key(ctx: StepContext) -> tuple[str, str, str]:
    return (ctx.service, ctx.run_id, ctx.step)


def _inverted(health_check: dict[str, Any]) -> bool:
    return bool(health_check.get("HealthCheckConfig", {}).get("Inverted", False))


async def _resolved(client: Any, p: Route53SetRecord | Route53SetHealthCheckInverted) -> str:
    check_id = await resolve_health_check(client, p)
    if check_id is None:  # the model requires a health check for this action
        raise ActionFailed("no health check named")
    return check_id


async def _resolve_or_finding(
    findings: list[str], client: Any, p: Route53SetRecord | Route53SetHealthCheckInverted
) -> str | None:
    """The health check id for ``check``: a name no check carries (or several do) is a
    finding; a transient error is raised (it says nothing about readiness)."""
    try:
        return await resolve_health_check(client, p)
    except ActionFailed as exc:
        findings.append(str(exc))
        return None


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
