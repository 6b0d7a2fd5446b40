"""The policy language: one pydantic model tree, the single source of truth.

Policy files, the JSON Schema (``failoverd schema``) and the authoring reference in the
README are all generated from, or checked against, these classes. Field-level rules live in
the fields; rules that span fields (cycles, quorum vs vantage points, targets per region)
live in :mod:`orchestrator.policy.checks`, which reports every problem with its path.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.policy.access import AwsRole
from orchestrator.policy.actions import ACTION_NAMES
from orchestrator.policy.durations import Duration
from orchestrator.policy.regions import REGION_PATTERN as REGION_PATTERN  # re-exported

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
LOCAL_VANTAGE = "local"
AWS_HEALTH_VANTAGE = "aws_health"
CLOUDWATCH_VANTAGE = "cloudwatch"

Name = Annotated[
    str, Field(pattern=NAME_PATTERN, description="lower-case letters, digits, - and _")
]
Region = Annotated[str, Field(pattern=REGION_PATTERN, description="an AWS region, e.g. us-east-1")]


class Strict(BaseModel):
    """Base for every policy model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Mode(StrEnum):
    AUTOMATIC = "automatic"
    ADVISORY = "advisory"


class LagPolicy(StrEnum):
    WAIT = "wait"
    REQUIRE_APPROVAL = "require_approval"
    PROCEED = "proceed"


class FailbackMode(StrEnum):
    MANUAL = "manual"
    AUTOMATIC = "automatic"


class OnFailure(StrEnum):
    ABORT = "abort"
    CONTINUE = "continue"


# ---------------------------------------------------------------------------------------
# Signals


class _SignalBase(Strict):
    name: Name = Field(description="Unique within the policy; used in metrics and evidence.")
    vantage: list[Name] | None = Field(
        default=None,
        description="Which vantage points run this probe (default: all of the policy's).",
    )
    timeout: Duration | None = Field(
        default=None, gt=0, description="Per-probe timeout (default: detection.timeout)."
    )

    def region_target(self, region: str) -> str:
        """The probed target in ``region``: a per-region entry or the ``{region}`` template."""
        targets: dict[str, str] = getattr(self, "targets", None) or {}
        if region in targets:
            return targets[region]
        template: str | None = getattr(self, "target", None)
        return template.replace("{region}", region) if template else ""


class _Targeted(_SignalBase):
    target: str | None = Field(
        default=None,
        description="One target for every region, with {region} replaced by the region name.",
    )
    targets: dict[Region, str] | None = Field(
        default=None, description="The target in each region (overrides `target`)."
    )


class HttpSignal(_Targeted):
    """An HTTP(S) GET from each vantage point; fails on connect/TLS errors, status or body."""

    type: Literal["http"]
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default=[200], min_length=1, description="Status codes that count as success."
    )
    body_contains: str | None = Field(default=None, description="Substring the body must hold.")
    body_regex: str | None = Field(default=None, description="Regex the body must match.")
    tls_verify: bool = Field(default=True, description="Verify the server certificate.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")

    @field_validator("body_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            import re

            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class TcpSignal(_Targeted):
    """A TCP connect to ``host:port``."""

    type: Literal["tcp"]


class DnsSignal(_Targeted):
    """A DNS query for the target name; fails when the answers do not match."""

    type: Literal["dns"]
    record_type: Literal["A", "AAAA", "CNAME", "TXT", "MX", "NS"] = "A"
    expect: list[str] = Field(
        default_factory=list, description="Answers that must all be present (empty: any answer)."
    )
    resolver: str | None = Field(default=None, description="Resolver address (default: system).")


class TlsSignal(_Targeted):
    """A TLS handshake with ``host:port``; fails when the certificate expires too soon."""

    type: Literal["tls"]
    min_days_to_expiry: int = Field(default=14, ge=0)
    tls_verify: bool = True


class AwsHealthSignal(_SignalBase):
    """Open AWS Health ``issue`` events for the region; counts as one vantage point
    (``aws_health``): failing while a matching event is open, passing when the API answers
    with none, unknown while the API is unavailable."""

    type: Literal["aws_health"]
    services: list[str] = Field(min_length=1, description="AWS service codes, e.g. EC2, RDS.")
    categories: list[Literal["issue", "scheduledChange", "accountNotification"]] = ["issue"]
    resources: list[str] = Field(
        default_factory=list, description="Affected entity ARNs/ids to match (empty: any)."
    )
    poll_interval: Duration = Field(default=60.0, gt=0, description="How often the API is polled.")
    aws: AwsRole | None = Field(
        default=None,
        description="The IAM role this signal reads as (default: the policy's `aws`).",
    )


class CloudWatchAlarmSignal(_SignalBase):
    """CloudWatch alarms per region; counts as one vantage point (``cloudwatch``): failing
    while any named alarm is in ALARM, passing when all are OK, unknown otherwise."""

    type: Literal["cloudwatch_alarm"]
    alarms: dict[Region, list[str]] = Field(description="Alarm names in each region.")
    aws: AwsRole | None = Field(
        default=None,
        description="The IAM role this signal reads as (default: the policy's `aws`).",
    )


Signal = Annotated[
    HttpSignal | TcpSignal | DnsSignal | TlsSignal | AwsHealthSignal | CloudWatchAlarmSignal,
    Field(discriminator="type"),
]
PROBE_TYPES = frozenset({"http", "tcp", "dns", "tls"})


# ---------------------------------------------------------------------------------------
# Detection, replication, guards


class Detection(Strict):
    """How observations turn into a verdict. A (signal, vantage) is *failing* when the last
    ``consecutive_failures`` observations failed, or (when ``failure_ratio`` is set) when at
    least that share of the observations in ``window`` failed; it recovers only after
    ``recovery_successes`` successes in a row and the ratio rule no longer holding."""

    interval: Duration = Field(default=10.0, gt=0, description="How often each probe runs.")
    timeout: Duration = Field(default=5.0, gt=0, description="Default per-probe timeout.")
    consecutive_failures: int = Field(
        default=3, ge=1, le=100, description="Failures in a row that make a probe failing."
    )
    failure_ratio: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Share of failures in the window that makes a probe failing (optional).",
    )
    window: Duration = Field(default=120.0, gt=0, description="Sliding window for failure_ratio.")
    min_samples: int = Field(
        default=3, ge=1, description="Observations in the window before the ratio rule applies."
    )
    recovery_successes: int | None = Field(
        default=None,
        ge=1,
        description="Successes in a row to recover (default: consecutive_failures).",
    )
    quorum: int = Field(default=2, ge=1, description="Distinct vantage points that must agree.")
    staleness: Duration = Field(
        default=60.0,
        gt=0,
        description="After this long without data a vantage point's view is unknown.",
    )

    @property
    def recovery(self) -> int:
        return self.recovery_successes or self.consecutive_failures


METRIC_PERIOD = 60.0  # RDS and Aurora publish their lag metrics once a minute
DELAY_HELP = (
    "How late the metric's datapoints arrive in CloudWatch after their period (default 1m;"
    " AWS-published metrics commonly arrive a minute or two late)."
)


class _CloudWatchLag(Strict):
    """A lag read from CloudWatch: a datapoint is stamped with the START of its period and
    arrives ``delay`` after the period ENDS, so a fresh reading is up to two periods plus
    the delay old (``replication.max_age`` must allow that; validate checks it)."""

    delay: Duration = Field(default=60.0, ge=0, description=DELAY_HELP)

    @property
    def period(self) -> float:
        return METRIC_PERIOD


class RdsReplicaLag(_CloudWatchLag):
    """RDS `ReplicaLag` (CloudWatch, AWS/RDS) of a cross-region read replica."""

    type: Literal["rds_replica_lag"]
    db_instance: str = Field(description="The read replica's DB instance identifier.")


class AuroraGlobalLag(_CloudWatchLag):
    """Aurora `AuroraGlobalDBRPOLag` of a secondary cluster in a global database."""

    type: Literal["aurora_global_rpo_lag"]
    db_cluster: str = Field(description="The secondary DB cluster identifier.")


class CloudWatchMetricLag(_CloudWatchLag):
    """Any CloudWatch metric that measures replication lag."""

    type: Literal["cloudwatch_metric"]
    namespace: str
    metric_name: str
    dimensions: dict[str, str] = Field(default_factory=dict)
    statistic: Literal["Average", "Maximum", "Minimum", "Sum"] = "Maximum"
    unit_seconds: float = Field(default=1.0, gt=0, description="Seconds per unit of the metric.")
    metric_period: Duration = Field(
        default=METRIC_PERIOD,
        alias="period",
        description="The period the metric is read at: 1s, 5s, 10s, 20s, 30s (high-resolution"
        " metrics) or a multiple of 1m (what GetMetricData accepts).",
    )

    @field_validator("metric_period")
    @classmethod
    def _get_metric_data_period(cls, value: float) -> float:
        if not (value in (1, 5, 10, 20, 30) or (value >= 60 and value % 60 == 0)):
            raise ValueError("a GetMetricData period is 1s, 5s, 10s, 20s, 30s or a multiple of 1m")
        return value

    @property
    def period(self) -> float:
        return float(self.metric_period)


LagSource = Annotated[
    RdsReplicaLag | AuroraGlobalLag | CloudWatchMetricLag, Field(discriminator="type")
]


class Replication(Strict):
    """Where replication lag is read (in the standby region) to hold it against the RPO."""

    sources: dict[Region, LagSource] = Field(
        description="The lag source of the replica in each standby region."
    )
    max_age: Duration = Field(
        default=300.0,
        gt=0,
        description="A reading older than this is unknown lag. At least two of the metric's"
        " periods plus its delay (a datapoint is stamped at the start of its period and"
        " arrives late); add the interval to never read unknown between reads.",
    )
    interval: Duration = Field(default=60.0, gt=0, description="How often lag is read.")
    aws: AwsRole | None = Field(
        default=None,
        description="The IAM role lag metrics are read as (default: the policy's `aws`).",
    )


class MaxFailovers(Strict):
    """At most ``count`` failovers (automatic or operator) start within ``window``."""

    count: int = Field(ge=1, le=20, description="Failovers allowed in the window.")
    window: Duration = Field(description="The sliding window.")


class Failback(Strict):
    """Moving back to the primary once it has recovered."""

    mode: FailbackMode = Field(
        default=FailbackMode.MANUAL,
        description="manual: only an operator fails back; automatic: after stable_period.",
    )
    stable_period: Duration = Field(
        default=1800.0, description="Primary healthy this long before an automatic failback."
    )


class Guards(Strict):
    cooldown: Duration = Field(default=1800.0, description="No automatic move this long after one.")
    max_failovers: MaxFailovers = Field(
        default=MaxFailovers(count=2, window=86400.0),
        description="Limit on failovers per sliding window (default 2 per 1d).",
    )
    require_healthy_target: bool = Field(
        default=True,
        description="Fail over only to a healthy region. When false, an unknown region may be"
        " chosen if no healthy one exists (never a down or degraded one).",
    )
    on_lag_above_rpo: LagPolicy = Field(
        default=LagPolicy.WAIT,
        description="When the target's lag is above the RPO: wait (blocked), require_approval,"
        " or proceed (accept the data loss).",
    )
    on_lag_unknown: LagPolicy = Field(
        default=LagPolicy.REQUIRE_APPROVAL,
        description="When the target's lag is unknown or older than replication.max_age.",
    )
    require_approval: bool = Field(
        default=False, description="Always wait for an operator's approval before failing over."
    )
    failback: Failback = Field(default=Failback(), description="Failback to the primary.")
    data_plane_only: bool = Field(
        default=False,
        description="Static stability: a failover step that needs the region being left or"
        " a global control plane (Route 53's API, IAM, global STS, CloudFront, Organizations,"
        " all in us-east-1) is an error unless it has on_failure: continue.",
    )


# ---------------------------------------------------------------------------------------
# Runbooks


class Step(Strict):
    """One runbook step: an action with its parameters, run once its `after` steps end."""

    name: Name
    action: str = Field(description="One of the known actions, e.g. route53.set_record.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Action parameters; strings may use {target_region}, {source_region},"
        " {primary_region} and {service}.",
    )
    after: list[Name] = Field(default_factory=list, description="Steps that must finish first.")
    timeout: Duration = Field(default=300.0, gt=0, description="Per attempt.")
    retries: int = Field(
        default=0, ge=0, le=20, description="Extra attempts on retryable errors (with backoff)."
    )
    on_failure: OnFailure = Field(
        default=OnFailure.ABORT,
        description="abort: the run fails (phase failed); continue: dependents still run.",
    )
    aws: AwsRole | None = Field(
        default=None,
        description="The IAM role this step acts as (default: the policy's `aws`).",
    )

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        if value not in ACTION_NAMES:
            raise ValueError(
                f"unknown action {value!r}; expected one of: {', '.join(sorted(ACTION_NAMES))}"
            )
        return value


class Runbooks(Strict):
    """Named lists of steps; each list is a DAG through the steps' `after`."""

    failover: list[Step] = Field(min_length=1, description="Run to move to a standby region.")
    failback: list[Step] | None = Field(
        default=None, description="Run to move back to the primary (default: the failover one)."
    )
    switchover: list[Step] | None = Field(
        default=None, description="Planned move with both regions healthy (default: failover)."
    )

    def for_kind(self, kind: str) -> list[Step]:
        if kind == "failback" and self.failback is not None:
            return self.failback
        if kind == "switchover" and self.switchover is not None:
            return self.switchover
        return self.failover


# ---------------------------------------------------------------------------------------
# Drills (game days)


class DrillMode(StrEnum):
    DRY_RUN = "dry-run"
    SWITCHOVER = "switchover"


class DrillSpec(Strict):
    """One scheduled drill of a policy: ``{cron: "0 10 * * TUE", mode: dry-run}``."""

    cron: str = Field(description="Five-field crontab expression, e.g. '0 10 * * TUE'.")
    mode: DrillMode = Field(default=DrillMode.DRY_RUN, description="dry-run or switchover.")
    hold: Duration = Field(default=300.0, gt=0, description="switchover: time on the standby.")
    timezone: str = Field(default="UTC", description="Time zone of the cron expression.")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        return value

    def trigger(self) -> Any:
        """The apscheduler CronTrigger (raises ValueError for an unknown time zone)."""
        try:
            return CronTrigger.from_crontab(self.cron, timezone=self.timezone)
        except Exception as exc:  # pytz/zoneinfo raise their own types for a bad zone
            raise ValueError(f"drill {self.cron!r}: time zone {self.timezone!r}: {exc}") from None


# ---------------------------------------------------------------------------------------
# The policy


class Policy(Strict):
    """One service's failover policy."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="failoverd policy",
        json_schema_extra={"$comment": "Generated by `failoverd schema`; do not edit."},
    )

    service: Name = Field(description="The service this policy protects.")
    description: str = Field(default="", description="Free text for humans.")
    mode: Mode = Field(
        default=Mode.AUTOMATIC, description="advisory: recommend, never start a run by itself."
    )
    regions: list[Region] = Field(
        min_length=2, description="Regions in priority order; the first is the primary."
    )
    rto: Duration = Field(description="Recovery time objective: detection to traffic moved.")
    rpo: Duration = Field(description="Recovery point objective: acceptable replication lag.")
    vantage_points: list[Name] = Field(
        default=[LOCAL_VANTAGE],
        min_length=1,
        description="Observers running the probes: `local` (the daemon) and agent ids.",
    )
    detection: Detection = Field(
        default=Detection(), description="How observations become region verdicts."
    )
    signals: list[Signal] = Field(
        min_length=1, description="What is observed in every region, and how."
    )
    replication: Replication | None = Field(
        default=None, description="Replication lag sources, held against the RPO."
    )
    aws: AwsRole | None = Field(
        default=None,
        description="The IAM role (in the workload account) every AWS call of this policy is"
        " made as, unless a step or signal names its own; default: the daemon's identity.",
    )
    guards: Guards = Field(default=Guards(), description="What may stop or delay a move.")
    runbooks: Runbooks = Field(description="The steps of a failover, failback, switchover.")
    drills: list[DrillSpec] = Field(
        default_factory=list,
        description="Scheduled game days, e.g. {cron: '0 10 * * TUE', mode: dry-run}; the"
        " daemon runs them only while every region is healthy and nothing else runs.",
    )

    @property
    def primary(self) -> str:
        return self.regions[0]

    def role(self, own: AwsRole | None = None) -> AwsRole | None:
        """The role a step or signal acts as: its own ``aws``, else the policy's."""
        return own or self.aws
