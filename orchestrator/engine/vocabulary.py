"""The engine's words: verdicts, phases, actions and reason codes.

Reason codes and phases are part of the scenario contract (SCENARIOS.md): codes may be
added, never renamed.
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"
    UNKNOWN = "unknown"


class View(StrEnum):
    """What one vantage point (or one signal from one vantage point) sees of a region."""

    PASSING = "passing"
    FAILING = "failing"
    UNKNOWN = "unknown"


class Phase(StrEnum):
    STEADY = "steady"
    SUSPECT = "suspect"
    BLOCKED = "blocked"
    AWAITING_APPROVAL = "awaiting_approval"
    FAILING_OVER = "failing_over"
    FAILED = "failed"
    PAUSED = "paused"


class Action(StrEnum):
    NONE = "none"
    FAILOVER = "failover"
    SWITCHOVER = "switchover"
    FAILBACK = "failback"
    AWAIT_APPROVAL = "await_approval"
    RECOMMEND = "recommend"  # advisory mode: what a human should do


RUN_ACTIONS = frozenset({Action.FAILOVER, Action.SWITCHOVER, Action.FAILBACK})


class Reason(StrEnum):
    # The contract's codes (SCENARIOS.md).
    ACTIVE_DOWN = "active_down"
    NO_QUORUM = "no_quorum"
    STALE_DATA = "stale_data"
    STANDBY_UNHEALTHY = "standby_unhealthy"
    NO_HEALTHY_TARGET = "no_healthy_target"
    RPO_EXCEEDED = "rpo_exceeded"
    LAG_UNKNOWN = "lag_unknown"
    COOLDOWN = "cooldown"
    MAX_FAILOVERS = "max_failovers"
    ALL_REGIONS_DOWN = "all_regions_down"
    PAUSED = "paused"
    NOT_LEADER = "not_leader"
    APPROVAL_REQUIRED = "approval_required"
    STEP_FAILED = "step_failed"
    HEALTH_API_UNAVAILABLE = "health_api_unavailable"
    # Added by failoverd.
    ADVISORY_MODE = "advisory_mode"
    RUN_IN_PROGRESS = "run_in_progress"
    OPERATOR_COMMAND = "operator_command"
    OPERATOR_REFUSED = "operator_refused"
    FORCED = "forced"
    ALREADY_ACTIVE = "already_active"
    PRIMARY_RECOVERED = "primary_recovered"
    ACTIVE_UNKNOWN = "active_unknown"


REASON_TEXT: dict[Reason, str] = {
    Reason.ACTIVE_DOWN: "the active region is down (a quorum of vantage points sees it failing)",
    Reason.NO_QUORUM: "some vantage points see the active region failing, fewer than the quorum",
    Reason.STALE_DATA: "some vantage points have sent nothing recent; their view is unknown",
    Reason.STANDBY_UNHEALTHY: "the preferred standby region is not healthy",
    Reason.NO_HEALTHY_TARGET: "no region qualifies as a failover target",
    Reason.RPO_EXCEEDED: "replication lag to the target is above the RPO",
    Reason.LAG_UNKNOWN: "replication lag to the target is unknown or too old",
    Reason.COOLDOWN: "a recent move is still inside the cooldown",
    Reason.MAX_FAILOVERS: "the maximum number of failovers in the window is reached",
    Reason.ALL_REGIONS_DOWN: (
        "every region looks down or unknown at once: the observer is the likely casualty,"
        " so nothing is done"
    ),
    Reason.PAUSED: "automation is paused by an operator",
    Reason.NOT_LEADER: "this instance does not hold the leader lease, so it takes no action",
    Reason.APPROVAL_REQUIRED: "an operator must approve before the run starts or continues",
    Reason.STEP_FAILED: "the last run stopped on a failed step; an operator must look",
    Reason.HEALTH_API_UNAVAILABLE: "the AWS Health API is not answering; its view is unknown",
    Reason.ADVISORY_MODE: "the policy is advisory: failoverd recommends, a human acts",
    Reason.RUN_IN_PROGRESS: "a run is in progress",
    Reason.OPERATOR_COMMAND: "started by an operator command",
    Reason.OPERATOR_REFUSED: "the operator command was refused",
    Reason.FORCED: "the operator forced a target that is not healthy",
    Reason.ALREADY_ACTIVE: "the requested region is already active",
    Reason.PRIMARY_RECOVERED: "the primary has been healthy for the stable period",
    Reason.ACTIVE_UNKNOWN: "the active region's state is unknown (no fresh data)",
}
