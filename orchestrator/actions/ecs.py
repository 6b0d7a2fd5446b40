"""``ecs.set_desired_count``: scale an ECS service and wait for its tasks, in the step's region
(its ``region`` parameter, e.g. ``{source_region}`` to fence the old writers; by default the
run's target region).

Idempotent: ``UpdateService`` is called only when the service's desired count differs.
``verify`` waits until the service has settled at (at least) the wanted size: its running
count equals its desired count, and that desired count was not lowered below ours (Service
Auto Scaling raising it is fine). A deployment the circuit breaker marked FAILED fails the
step at once instead of waiting out the deadline.
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
from orchestrator.actions.errors import aws_errors
from orchestrator.actions.render import fill_for_iam, iam_regions
from orchestrator.actions.wait import poll_until
from orchestrator.policy.actions import EcsSetDesiredCount
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions.ecs")

SERVICE = "ecs"


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
        async with ctx.aws.client(SERVICE, region) as client:
            try:
                service = await _describe(client, p, region)
            except ActionFailed as exc:
                # Missing, access denied...: what a readiness report is for. Transient
                # errors (RetryableError) propagate: they say nothing about readiness.
                return CheckReport(ready=False, findings=(str(exc),), control_plane_region=region)
        findings: list[str] = []
        if service.get("status") != "ACTIVE":
            findings.append(f"ECS service {p.service} is {service.get('status')}, not ACTIVE")
        return CheckReport(
            ready=not findings, findings=tuple(findings), control_plane_region=region
        )

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, EcsSetDesiredCount)
        region = ctx.region
        async with ctx.aws.client(SERVICE, region) as client:
            service = await _describe(client, p, region)
            current = int(service.get("desiredCount", 0))
            if current == p.desired:
                return ExecuteOutcome(changed=False, detail=f"already at desired {p.desired}")
            async with aws_errors():
                await client.update_service(
                    cluster=p.cluster, service=p.service, desiredCount=p.desired
                )
        detail = f"desired {current} -> {p.desired}"
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
                return desired >= p.desired and running == desired, seen

            await poll_until(
                ctx, probe, what=f"ECS service {p.service} in {region} running {p.desired}"
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
        for region in iam_regions(p, regions):
            cluster, service = (fill_for_iam(v, region, p) for v in (p.cluster, p.service))
            arns.add(f"arn:aws:ecs:{region}:{account}:service/{cluster}/{service}")
        actions = ("ecs:DescribeServices", "ecs:UpdateService")
        return [IamStatement(actions=actions, resources=tuple(sorted(arns)))]
