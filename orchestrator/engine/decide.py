"""``decide()``: the one pure function between what failoverd sees and what it does.

No I/O, no clock reads, no randomness: the daemon and the scenario simulator call this very
function with the same kinds of inputs, and property tests hold its invariants:

* never a target whose verdict is not healthy, unless an operator forces it (or the policy
  allows an *unknown* target with ``require_healthy_target: false``);
* nothing starts while paused, without the leader lease, or while a run is in progress;
* never more failovers in ``guards.max_failovers.window`` than ``count``;
* never a target whose replication lag is above the RPO (or unknown, or too old) while a
  healthy region within it exists, unless an operator names the target;
* the cooldown counts from the last *automatic* move: an operator's move never starts one;
* the same input gives the same output.

Order of judgement: a run in progress, then pause, then an unacknowledged failed run, then an
operator's move command, then the automatic rules (failover when the active region is down,
failback when the policy allows it). Every guard that holds is reported, not only the first,
so that an on-call engineer sees everything standing in the way at once.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.engine.healthbook import RegionVerdict
from orchestrator.engine.state import (
    MOVE_COMMANDS,
    Command,
    Decision,
    Initiator,
    LagReading,
    OperatorCommand,
    ServiceState,
)
from orchestrator.engine.vocabulary import Action, Phase, Reason, Verdict
from orchestrator.policy.durations import format_duration
from orchestrator.policy.models import FailbackMode, LagPolicy, Mode, Policy

_UNKNOWN = Verdict.UNKNOWN
# Moves away from the primary: what max_failovers limits (failbacks are not counted).
_AWAY = frozenset({Action.FAILOVER, Action.SWITCHOVER})


def decide(
    policy: Policy,
    state: ServiceState,
    verdicts: Mapping[str, RegionVerdict],
    lag: Mapping[str, LagReading],
    now: float,
    operator: OperatorCommand | None = None,
    *,
    leader: bool = True,
    policy_version: str = "",
) -> Decision:
    ctx = _Context(policy, state, verdicts, lag, now, leader, policy_version)
    return ctx.decide(operator)


# Half a millisecond: deadlines are sums of millisecond times and durations, exact to far less.
_EPSILON = 0.0005


def next_change(
    policy: Policy,
    state: ServiceState,
    verdicts: Mapping[str, RegionVerdict],
    lag: Mapping[str, LagReading],
    now: float,
) -> float | None:
    """The earliest moment at or after ``now`` at which :func:`decide` may answer differently
    with the very same state, verdicts and lag readings: a guard whose time runs out (the
    cooldown, a move leaving the max-failovers window, a lag reading growing too old, the
    primary's stable period before an automatic failback). None when nothing of the kind is
    pending. The scenario simulator skips the ticks before it (the health book's
    :meth:`~orchestrator.engine.healthbook.HealthBook.stale_times` is the other half); so
    every comparison of ``now`` in this module must be listed here, and the simulator's
    equivalence test (every tick against skipping) holds the two together."""
    guards = policy.guards
    times: list[float] = []
    if state.last_move_finished_at is not None:
        times.append(state.last_move_finished_at + guards.cooldown)
    window = guards.max_failovers.window
    times.extend(m.at + window for m in state.moves)
    replication = policy.replication
    if replication is not None:
        times.extend(
            r.observed_at + replication.max_age for r in lag.values() if r.seconds is not None
        )
    failback = guards.failback
    primary = verdicts.get(policy.primary)
    if (
        failback.mode is FailbackMode.AUTOMATIC
        and primary is not None
        and primary.verdict is Verdict.HEALTHY
    ):
        times.append(primary.since + failback.stable_period)
    horizon = now - _EPSILON
    return min((t for t in times if t >= horizon), default=None)


class _Context:
    __slots__ = ("active", "lag", "leader", "now", "policy", "state", "verdicts", "version")

    def __init__(
        self,
        policy: Policy,
        state: ServiceState,
        verdicts: Mapping[str, RegionVerdict],
        lag: Mapping[str, LagReading],
        now: float,
        leader: bool,
        version: str,
    ) -> None:
        self.policy = policy
        self.state = state
        self.verdicts = verdicts
        self.lag = lag
        self.now = now
        self.leader = leader
        self.version = version
        self.active = state.active_region

    # -- helpers -------------------------------------------------------------------------

    def verdict(self, region: str) -> Verdict:
        v = self.verdicts.get(region)
        return v.verdict if v is not None else _UNKNOWN

    def make(
        self,
        phase: Phase,
        action: Action = Action.NONE,
        reasons: list[Reason] | tuple[Reason, ...] = (),
        target: str | None = None,
        initiated_by: Initiator = Initiator.POLICY,
        notes: list[str] | tuple[str, ...] = (),
    ) -> Decision:
        detected = self.state.detected_at
        active = self.verdict(self.active)
        if active is Verdict.DOWN:
            detected = detected if detected is not None else self.now
        elif active is Verdict.HEALTHY and not self.state.running and phase is not Phase.FAILED:
            # Only a healthy active region ends the incident: a spell of stale data in the
            # middle of an outage must not restart the RTO clock.
            detected = None
        rto_remaining = None if detected is None else self.policy.rto - (self.now - detected)
        if not self.leader and Reason.NOT_LEADER not in reasons:
            reasons = (*reasons, Reason.NOT_LEADER)
        return Decision(
            service=self.policy.service,
            at=self.now,
            phase=phase,
            action=action,
            active_region=self.active,
            target=target,
            reasons=tuple(dict.fromkeys(reasons)),  # de-duplicated, order kept
            initiated_by=initiated_by,
            policy_version=self.version,
            detected_at=detected,
            rto_remaining=rto_remaining,
            notes=tuple(notes),
        )

    def observation_reasons(self) -> list[Reason]:
        """Reasons about the quality of the data itself (any region)."""
        out: list[Reason] = []
        for v in self.verdicts.values():
            if Reason.HEALTH_API_UNAVAILABLE in v.reasons:
                out.append(Reason.HEALTH_API_UNAVAILABLE)
                break
        return out

    def situation(self) -> tuple[Phase, list[Reason]]:
        """The phase and reasons that describe the active region, with no action taken."""
        av = self.verdict(self.active)
        reasons = self.observation_reasons()
        active = self.verdicts.get(self.active)
        if av is Verdict.DOWN:
            return Phase.BLOCKED, [Reason.ACTIVE_DOWN, *reasons]
        if av is Verdict.DEGRADED:
            return Phase.SUSPECT, [Reason.NO_QUORUM, *reasons]
        if av is Verdict.UNKNOWN:
            stale = [Reason.STALE_DATA] if active and Reason.STALE_DATA in active.reasons else []
            # Fresh failures below the detection rule, or an outage not yet over, are
            # evidence against the region, not yet a verdict.
            open_incident = self.state.detected_at is not None
            recent = active is not None and active.recent_failures
            phase = Phase.SUSPECT if recent or open_incident else Phase.STEADY
            return phase, [Reason.ACTIVE_UNKNOWN, *stale, *reasons]
        return Phase.STEADY, reasons

    # -- the judgement -------------------------------------------------------------------

    def decide(self, operator: OperatorCommand | None) -> Decision:
        state = self.state
        if state.running:
            run = state.run
            assert run is not None
            reasons = [Reason.RUN_IN_PROGRESS]
            if operator is not None and operator.command in MOVE_COMMANDS:
                reasons.append(Reason.OPERATOR_REFUSED)
            if run.waiting_approval:
                reasons.append(Reason.APPROVAL_REQUIRED)
                return self.make(Phase.AWAITING_APPROVAL, reasons=reasons, target=run.target)
            return self.make(Phase.FAILING_OVER, reasons=reasons, target=run.target)
        if state.paused:
            _, why = self.situation()
            reasons = [Reason.PAUSED, *why]
            if operator is not None and operator.command in MOVE_COMMANDS:
                reasons.append(Reason.OPERATOR_REFUSED)
            return self.make(Phase.PAUSED, reasons=reasons)
        if operator is not None and operator.command in MOVE_COMMANDS:
            return self.operator_move(operator)
        if state.failed:
            _, why = self.situation()
            run = state.run
            assert run is not None
            notes = [f"run {run.id} to {run.target} failed: {run.error}"] if run.error else []
            return self.make(Phase.FAILED, reasons=[Reason.STEP_FAILED, *why], notes=notes)
        approved = operator is not None and operator.command is Command.APPROVE
        av = self.verdict(self.active)
        if av is Verdict.DOWN:
            return self.automatic_failover(approved)
        phase, reasons = self.situation()
        if av is Verdict.HEALTHY and self.active != self.policy.primary:
            failback = self.automatic_failback(approved)
            if failback is not None:
                return failback
        return self.make(phase, reasons=reasons)

    def pick_target(self) -> tuple[str | None, list[Reason], list[str]]:
        """The failover target, with the reasons (and notes) explaining any region passed
        over. Among the healthy regions in priority order, the first whose replication lag
        stands in no way (known, fresh and within the RPO, or not replicated) is taken: a
        move that loses no data beats the preferred region. When no healthy region
        qualifies, today's rule: the first healthy region, and the lag guards decide. With
        no healthy region at all, the first unknown one when the policy allows it."""
        policy = self.policy
        others = [r for r in policy.regions if r != self.active]
        reasons: list[Reason] = []
        if others and self.verdict(others[0]) is not Verdict.HEALTHY:
            reasons.append(Reason.STANDBY_UNHEALTHY)
        healthy = [r for r in others if self.verdict(r) is Verdict.HEALTHY]
        if healthy:
            return self.rpo_aware(healthy, reasons)
        verdicts = [self.verdict(r) for r in others]
        if not policy.guards.require_healthy_target:
            for region, v in zip(others, verdicts, strict=True):
                if v is _UNKNOWN:
                    return region, reasons, []
        if all(v in (Verdict.DOWN, _UNKNOWN) for v in verdicts):
            reasons = [Reason.ALL_REGIONS_DOWN]
            if any(v is _UNKNOWN for v in verdicts):
                reasons.append(Reason.STALE_DATA)
            return None, reasons, []
        return None, [*reasons, Reason.NO_HEALTHY_TARGET], []

    def rpo_aware(
        self, healthy: list[str], reasons: list[Reason]
    ) -> tuple[str, list[Reason], list[str]]:
        """The first of ``healthy`` (priority order) that a move can reach without losing
        more data than the RPO allows; the first of them when none can."""
        first = healthy[0]
        if self.policy.replication is None:
            return first, reasons, []
        passed: list[str] = []
        for region in healthy:
            why, _, note = self.lag_guard(region)
            if why is None:
                if not passed:
                    return region, reasons, []
                chosen = self.lag_words(region)
                return region, [*reasons, Reason.STANDBY_LAGGING], [*passed, chosen]
            passed.append(f"passed over {region}: {note}")
        return first, reasons, []

    def lag_words(self, region: str) -> str:
        reading = self.lag.get(region)
        if reading is None or reading.seconds is None:
            return f"chose {region}: not replicated"
        return (
            f"chose {region}: lag {format_duration(reading.seconds)} within RPO"
            f" {format_duration(self.policy.rpo)}"
        )

    def lag_guard(self, target: str) -> tuple[Reason | None, LagPolicy, str]:
        """Whether the target's replication lag stands in the way, and what the policy says
        to do about it."""
        replication = self.policy.replication
        if replication is None or target not in replication.sources:
            return None, LagPolicy.PROCEED, ""
        guards = self.policy.guards
        reading = self.lag.get(target)
        if reading is None or reading.seconds is None:
            return Reason.LAG_UNKNOWN, guards.on_lag_unknown, f"no lag reading for {target}"
        age = self.now - reading.observed_at
        if age > replication.max_age:
            return (
                Reason.LAG_UNKNOWN,
                guards.on_lag_unknown,
                f"the lag reading for {target} is {format_duration(age)} old",
            )
        if reading.seconds > self.policy.rpo:
            return (
                Reason.RPO_EXCEEDED,
                guards.on_lag_above_rpo,
                f"lag of {target} {format_duration(reading.seconds)} > RPO"
                f" {format_duration(self.policy.rpo)}",
            )
        return None, LagPolicy.PROCEED, ""

    def failovers_in_window(self) -> int:
        limit = self.policy.guards.max_failovers
        horizon = self.now - limit.window
        return sum(1 for m in self.state.moves if m.kind in _AWAY and m.at > horizon)

    def automatic_move(
        self, kind: Action, target: str, lead: list[Reason], approved: bool, notes: list[str]
    ) -> Decision:
        """Apply every guard to an automatic move towards ``target``."""
        guards = self.policy.guards
        blockers: list[Reason] = []
        needs_approval: list[Reason] = []
        info: list[Reason] = []
        last = self.state.last_move_finished_at
        if last is not None and self.now - last < guards.cooldown:
            blockers.append(Reason.COOLDOWN)
            notes.append(f"cooldown ends in {format_duration(guards.cooldown - (self.now - last))}")
        if kind is Action.FAILOVER and self.failovers_in_window() >= guards.max_failovers.count:
            blockers.append(Reason.MAX_FAILOVERS)
        lag_reason, lag_policy, lag_note = self.lag_guard(target)
        if lag_reason is not None:
            notes.append(lag_note)
            if lag_policy is LagPolicy.WAIT:
                blockers.append(lag_reason)
            elif lag_policy is LagPolicy.REQUIRE_APPROVAL:
                needs_approval.append(lag_reason)
            else:
                info.append(lag_reason)
        if guards.require_approval:
            needs_approval.append(Reason.APPROVAL_REQUIRED)
        if not self.leader:
            blockers.append(Reason.NOT_LEADER)
        reasons = [*lead, *self.observation_reasons()]
        if self.policy.mode is Mode.ADVISORY:
            return self.make(
                Phase.BLOCKED,
                Action.RECOMMEND,
                [*reasons, Reason.ADVISORY_MODE, *blockers, *needs_approval, *info],
                target=target,
                notes=notes,
            )
        if blockers:
            return self.make(
                Phase.BLOCKED,
                reasons=[*reasons, *blockers, *needs_approval, *info],
                target=target,
                notes=notes,
            )
        if needs_approval and not approved:
            return self.make(
                Phase.AWAITING_APPROVAL,
                Action.AWAIT_APPROVAL,
                [*reasons, *needs_approval, Reason.APPROVAL_REQUIRED, *info],
                target=target,
                notes=notes,
            )
        return self.make(
            Phase.FAILING_OVER, kind, [*reasons, *needs_approval, *info], target=target, notes=notes
        )

    def automatic_failover(self, approved: bool) -> Decision:
        target, target_reasons, notes = self.pick_target()
        lead = [Reason.ACTIVE_DOWN]
        if target is None:
            return self.make(
                Phase.BLOCKED, reasons=[*lead, *target_reasons, *self.observation_reasons()]
            )
        if self.verdict(target) is not Verdict.HEALTHY:
            notes.append(f"{target} is {self.verdict(target)}: require_healthy_target is off")
        kind = self.kind_towards(target, Action.FAILOVER)
        return self.automatic_move(kind, target, [*lead, *target_reasons], approved, notes)

    def kind_towards(self, target: str, default: Action) -> Action:
        """A move to the primary is a failback whatever prompted it: it runs the failback
        runbook (which may hold a re-seed approval gate) and is not a failover for the
        max-failovers limit."""
        return Action.FAILBACK if target == self.policy.primary else default

    def automatic_failback(self, approved: bool) -> Decision | None:
        fb = self.policy.guards.failback
        if fb.mode is not FailbackMode.AUTOMATIC:
            return None
        primary = self.verdicts.get(self.policy.primary)
        if primary is None or primary.verdict is not Verdict.HEALTHY:
            return None
        if self.now - primary.since < fb.stable_period:
            return None
        decision = self.automatic_move(
            Action.FAILBACK, self.policy.primary, [Reason.PRIMARY_RECOVERED], approved, []
        )
        if decision.phase is Phase.BLOCKED:
            # The service is served well meanwhile: a held-back failback is not an incident.
            return self.make(
                Phase.STEADY,
                decision.action,
                decision.reasons,
                decision.target,
                notes=decision.notes,
            )
        return decision

    def operator_move(self, command: OperatorCommand) -> Decision:
        """A failover, switchover or failback asked for by an operator. The command is the
        approval; it bypasses the cooldown, but not the leader lease, the max-failovers
        limit, or (without ``force``) an unhealthy target or a lag the policy waits out. It
        never starts a cooldown either (see :func:`~orchestrator.engine.state.finish_run`):
        a human's move must not delay the automatic answer to a new outage."""
        policy = self.policy
        kind = {
            Command.FAILOVER: Action.FAILOVER,
            Command.SWITCHOVER: Action.SWITCHOVER,
            Command.FAILBACK: Action.FAILBACK,
        }[command.command]
        notes: list[str] = [f"{command.command} requested by {command.by}"]
        refused: list[Reason] = []
        extra: list[Reason] = []
        target: str | None
        if kind is Action.FAILBACK:
            target = policy.primary
        elif command.to is not None:
            target = command.to
        else:
            target, why, chosen = self.pick_target()
            if target is None or self.verdict(target) is not Verdict.HEALTHY:
                refused.extend(why or [Reason.NO_HEALTHY_TARGET])
                target = None
            elif Reason.STANDBY_LAGGING in why:
                extra.append(Reason.STANDBY_LAGGING)
                notes.extend(chosen)
        if target is not None and target not in policy.regions:
            notes.append(f"{target} is not one of the policy's regions")
            refused.append(Reason.NO_HEALTHY_TARGET)
        elif target is not None and target == self.active:
            refused.append(Reason.ALREADY_ACTIVE)
        if target is not None and kind is Action.FAILOVER:
            kind = self.kind_towards(target, kind)
        if target is not None and not refused:
            if self.verdict(target) is not Verdict.HEALTHY:
                if command.force:
                    extra.append(Reason.FORCED)
                else:
                    refused.append(Reason.STANDBY_UNHEALTHY)
                    notes.append(f"{target} is {self.verdict(target)}; use force to override")
            lag_reason, lag_policy, lag_note = self.lag_guard(target)
            if lag_reason is not None:
                notes.append(lag_note)
                planned = kind is Action.SWITCHOVER
                if command.force:
                    extra.append(lag_reason)
                elif planned or lag_policy is LagPolicy.WAIT:
                    refused.append(lag_reason)
                else:
                    extra.append(lag_reason)
            if kind in _AWAY and self.failovers_in_window() >= policy.guards.max_failovers.count:
                refused.append(Reason.MAX_FAILOVERS)
        if not self.leader:
            refused.append(Reason.NOT_LEADER)
        if refused:
            _, why = self.situation()
            return self.make(
                Phase.BLOCKED,
                reasons=[*why, Reason.OPERATOR_REFUSED, *refused],
                target=target,
                notes=notes,
            )
        lead = [Reason.ACTIVE_DOWN] if self.verdict(self.active) is Verdict.DOWN else []
        return self.make(
            Phase.FAILING_OVER,
            kind,
            [*lead, Reason.OPERATOR_COMMAND, *extra],
            target=target,
            initiated_by=Initiator.OPERATOR,
            notes=notes,
        )
