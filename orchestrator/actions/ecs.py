"""``ecs.set_desired_count``: scale an ECS service and wait for its tasks, in the step's region
(its ``region`` parameter, e.g. ``{source_region}`` to fence the old writers; by default the
run's target region).

Service Auto Scaling. An ECS service registered with Application Auto Scaling has a
scalable target (``ecs:service:DesiredCount``) whose MinCapacity and MaxCapacity bound the
desired count: registering or updating the target moves the count inside the bounds at once,
and its scaling policies never leave them (Application Auto Scaling API reference,
``RegisterScalableTarget``). A fence to 0 under a MinCapacity of 2 is undone; a scale-up past
MaxCapacity is clamped. So ``check`` reads the scalable target and reports such a step as not
ready; ``execute`` refuses it (``scalable_target: refuse``, the default) or first moves the
bounds to include the wanted count (``adjust``; for a fence, both to 0, so that no policy or
scheduled action starts the writers again), and says so in the journal.

Idempotent: ``UpdateService`` is called only when the service's desired count differs.
``verify`` waits until the service has settled: its running count equals its desired count,
and that desired count is exactly the wanted one when it is 0 (a fence) or at least the
wanted one otherwise (Service Auto Scaling raising it is fine). A deployment the circuit
breaker marked FAILED fails the step at once instead of waiting out the deadline. Throttles
and other transient errors while polling count as "not yet" (the shared
:func:`~orchestrator.actions.errors.transient_as_pending`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from pydantic import BaseModel

from orchestrator.actions.base import (
    Action,
    ActionFailed,
    ApiDependency,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    StepContext,
    typed_params,
)
from orchestrator.actions.errors import aws_errors, transient_as_pending
from orchestrator.actions.render import fill_for_iam, iam_regions
from orchestrator.actions.wait import poll_until
from orchestrator.partitions import partition_of
from orchestrator.policy.actions import EcsSetDesiredCount
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions.ecs")

SERVICE = "ecs"
AUTOSCALING = "application-autoscaling"
DIMENSION = "ecs:service:DesiredCount"


class _Missing(ActionFailed):
    """The cluster or the service is not there: a finding for ``check``, a failure for the
    rest (an ActionFailed, so that ``aws_errors`` lets it through unchanged)."""


async def _describe(client: Any, p: EcsSetDesiredCount, region: str) -> dict[str, Any]:
    async with aws_errors():
        try:
            response = await client.describe_services(cluster=p.cluster, services=[p.service])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ClusterNotFoundException":
                raise _Missing(f"ECS cluster {p.cluster} not found in {region}") from None
            raise
    services: list[dict[str, Any]] = response.get("services", [])
    # A deleted service lingers as INACTIVE for a while; it cannot be scaled.
    active = [s for s in services if s.get("status") != "INACTIVE"]
    if not active:
        raise _Missing(f"ECS service {p.service} not found in cluster {p.cluster} in {region}")
    return active[0]


def resource_id(p: EcsSetDesiredCount) -> str:
    """Application Auto Scaling's id of the service: ``service/<cluster>/<service>`` (names,
    also when the step gives ARNs)."""

    def name(value: str) -> str:
        return value.rsplit("/", 1)[-1] if value.startswith("arn:") else value

    return f"service/{name(p.cluster)}/{name(p.service)}"


async def scalable_target(client: Any, p: EcsSetDesiredCount) -> dict[str, Any] | None:
    """The service's scalable target (desired count), or None when it has none."""
    async with aws_errors():
        response = await client.describe_scalable_targets(
            ServiceNamespace="ecs", ResourceIds=[resource_id(p)], ScalableDimension=DIMENSION
        )
    targets = response.get("ScalableTargets") or []
    return dict(targets[0]) if targets else None


def bounds_problem(p: EcsSetDesiredCount, target: dict[str, Any] | None) -> str | None:
    """How the scalable target would undo ``desired`` (None: it would not)."""
    if target is None:
        return None
    low, high = int(target.get("MinCapacity", 0)), int(target.get("MaxCapacity", 0))
    where = f"scalable target {resource_id(p)}"
    if p.desired < low:
        what = "a fence to 0" if p.desired == 0 else f"desired {p.desired}"
        return (
            f"{where} has MinCapacity {low}: Application Auto Scaling would undo {what}"
            " (scalable_target: adjust lowers it first)"
        )
    if p.desired > high:
        return (
            f"{where} has MaxCapacity {high}: Application Auto Scaling would clamp desired"
            f" {p.desired} to {high} (scalable_target: adjust raises it first)"
        )
    return None


def adjusted_bounds(p: EcsSetDesiredCount, target: dict[str, Any]) -> tuple[int, int]:
    """The bounds ``adjust`` sets: [0, 0] for a fence (nothing may scale it out again), else
    the old ones widened just enough to include ``desired``."""
    if p.desired == 0:
        return 0, 0
    return (
        min(int(target.get("MinCapacity", 0)), p.desired),
        max(int(target.get("MaxCapacity", 0)), p.desired),
    )


def _failed_rollout(service: dict[str, Any]) -> str | None:
    for deployment in service.get("deployments", []):
        if deployment.get("status") == "PRIMARY" and deployment.get("rolloutState") == "FAILED":
            return str(deployment.get("rolloutStateReason") or "deployment failed")
    return None


class SetDesiredCount(Action):
    """Set the step region's ECS service to ``desired`` tasks and wait until they run."""

    name = "ecs.set_desired_count"
    params_model = EcsSetDesiredCount

    async def check(self, ctx: StepContext) -> CheckReport:
        p = typed_params(ctx, EcsSetDesiredCount)
        region = ctx.region
        try:
            async with ctx.aws.client(SERVICE, region) as client:
                service = await _describe(client, p, region)
            async with ctx.aws.client(AUTOSCALING, region) as autoscaling:
                target = await scalable_target(autoscaling, p)
        except ActionFailed as exc:
            # Missing, access denied...: what a readiness report is for. Transient errors
            # (RetryableError) propagate: they say nothing about readiness.
            return CheckReport(ready=False, findings=(str(exc),), control_plane_region=region)
        findings: list[str] = []
        notes: list[str] = []
        if service.get("status") != "ACTIVE":
            findings.append(f"ECS service {p.service} is {service.get('status')}, not ACTIVE")
        problem = bounds_problem(p, target)
        if problem is not None and target is not None:
            if p.scalable_target == "refuse":
                findings.append(problem)
            else:
                low, high = adjusted_bounds(p, target)
                notes.append(
                    f"will set scalable target {resource_id(p)} to [{low}, {high}] (was"
                    f" [{target.get('MinCapacity')}, {target.get('MaxCapacity')}])"
                )
        return CheckReport(
            ready=not findings, findings=tuple(findings + notes), control_plane_region=region
        )

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, EcsSetDesiredCount)
        region = ctx.region
        details: list[str] = []
        async with ctx.aws.client(AUTOSCALING, region) as autoscaling:
            target = await scalable_target(autoscaling, p)
            problem = bounds_problem(p, target)
            if problem is not None and target is not None:
                if p.scalable_target == "refuse":
                    raise ActionFailed(problem)
                low, high = adjusted_bounds(p, target)
                async with aws_errors():
                    # Only the bounds: the rest of the target (role, suspended state) is kept.
                    await autoscaling.register_scalable_target(
                        ServiceNamespace="ecs",
                        ResourceId=resource_id(p),
                        ScalableDimension=DIMENSION,
                        MinCapacity=low,
                        MaxCapacity=high,
                    )
                details.append(
                    f"scalable target [{target.get('MinCapacity')}, {target.get('MaxCapacity')}]"
                    f" -> [{low}, {high}]"
                )
        async with ctx.aws.client(SERVICE, region) as client:
            service = await _describe(client, p, region)
            current = int(service.get("desiredCount", 0))
            if current != p.desired:
                async with aws_errors():
                    await client.update_service(
                        cluster=p.cluster, service=p.service, desiredCount=p.desired
                    )
                details.insert(0, f"desired {current} -> {p.desired}")
        if not details:
            return ExecuteOutcome(changed=False, detail=f"already at desired {p.desired}")
        detail = "; ".join(details)
        log.info(
            "ecs_desired_count_set",
            service=ctx.service,
            run_id=ctx.run_id,
            step=ctx.step,
            region=region,
            cluster=p.cluster,
            ecs_service=p.service,
            detail=detail,
        )
        return ExecuteOutcome(changed=True, detail=detail)

    async def verify(self, ctx: StepContext) -> None:
        p = typed_params(ctx, EcsSetDesiredCount)
        region = ctx.region
        async with ctx.aws.client(SERVICE, region) as client:

            async def probe() -> tuple[bool, str]:
                service = await _describe(client, p, region)
                failure = _failed_rollout(service)
                if failure is not None:
                    raise ActionFailed(f"ECS service {p.service}: {failure}")
                desired = int(service.get("desiredCount", 0))
                running = int(service.get("runningCount", 0))
                seen = f"{running} running, desired {desired}"
                # A fence holds only at exactly 0; a scale-up may be raised by scaling.
                enough = desired == 0 if p.desired == 0 else desired >= p.desired
                return enough and running == desired, seen

            await poll_until(
                ctx,
                transient_as_pending(probe),
                what=f"ECS service {p.service} in {region} running {p.desired}",
            )

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        p = typed_params(params, EcsSetDesiredCount)
        return (ApiDependency(SERVICE, "UpdateService", p.region or target_region, "control"),)

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        p = typed_params(params, EcsSetDesiredCount)
        arns = set()
        targets = set()
        for region in iam_regions(p, regions):
            partition = partition_of(regions[0] if region == "*" else region)
            cluster, service = (fill_for_iam(v, region, p) for v in (p.cluster, p.service))
            arns.add(partition.arn("ecs", region, account, f"service/{cluster}/{service}"))
            targets.add(
                partition.arn("application-autoscaling", region, account, "scalable-target/*")
            )
        statements = [
            IamStatement(
                actions=("ecs:DescribeServices", "ecs:UpdateService"), resources=tuple(sorted(arns))
            ),
            # DescribeScalableTargets supports no resource-level permissions.
            IamStatement(actions=("application-autoscaling:DescribeScalableTargets",)),
        ]
        if p.scalable_target == "adjust":
            statements.append(
                IamStatement(
                    actions=("application-autoscaling:RegisterScalableTarget",),
                    resources=tuple(sorted(targets)),
                )
            )
        return statements
