"""The runbook actions a policy may name, with the parameters each one takes.

The parameter models are what ``failoverd validate`` checks a step's ``params`` against, so a
typo in a runbook is caught when the policy loads, not in the middle of an outage. The
implementations live in ``orchestrator/actions/``; each registers under one of these names.
Strings may hold placeholders (see :data:`PLACEHOLDERS`), filled in when a run starts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.policy.durations import Duration

PLACEHOLDERS = ("target_region", "source_region", "primary_region", "service")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Route53SetRecord(_Params):
    """UPSERT a record set and wait until Route 53 reports the change INSYNC."""

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

    health_check_id: str
    inverted: bool = True


class RdsPromoteReadReplica(_Params):
    """Promote a cross-region read replica to a standalone writer."""

    db_instance: str = Field(description="The replica's identifier in the target region.")
    expected_source: str | None = Field(
        default=None, description="Refuse to promote a replica of any other source (ARN or id)."
    )


class AuroraGlobal(_Params):
    """Move the writer of an Aurora global database to the target region's cluster."""

    global_cluster: str
    target_cluster_arn: str
    mode: Literal["auto", "switchover", "failover", "detach_and_promote"] = Field(
        default="auto",
        description="auto: switchover when both regions are healthy, else failover.",
    )


class AutoscalingSetCapacity(_Params):
    auto_scaling_group: str
    desired: int = Field(ge=0)
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)
    wait_in_service: bool = True


class EcsSetDesiredCount(_Params):
    cluster: str
    service: str
    desired: int = Field(ge=0)


class SnsPublish(_Params):
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
}
ACTION_NAMES = frozenset(ACTION_PARAMS)
APPROVAL_ACTION = "approval"
