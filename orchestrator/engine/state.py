"""Immutable inputs and outputs of the decision engine.

``ServiceState`` is what the store keeps per service; ``Decision`` is what ``decide()``
returns; :func:`apply_decision` and friends are the pure state transitions that the daemon
and the scenario simulator both use, so that the two can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from orchestrator.engine.vocabulary import RUN_ACTIONS, Action, Phase, Reason


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Initiator(StrEnum):
    POLICY = "policy"
    OPERATOR = "operator"


class Command(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    APPROVE = "approve"
    FAILOVER = "failover"
    SWITCHOVER = "switchover"
    FAILBACK = "failback"


class CommandSource(StrEnum):
    """Where an operator command came in (journaled with it)."""

    API = "api"  # an HTTP client of the API other than the CLI
    CLI = "cli"  # the `failoverd` command (through the API, or a drill on the store)
    MQTT = "mqtt"  # the command topic
    SCHEDULER = "scheduler"  # the daemon's own schedule (drills in the policy)


MOVE_HISTORY = 64

MOVE_COMMANDS = frozenset({Command.FAILOVER, Command.SWITCHOVER, Command.FAILBACK})


@dataclass(frozen=True, slots=True)
class OperatorCommand:
    """A command from an on-call engineer. ``force`` lets a failover target a region that is
    not healthy; nothing lets a command act while paused or without the leader lease.

    Who, why and where, journaled before the command takes effect: ``by`` is the
    authenticated principal (the API token's label; for MQTT the sender the broker's ACLs let
    speak; ``scheduler`` for the daemon's own schedule), ``user`` the name the client gave
    besides (the CLI sends its OS user; a claim, recorded, never trusted), ``source`` where
    the command came in. ``id`` names the command in the journal (the daemon makes one when
    empty); the decision it led to carries the same id. The engine ignores all five."""

    command: Command
    to: str | None = None
    force: bool = False
    by: str = "operator"
    reason: str = ""
    source: CommandSource = CommandSource.API
    user: str = ""
    id: str = ""


@dataclass(frozen=True, slots=True)
class LagReading:
    """Replication lag of the replica in a region, and when it was measured.
    ``seconds`` None means the source answered that it does not know."""

    seconds: float | None
    observed_at: float


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: str
    kind: Action  # failover, switchover or failback
    source: str
    target: str
    started_at: float
    initiated_by: Initiator
    status: RunStatus = RunStatus.RUNNING
    finished_at: float | None = None
    error: str = ""
    waiting_approval: bool = False


@dataclass(frozen=True, slots=True)
class Move:
    """A run's start, kept for the cooldown and max-failovers guards."""

    at: float
    kind: Action
    target: str


@dataclass(frozen=True, slots=True)
class ServiceState:
    service: str
    active_region: str
    paused: bool = False
    run: RunInfo | None = None  # the current run, or the last failed one until acknowledged
    moves: tuple[Move, ...] = ()
    last_move_finished_at: float | None = None
    detected_at: float | None = None  # when the active region was first seen down (RTO clock)

    @property
    def running(self) -> bool:
        return self.run is not None and self.run.status is RunStatus.RUNNING

    @property
    def failed(self) -> bool:
        return self.run is not None and self.run.status is RunStatus.FAILED


@dataclass(frozen=True, slots=True)
class Decision:
    """What the engine decided for one service at one moment, and why."""

    service: str
    at: float
    phase: Phase
    action: Action
    active_region: str
    target: str | None = None
    reasons: tuple[Reason, ...] = ()
    initiated_by: Initiator = Initiator.POLICY
    policy_version: str = ""
    detected_at: float | None = None
    rto_remaining: float | None = None
    notes: tuple[str, ...] = field(default=())  # human details: which guard, which values

    @property
    def starts_run(self) -> bool:
        return self.action in RUN_ACTIONS

    def key(self) -> tuple[Phase, Action, str | None, tuple[Reason, ...]]:
        """What must change for the decision to count as new (logged once per change)."""
        return (self.phase, self.action, self.target, self.reasons)


def apply_command(state: ServiceState, command: OperatorCommand) -> ServiceState:
    """State effects of pause/resume. ``resume`` also acknowledges a failed run."""
    if command.command is Command.PAUSE:
        return replace(state, paused=True)
    if command.command is Command.RESUME:
        run = None if state.failed else state.run
        return replace(state, paused=False, run=run)
    return state


def apply_decision(state: ServiceState, decision: Decision, run_id: str) -> ServiceState:
    """Record the decision's effects: the RTO clock, and the start of a run."""
    if not decision.starts_run or decision.target is None:
        if state.detected_at == decision.detected_at:
            return state  # the common tick: nothing changed, no copy
        return replace(state, detected_at=decision.detected_at)
    state = replace(state, detected_at=decision.detected_at)
    run = RunInfo(
        id=run_id,
        kind=decision.action,
        source=state.active_region,
        target=decision.target,
        started_at=decision.at,
        initiated_by=decision.initiated_by,
    )
    # Bounded history: enough for the max-failovers guard (count <= 20, alternating with
    # failbacks), small enough to store with every state write.
    moves = (*state.moves, Move(decision.at, decision.action, decision.target))
    return replace(state, run=run, moves=moves[-MOVE_HISTORY:])


def finish_run(state: ServiceState, at: float, ok: bool, error: str = "") -> ServiceState:
    """A run ended: on success the target is active; on failure the service stays ``failed``
    (with the old active region) until an operator acts."""
    run = state.run
    if run is None:
        return state
    if ok:
        return replace(
            state,
            active_region=run.target,
            run=None,
            last_move_finished_at=at,
            detected_at=None,
        )
    failed = replace(run, status=RunStatus.FAILED, finished_at=at, error=error)
    return replace(state, run=failed, last_move_finished_at=at)


def set_waiting_approval(state: ServiceState, waiting: bool) -> ServiceState:
    if state.run is None or state.run.waiting_approval == waiting:
        return state
    return replace(state, run=replace(state.run, waiting_approval=waiting))
