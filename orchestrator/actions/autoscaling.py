"""``autoscaling.set_capacity``: scale an Auto Scaling group in the step's region (its
``region`` parameter, e.g. ``{source_region}`` to scale the old region down; by default the
run's target region).

Idempotent: ``execute`` reads the group and calls AWS only for what differs. When the bounds
change too, one ``UpdateAutoScalingGroup`` carries MinSize, MaxSize and DesiredCapacity
together, so AWS never sees (nor silently clamps to) an intermediate combination; otherwise a
lone ``SetDesiredCapacity``. ``verify`` waits for enough InService instances when
``wait_in_service`` (scale-in is not waited for: fewer instances than before is not a
prerequisite for anything the runbook does next). A throttle or another transient error
while polling counts as "not yet" (:func:`~orchestrator.actions.errors.transient_as_pending`).

What else stops a group from reaching the capacity asked for, and what ``check`` says:

* a suspended ``Launch`` process: no instance starts, so a scale-up would wait out its
  deadline — not ready, and ``execute`` refuses it (resuming a process someone suspended is
  a human's call: ``aws autoscaling resume-processes``);
* a suspended ``Terminate`` process: a scale-in keeps its instances (said, not blocking);
* an instance refresh under way (DescribeInstanceRefreshes ``Pending``, ``InProgress``,
  ``Cancelling``, ``RollbackInProgress``, ``Baking``): instances are being replaced, so the
  InService count may dip while the step waits (said, not blocking);
* a warm pool: a scale-out takes its prepared instances first (said); a group being deleted
  (``Status``) is not ready.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
from orchestrator.policy.actions import AutoscalingSetCapacity
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions.autoscaling")

SERVICE = "autoscaling"


async def _describe(client: Any, name: str) -> dict[str, Any] | None:
    """The group, or None when the region has no group of that name."""
    async with aws_errors():
        response = await client.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
    groups: list[dict[str, Any]] = response.get("AutoScalingGroups", [])
    return groups[0] if groups else None


def _bound_problems(p: AutoscalingSetCapacity, group: dict[str, Any]) -> list[str]:
    """Why the wanted capacity cannot be set with the bounds it would have."""
    low = p.min if p.min is not None else int(group["MinSize"])
    high = p.max if p.max is not None else int(group["MaxSize"])
    problems = []
    if high < p.desired:
        problems.append(f"ASG max below desired: max {high} < desired {p.desired}")
    if low > p.desired:
        problems.append(f"ASG min above desired: min {low} > desired {p.desired}")
    return problems


REFRESH_UNDER_WAY = frozenset(
    {"Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking"}
)


def _suspended(group: dict[str, Any]) -> set[str]:
    return {str(p.get("ProcessName")) for p in group.get("SuspendedProcesses") or []}


def _blockers(p: AutoscalingSetCapacity, group: dict[str, Any]) -> list[str]:
    """What makes the step impossible as asked (not ready; execute refuses)."""
    problems = _bound_problems(p, group)
    if group.get("Status"):  # only set while the group is being deleted
        problems.append(f"ASG {p.auto_scaling_group} is {group['Status']}")
    launches = p.desired > int(group["DesiredCapacity"]) or (
        p.wait_in_service and p.desired > _in_service(group)
    )
    if "Launch" in _suspended(group) and launches:
        problems.append(
            f"the Launch process of ASG {p.auto_scaling_group} is suspended: no instance would"
            " start (resume it first)"
        )
    return problems


def _notes(
    p: AutoscalingSetCapacity, group: dict[str, Any], refreshes: list[dict[str, Any]]
) -> list[str]:
    """What readiness should know but does not stop the step."""
    notes: list[str] = []
    if "Terminate" in _suspended(group) and p.desired < int(group["DesiredCapacity"]):
        notes.append(
            f"the Terminate process of ASG {p.auto_scaling_group} is suspended: scaling in"
            " keeps its instances"
        )
    for refresh in refreshes:
        if refresh.get("Status") in REFRESH_UNDER_WAY:
            notes.append(
                f"instance refresh {refresh.get('InstanceRefreshId')} is {refresh.get('Status')}:"
                " instances are being replaced, InService may dip while the step waits"
            )
    warm = group.get("WarmPoolConfiguration")
    if warm:
        notes.append(
            f"warm pool ({warm.get('PoolState', 'Stopped')}, min {warm.get('MinSize', 0)}):"
            " a scale-out takes its prepared instances first"
        )
    return notes


async def _refreshes(client: Any, name: str) -> list[dict[str, Any]]:
    async with aws_errors():
        response = await client.describe_instance_refreshes(
            AutoScalingGroupName=name, MaxRecords=10
        )
    return list(response.get("InstanceRefreshes") or [])


def _in_service(group: dict[str, Any]) -> int:
    return sum(
        1
        for i in group.get("Instances", [])
        if i.get("LifecycleState") == "InService" and i.get("HealthStatus", "Healthy") == "Healthy"
    )


class SetCapacity(Action):
    """Set the step region's ASG to ``desired`` (and ``min``/``max`` when given)."""

    name = "autoscaling.set_capacity"
    params_model = AutoscalingSetCapacity

    async def check(self, ctx: StepContext) -> CheckReport:
        p = typed_params(ctx, AutoscalingSetCapacity)
        region = ctx.region
        try:
            async with ctx.aws.client(SERVICE, region) as client:
                group = await _describe(client, p.auto_scaling_group)
                refreshes = [] if group is None else await _refreshes(client, p.auto_scaling_group)
        except ActionFailed as exc:
            # Access denied and the like: what a readiness report is for. Transient errors
            # (RetryableError) propagate: they say nothing about readiness.
            return CheckReport(ready=False, findings=(str(exc),), control_plane_region=region)
        if group is None:
            finding = f"ASG {p.auto_scaling_group} not found in {region}"
            return CheckReport(ready=False, findings=(finding,), control_plane_region=region)
        problems = _blockers(p, group)
        return CheckReport(
            ready=not problems,
            findings=tuple(problems + _notes(p, group, refreshes)),
            control_plane_region=region,
        )

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, AutoscalingSetCapacity)
        region = ctx.region
        async with ctx.aws.client(SERVICE, region) as client:
            group = await _describe(client, p.auto_scaling_group)
            if group is None:
                raise ActionFailed(f"ASG {p.auto_scaling_group} not found in {region}")
            problems = _blockers(p, group)
            if problems:
                raise ActionFailed("; ".join(problems))
            update: dict[str, int] = {}
            if p.min is not None and p.min != group["MinSize"]:
                update["MinSize"] = p.min
            if p.max is not None and p.max != group["MaxSize"]:
                update["MaxSize"] = p.max
            desired_differs = p.desired != group["DesiredCapacity"]
            if not update and not desired_differs:
                return ExecuteOutcome(changed=False, detail=f"already at desired {p.desired}")
            async with aws_errors():
                if update:
                    await client.update_auto_scaling_group(
                        AutoScalingGroupName=p.auto_scaling_group,
                        DesiredCapacity=p.desired,
                        **update,
                    )
                else:
                    await client.set_desired_capacity(
                        AutoScalingGroupName=p.auto_scaling_group,
                        DesiredCapacity=p.desired,
                        HonorCooldown=False,
                    )
        detail = (
            f"desired {group['DesiredCapacity']} -> {p.desired}"
            + (f", min -> {update['MinSize']}" if "MinSize" in update else "")
            + (f", max -> {update['MaxSize']}" if "MaxSize" in update else "")
        )
        log.info(
            "asg_capacity_set",
            service=ctx.service,
            run_id=ctx.run_id,
            step=ctx.step,
            region=region,
            asg=p.auto_scaling_group,
            detail=detail,
        )
        return ExecuteOutcome(changed=True, detail=detail)

    async def verify(self, ctx: StepContext) -> None:
        p = typed_params(ctx, AutoscalingSetCapacity)
        region = ctx.region
        async with ctx.aws.client(SERVICE, region) as client:

            async def probe() -> tuple[bool, str]:
                group = await _describe(client, p.auto_scaling_group)
                if group is None:
                    raise ActionFailed(f"ASG {p.auto_scaling_group} vanished from {region}")
                desired = int(group["DesiredCapacity"])
                if desired < p.desired:
                    # Lowered behind our back (an operator, a scheduled action): not the
                    # capacity the runbook relies on. Above is fine: a scaling policy may
                    # well add to it.
                    return False, f"desired capacity is {desired}, below {p.desired}"
                if not p.wait_in_service:
                    return True, f"desired {desired}"
                in_service = _in_service(group)
                return in_service >= p.desired, f"{in_service} of {p.desired} InService"

            await poll_until(
                ctx,
                transient_as_pending(probe),
                what=f"ASG {p.auto_scaling_group} in {region} at {p.desired}",
            )

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        p = typed_params(params, AutoscalingSetCapacity)
        return (ApiDependency(SERVICE, "UpdateAutoScalingGroup", p.region or target_region,
                              "control"),)  # fmt: skip

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        p = typed_params(params, AutoscalingSetCapacity)
        arns = sorted(
            {
                partition_of(regions[0] if region == "*" else region).arn(
                    "autoscaling",
                    region,
                    account,
                    "autoScalingGroup:*:autoScalingGroupName/"
                    + fill_for_iam(p.auto_scaling_group, region, p),
                )
                for region in iam_regions(p, regions)
            }
        )
        return [
            # Describe* calls do not support resource-level permissions in Auto Scaling.
            IamStatement(
                actions=(
                    "autoscaling:DescribeAutoScalingGroups",
                    "autoscaling:DescribeInstanceRefreshes",
                )
            ),
            IamStatement(
                actions=("autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup"),
                resources=tuple(arns),
            ),
        ]
