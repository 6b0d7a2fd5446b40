"""The runbook actions a policy may name, with the parameters each one takes.

The parameter models are what ``failoverd validate`` checks a step's ``params`` against, so a
typo in a runbook is caught when the policy loads, not in the middle of an outage. The
implementations live in ``orchestrator/actions/``; each registers under one of these names.
Strings may hold placeholders (see :data:`PLACEHOLDERS`), filled in when a run starts.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.policy.durations import Duration
from orchestrator.policy.regions import (
    POLICY_REGIONS,
    REGION_PATTERN,
    REGION_PLACEHOLDERS,
    StepRegion,
)

Region = Annotated[str, Field(pattern=REGION_PATTERN)]

PLACEHOLDERS = ("target_region", "source_region", "primary_region", "service")
# SNS Publish (botocore's service model): a topic's MaximumMessageSize is at most 1 MiB.
MAX_SNS_MESSAGE_BYTES = 1_048_576
DEFAULT_SNS_MESSAGE_BYTES = 262_144


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


class _HealthCheckRef(_Params):
    """Which Route 53 health check: by its id, by region from a map of ids, or by its
    ``Name`` tag. Route 53 generates health-check ids (``abcdef11-2222-...``); a name is
    never an id, so a template such as ``catalog-{source_region}`` belongs in
    ``health_check_name`` (resolved through the tag, the portable way) or a per-region map
    in ``health_check_ids``."""

    health_check_id: str | None = Field(
        default=None, max_length=64, description="A health check id, as Route 53 generated it."
    )
    health_check_ids: dict[Region, str] | None = Field(
        default=None,
        description="Health check ids by region; `health_check_region` picks the entry.",
    )
    health_check_region: StepRegion | None = Field(
        default=None,
        description="Which entry of `health_check_ids`: a policy region or {source_region},"
        " {target_region}, {primary_region}.",
    )
    health_check_name: str | None = Field(
        default=None,
        max_length=255,
        description="The health check's `Name` tag (placeholders allowed, e.g."
        " catalog-{source_region}); exactly one health check must carry it.",
    )

    @model_validator(mode="after")
    def _one_reference(self, info: ValidationInfo) -> _HealthCheckRef:
        given = [
            name
            for name in ("health_check_id", "health_check_ids", "health_check_name")
            if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give one of {', '.join(given)}, not several")
        if self.health_check_id is not None and "{" in self.health_check_id:
            raise ValueError(
                f"health_check_id {self.health_check_id!r} holds a placeholder, but Route 53"
                " generates health-check ids: name the check with health_check_name (its Name"
                " tag) or list the ids per region in health_check_ids"
            )
        if (self.health_check_ids is None) != (self.health_check_region is None):
            raise ValueError("health_check_ids and health_check_region go together")
        regions = (info.context or {}).get(POLICY_REGIONS)
        if self.health_check_ids is not None and regions is not None:
            wanted = (
                list(regions)
                if self.health_check_region in REGION_PLACEHOLDERS
                else [self.health_check_region]
            )
            missing = [r for r in wanted if r not in self.health_check_ids]
            if missing:
                raise ValueError(
                    f"health_check_ids has no id for {', '.join(str(r) for r in missing)}"
                    f" (health_check_region {self.health_check_region} may name it)"
                )
        return self

    @property
    def names_health_check(self) -> bool:
        return any(
            v is not None
            for v in (self.health_check_id, self.health_check_ids, self.health_check_name)
        )


class AliasTarget(_Params):
    """An alias record's target: an AWS resource (a load balancer, CloudFront, API Gateway)
    or another record of the zone. Aliases may sit at the zone apex, where a CNAME may not."""

    dns_name: str = Field(
        description="The target's DNS name, e.g. my-lb-123.{target_region}.elb.amazonaws.com."
    )
    hosted_zone_id: str | dict[Region, str] = Field(
        description="The target's hosted zone id (a load balancer's CanonicalHostedZoneId),"
        " or one per target region."
    )
    evaluate_target_health: bool = Field(
        default=False, description="Answer only while the target is healthy."
    )

    @model_validator(mode="after")
    def _zone_for_every_region(self, info: ValidationInfo) -> AliasTarget:
        regions = (info.context or {}).get(POLICY_REGIONS)
        if isinstance(self.hosted_zone_id, dict) and regions is not None:
            missing = [r for r in regions if r not in self.hosted_zone_id]
            if missing:
                raise ValueError(f"hosted_zone_id has no entry for {', '.join(missing)}")
        return self

    def zone_for(self, region: str) -> str:
        if isinstance(self.hosted_zone_id, str):
            return self.hosted_zone_id
        if region not in self.hosted_zone_id:
            raise ValueError(f"alias hosted_zone_id has no entry for {region}")
        return self.hosted_zone_id[region]


class Route53SetRecord(_HealthCheckRef):
    """UPSERT a record set and wait until Route 53 reports the change INSYNC."""

    no_region: ClassVar[str] = "Route 53 is global (its control plane is in us-east-1)"

    hosted_zone_id: str
    name: str
    type: Literal["A", "AAAA", "CNAME", "TXT"] = "CNAME"
    value: str | None = Field(
        default=None, description="Record value, e.g. the target region's endpoint."
    )
    alias: AliasTarget | None = Field(
        default=None,
        description="Instead of `value`: an alias (type A or AAAA), e.g. a load balancer at"
        " the zone apex.",
    )
    ttl: int = Field(default=60, ge=0, le=2147483647)
    set_identifier: str | None = Field(default=None, min_length=1, max_length=128)
    weight: int | None = Field(default=None, ge=0, le=255)
    failover: Literal["PRIMARY", "SECONDARY"] | None = None

    @model_validator(mode="after")
    def _routing_policy(self) -> Route53SetRecord:
        routed = self.weight is not None or self.failover is not None
        if self.weight is not None and self.failover is not None:
            raise ValueError("a record is weighted or failover, not both")
        if routed and self.set_identifier is None:
            raise ValueError("weighted and failover records need a set_identifier")
        if self.set_identifier is not None and not routed:
            raise ValueError("set_identifier is only for weighted or failover records")
        if (self.value is None) == (self.alias is None):
            raise ValueError("give the record a value or an alias (one of them)")
        if self.alias is not None and self.type not in ("A", "AAAA"):
            raise ValueError("an alias record here is of type A or AAAA")
        return self


class Route53SetHealthCheckInverted(_HealthCheckRef):
    """Move traffic through pre-created failover records by inverting a health check."""

    no_region: ClassVar[str] = "Route 53 is global (its control plane is in us-east-1)"

    inverted: bool = True

    @model_validator(mode="after")
    def _names_a_check(self) -> Route53SetHealthCheckInverted:
        if not self.names_health_check:
            raise ValueError(
                "name the health check: health_check_id, health_check_ids with"
                " health_check_region, or health_check_name"
            )
        return self


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
        description="auto: a switchover, failback or drill switches over (no data loss); a"
        " failover with the source region down or unknown fails over with AllowDataLoss, one"
        " away from a region that still answers switches over. failover in a planned move"
        " switches over too.",
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
    scalable_target: Literal["refuse", "adjust"] = Field(
        default="refuse",
        description="When Service Auto Scaling's scalable target would undo `desired` (its"
        " MinCapacity above it, or MaxCapacity below): `refuse` (readiness says so, the step"
        " fails before changing anything) or `adjust` (its bounds are moved to include"
        " `desired` first; a fence to 0 sets both to 0, so nothing scales the service out).",
    )


class SnsPublish(_Params):
    """Publish to an SNS topic, in the topic's own region."""

    no_region: ClassVar[str] = (
        "SNS publishes in the topic's region, the one in topic_arn"
        " (arn:aws:sns:{source_region}:... for another)"
    )

    topic_arn: str
    subject: str | None = Field(
        default=None,
        max_length=99,
        description="E-mail subject line: UTF-8, no line breaks or control characters, under"
        " 100 characters (SNS Publish).",
    )
    message: str = Field(
        description="UTF-8 text; at most the topic's MaximumMessageSize (256 KiB unless the"
        " topic raises it, at most 1 MiB)."
    )
    kms_key: str | None = Field(
        default=None,
        description="The KMS key (ARN) the topic is encrypted with, if it is: iam-policy grants"
        " kms:GenerateDataKey* and kms:Decrypt on exactly it (without: on any key, through"
        " SNS only); readiness checks it is the topic's and enabled.",
    )

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("a subject has no line breaks or control characters (SNS Publish)")
        return value

    @field_validator("message")
    @classmethod
    def _message(cls, value: str) -> str:
        if len(value.encode("utf-8")) > MAX_SNS_MESSAGE_BYTES:
            raise ValueError(f"an SNS message is at most {MAX_SNS_MESSAGE_BYTES} bytes")
        return value


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


# ARC routing controls (route53-recovery-cluster). ARN shapes from the Service Authorization
# Reference; limits from ARC's quotas (10 routing controls per UpdateRoutingControlStates).
ROUTING_CONTROL_ARN = (
    r"^arn:aws[a-z-]*:route53-recovery-control::\d{12}:controlpanel/[A-Za-z0-9]+"
    r"/routingcontrol/[A-Za-z0-9]+$"
)
SAFETY_RULE_ARN = (
    r"^arn:aws[a-z-]*:route53-recovery-control::\d{12}:controlpanel/[A-Za-z0-9]+"
    r"/safetyrule/[A-Za-z0-9]+$"
)
MAX_ROUTING_CONTROLS_PER_UPDATE = 10
_ROUTING_CONTROL = re.compile(ROUTING_CONTROL_ARN)
_RUN_PLACEHOLDERS = ("{target_region}", "{source_region}", "{primary_region}")
RoutingControlState = Literal["On", "Off"]


def _state(value: Any) -> Any:
    # YAML 1.1 (PyYAML) reads a bare On/Off as true/false: take both spellings.
    if isinstance(value, bool):
        return "On" if value else "Off"
    if isinstance(value, str) and value.lower() in ("on", "off"):
        return value.capitalize()
    return value


def _cluster_endpoint(url: str) -> str:
    if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", url):
        raise ValueError(
            f"a cluster endpoint is an https:// URL as DescribeCluster lists it, got {url!r}"
        )
    return url


class ArcSetRoutingControls(_Params):
    """Set ARC routing controls (On/Off) in one `UpdateRoutingControlStates` call on the
    cluster's data plane, trying its regional endpoints in rotation; verify reads them back.
    The flip that needs no control plane: routing-control health checks follow the states,
    and pre-provisioned failover records follow the health checks."""

    no_region: ClassVar[str] = (
        "ARC's cluster answers on five regional endpoints (cluster_endpoints), tried in turn"
    )

    cluster_endpoints: dict[Annotated[str, Field(pattern=REGION_PATTERN)], str] | None = Field(
        default=None,
        description="The cluster's endpoints by region, as DescribeCluster lists them"
        " (https://host.../v1). Default: the settings' arc.cluster_endpoints.",
    )
    routing_controls: dict[str, Annotated[str, Field(pattern=ROUTING_CONTROL_ARN)]] = Field(
        default_factory=dict,
        description="Names for routing-control ARNs, usually one per region, so that `states`"
        " can say {target_region} and {source_region}.",
    )
    states: dict[str, Annotated[RoutingControlState, BeforeValidator(_state)]] = Field(
        min_length=1,
        max_length=MAX_ROUTING_CONTROLS_PER_UPDATE,
        description="What to set: a routing-control ARN, a key of routing_controls, or"
        " {target_region} / {source_region} / {primary_region} naming one -> On or Off.",
    )
    safety_rules_to_override: list[Annotated[str, Field(pattern=SAFETY_RULE_ARN)]] = Field(
        default_factory=list,
        description="Safety rules to bypass (break glass); refused otherwise.",
    )
    connect_timeout: Duration = Field(
        default=1.0,
        gt=0,
        le=10.0,
        description="Per endpoint: an endpoint not answering costs this.",
    )
    read_timeout: Duration = Field(
        default=2.0, gt=0, le=30.0, description="Per endpoint: waiting for its answer."
    )

    @field_validator("cluster_endpoints")
    @classmethod
    def _endpoints(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("list the cluster's endpoints, or leave it out to use the settings'")
        return {region: _cluster_endpoint(url) for region, url in value.items()}

    @model_validator(mode="after")
    def _names(self, info: ValidationInfo) -> ArcSetRoutingControls:
        regions = (info.context or {}).get(POLICY_REGIONS)
        for key in self.states:
            if key in self.routing_controls or _ROUTING_CONTROL.match(key):
                continue
            if key in _RUN_PLACEHOLDERS:
                missing = [r for r in regions or () if r not in self.routing_controls]
                if missing:
                    raise ValueError(
                        f"states names {key}, but routing_controls has no entry for"
                        f" {', '.join(missing)}"
                    )
                continue
            raise ValueError(
                f"states key {key!r} is neither a routing-control ARN nor a key of"
                f" routing_controls ({', '.join(self.routing_controls) or 'empty'}), nor one of"
                f" {', '.join(_RUN_PLACEHOLDERS)}"
            )
        return self

    def wanted(self) -> dict[str, str]:
        """Routing-control ARN -> state, once the run's placeholders are filled in.
        ValueError when a key still names nothing (an unfilled placeholder)."""
        out: dict[str, str] = {}
        for key, state in self.states.items():
            arn = self.routing_controls.get(key, key)
            if not _ROUTING_CONTROL.match(arn):
                raise ValueError(f"states key {key!r} names no routing control")
            if arn in out and out[arn] != state:
                raise ValueError(f"routing control {arn} is set both On and Off")
            out[arn] = state
        return out


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
    "arc.set_routing_controls": ArcSetRoutingControls,
    "arc.region_switch": ArcRegionSwitch,
}
ACTION_NAMES = frozenset(ACTION_PARAMS)
APPROVAL_ACTION = "approval"
