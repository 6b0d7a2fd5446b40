"""The runbook actions a policy may name, with the parameters each one takes.

The parameter models are what ``failoverd validate`` checks a step's ``params`` against, so a
typo in a runbook is caught when the policy loads, not in the middle of an outage. The
implementations live in ``orchestrator/actions/``; each registers under one of these names.
Strings may hold placeholders (see :data:`PLACEHOLDERS`), filled in when a run starts.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.policy.durations import Duration
from orchestrator.policy.regions import StepRegion

PLACEHOLDERS = ("target_region", "source_region", "primary_region", "service")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Why the action takes no `region` parameter: said when a step gives it one anyway.
    no_region: ClassVar[str] = "it calls no regional AWS API"


class Regional(_Params):
    """Parameters of an action on a regional AWS API: it acts in ``region``."""

    region: StepRegion | None = Field(
        default=None,
        description="Where the step acts: one of the policy's regions, or {source_region},"
        " {target_region} or {primary_region}. Default: the run's target region.",
    )


class Route53SetRecord(_Params):
    """UPSERT a record set and wait until Route 53 reports the change INSYNC."""

    no_region: ClassVar[str] = "Route 53 is global (its control plane is in us-east-1)"

    hosted_zone_id: str
    name: str
    type: Literal["A", "AAAA", "CNAME", "TXT"] = "CNAME"
    value: str = Field(description="Record value, e.g. the target region's endpoint.")
    ttl: int = Field(default=60, ge=0, le=86400)
    set_identifier: str | None = None
    weight: int | None = Field(default=None, ge=0, le=255)
    failover: Literal["PRIMARY", "SECONDARY"] | None = None
    health_check_id: str | None = None

    @model_validator(mode="after")
    def _routing_policy(self) -> Route53SetRecord:
        routed = self.weight is not None or self.failover is not None
        if self.weight is not None and self.failover is not None:
            raise ValueError("a record is weighted or failover, not both")
        if routed and self.set_identifier is None:
            raise ValueError("weighted and failover records need a set_identifier")
        if self.set_identifier is not None and not routed:
            raise ValueError("set_identifier is only for weighted or failover records")
        return self


class Route53SetHealthCheckInverted(_Params):
    """Move traffic through pre-created failover records by inverting a health check."""

    no_region: ClassVar[str] = "Route 53 is global (its control plane is in us-east-1)"

    health_check_id: str
    inverted: bool = True


class RdsPromoteReadReplica(_Params):
    """Promote a cross-region read replica to a standalone writer."""

    no_region: ClassVar[str] = (
        "the replica is in the target region; for another, give db_instance as an ARN"
        " (arn:aws:rds:{source_region}:...)"
    )

    db_instance: str = Field(description="The replica's identifier in the target region.")
    expected_source: str | None = Field(
        default=None, description="Refuse to promote a replica of any other source (ARN or id)."
    )


class AuroraGlobal(_Params):
    """Move the writer of an Aurora global database to the target region's cluster."""

    no_region: ClassVar[str] = "the region is the one in target_cluster_arn"

    global_cluster: str
    target_cluster_arn: str
    mode: Literal["auto", "switchover", "failover", "detach_and_promote"] = Field(
        default="auto",
        description="auto: switchover when both regions are healthy, else failover.",
    )


class AutoscalingSetCapacity(Regional):
    """Set an Auto Scaling group's capacity (and bounds) in the step's region."""

    auto_scaling_group: str
    desired: int = Field(ge=0)
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)
    wait_in_service: bool = True


class EcsSetDesiredCount(Regional):
    """Set an ECS service's desired count in the step's region and wait for its tasks."""

    cluster: str
    service: str
    desired: int = Field(ge=0)


class SnsPublish(_Params):
    """Publish to an SNS topic, in the topic's own region."""

    no_region: ClassVar[str] = (
        "SNS publishes in the topic's region, the one in topic_arn"
        " (arn:aws:sns:{source_region}:... for another)"
    )

    topic_arn: str
    subject: str | None = None
    message: str


class MqttPublish(_Params):
    topic: str
    payload: str
    retain: bool = False
    qos: Literal[0, 1, 2] = 1


class Webhook(_Params):
    """HTTP POST with an HMAC-SHA256 signature header; the secret comes from a file."""

    url: str
    secret_file: str | None = None
    body: dict[str, str] = Field(default_factory=dict)


REGION_SWITCH_PLAN_ARN = (
    r"^arn:aws[a-zA-Z-]*:arc-region-switch::[0-9]{12}:plan/"
    r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,30}[a-zA-Z0-9])?:[a-z0-9]{6}$"
)


class ArcRegionSwitch(_Params):
    """Execute an ARC Region switch plan and follow it to its end: its steps show as the
    step's progress, its manual approvals wait for `failoverd approve`."""

    no_region: ClassVar[str] = (
        "the calls go to Region switch in the run's target region (the one recovered into),"
        " with the plan's other region as the fallback; the plan's own target is target_region"
    )

    plan_arn: str = Field(
        pattern=REGION_SWITCH_PLAN_ARN,
        description="arn:aws:arc-region-switch::<account>:plan/<name>:<6 characters>",
    )
    action: Literal["activate", "deactivate"] = Field(
        default="activate",
        description="activate the target region, or deactivate the region being left"
        " (active/active plans).",
    )
    target_region: StepRegion | None = Field(
        default=None,
        description="The execution's targetRegion. Default: {target_region} to activate,"
        " {source_region} to deactivate.",
    )
    mode: Literal["auto", "graceful", "ungraceful"] = Field(
        default="auto",
        description="auto: ungraceful for a failover away from a region that is down,"
        " graceful for switchovers, failbacks and drills.",
    )
    comment: str = Field(
        default="", max_length=500, description="Added to the execution's comment."
    )
    poll_interval: Annotated[
        Duration, Field(gt=0, description="How often the execution is read while it runs.")
    ] = 5.0


class Approval(_Params):
    """Wait until an operator approves (API, CLI or MQTT); bounded by the step timeout."""

    message: str = "approve to continue"


class Wait(_Params):
    duration: Annotated[Duration, Field(description="How long to wait.")]


ACTION_PARAMS: dict[str, type[_Params]] = {
    "route53.set_record": Route53SetRecord,
    "route53.set_health_check_inverted": Route53SetHealthCheckInverted,
    "rds.promote_read_replica": RdsPromoteReadReplica,
    "aurora.global_failover": AuroraGlobal,
    "autoscaling.set_capacity": AutoscalingSetCapacity,
    "ecs.set_desired_count": EcsSetDesiredCount,
    "sns.publish": SnsPublish,
    "mqtt.publish": MqttPublish,
    "webhook": Webhook,
    "approval": Approval,
    "wait": Wait,
    "arc.region_switch": ArcRegionSwitch,
}
ACTION_NAMES = frozenset(ACTION_PARAMS)
APPROVAL_ACTION = "approval"
