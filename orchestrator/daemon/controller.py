"""The per-service control loop: observations in, decisions out, runs started.

:class:`Controller` implements :class:`orchestrator.daemon.control.Control`. It keeps, per service,
a :class:`HealthBook`, the :class:`ServiceState` (from the store; created with the primary
active when absent), the latest lag readings, the last :class:`Decision` and a bounded list
of decision changes. It is the :class:`ObservationSink` and :class:`LagSink` the signal
sources feed.

One engine pass (``evaluate_all``) per tick and after each observation batch (debounced):
verdicts -> ``decide()`` -> ``apply_decision`` -> fenced ``save_state`` -> a run started in
the background when the decision says so (never two per service). Only the holder of the
leader lease acts: without it the token provider answers None, so the executor stops at its
next journal write, and ``decide()`` starts nothing (``not_leader``); observing goes on.

The audit log: each change of the leader's decision for a service (and each decision that
starts a run) is journaled as a ``decision`` record with its evidence, by a background
:class:`AuditWriter` so that a slow store never holds up an engine pass. A decision that
starts a run is durable before the run's ``run_started`` (the run waits for it, bounded),
and the service's later decision records wait until ``run_started`` is in the journal, so
in the audit the decision that started a run is the one right before it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.actions.moves import run_facts
from orchestrator.actions.registry import get_action
from orchestrator.audit import (
    AuditEntry,
    abort_error,
    command_answer,
    command_record,
    decision_detail,
    decision_record,
    entries,
    new_command_id,
    operator_command_record,
    with_command_id,
)
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.daemon.audit_writer import AuditWriter
from orchestrator.daemon.control import CommandResult, NotLeaderError, Readiness, ServiceSnapshot
from orchestrator.daemon.flight_recorder import FlightRecorder, ServiceView
from orchestrator.daemon.intake import IntakeLedger
from orchestrator.engine.decide import decide
from orchestrator.engine.healthbook import HealthBook, Intake, RegionVerdict
from orchestrator.engine.observation import Observation
from orchestrator.engine.state import (
    MOVE_COMMANDS,
    Command,
    CommandSource,
    Decision,
    LagReading,
    OperatorCommand,
    RunStatus,
    ServiceState,
    apply_command,
    apply_decision,
)
from orchestrator.incident_report import ReportData
from orchestrator.policy.actions import APPROVAL_ACTION
from orchestrator.policy.loader import PolicySet
from orchestrator.policy.models import Policy
from orchestrator.readiness import ReadinessReport
from orchestrator.runbook.executor import ActionLookup, Executor, RunRejected, new_run_id
from orchestrator.runbook.journal import JournalError, StepStatus, approval_key
from orchestrator.runbook.rto import RunProgress
from orchestrator.signals.aws_clients import AwsClients
from orchestrator.store.base import (
    ApprovalRecord,
    CorruptState,
    JournalRecord,
    JournalStatus,
    LeaderInfo,
    Lease,
    Store,
    StoreError,
)
from orchestrator.telemetry import AUDIT_RECORDS, get_logger

LEASE_SAFETY = 0.8  # act for at most this share of the lease's TTL after each renewal
FOLLOWER_RETRY = 1.0  # seconds between a follower's attempts to take the lease

log = get_logger("failoverd.controller")

RECENT_DECISIONS = 50
AUDIT_HELD = 100  # decision records of a service held back until its run_started is written
REPORT_LEAD_UP = 200  # the service's journal records before a run, read for its report
REPORT_CONTEXT = 500  # ... and while it ran
_WAITING = frozenset({StepStatus.RUNNING, StepStatus.RETRYING})
# An abort's answer waits this long (loop seconds) for the run to end, to say it did; its
# steps in flight end at once, but an action may first undo what it left running (a Region
# switch execution's cancel is bounded by 10s). Past it the answer says "aborting".
ABORT_WAIT = 5.0


@dataclass
class _Service:
    policy: Policy
    book: HealthBook
    state: ServiceState
    lag: dict[str, LagReading] = field(default_factory=dict)
    verdicts: Mapping[str, RegionVerdict] = field(default_factory=dict)
    decision: Decision | None = None
    recent: collections.deque[Decision] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_DECISIONS)
    )
    run_task: asyncio.Task[None] | None = None
    progress: RunProgress | None = None
    # The run whose run_started is not journaled yet: the service's decision records wait.
    audit_hold: str | None = None
    audit_held: collections.deque[JournalRecord] = field(
        default_factory=lambda: collections.deque(maxlen=AUDIT_HELD)
    )
    start_audit: asyncio.Future[bool] | None = None  # the record of the run-starting decision
    # Why the stored state could not be used (corrupt, quarantined by the store): the
    # service is held paused until an operator's command saves a state again.
    state_problem: str | None = None


class Controller:
    """The daemon's brain and the :class:`~orchestrator.daemon.control.Control` its front doors use.

    Lifecycle: ``await load()`` (states from the store), then ``await run()`` (lease and
    engine loops, and the runs, in one TaskGroup) until cancelled; ``await drain(grace)``
    before cancelling lets running steps reach their next journal point (bounded);
    ``await close()`` releases the lease.
    """

    def __init__(
        self,
        policies: PolicySet,
        store: Store,
        aws: AwsClients,
        *,
        node_id: str,
        clock: Clock = SYSTEM_CLOCK,
        lease_ttl: float = 15.0,
        tick: float = 1.0,
        debounce: float = 0.05,
        actions: ActionLookup = get_action,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must be a non-empty string")
        if not lease_ttl > 0 or not tick > 0 or debounce < 0:
            raise ValueError(
                f"lease_ttl and tick must be positive and debounce not negative, got "
                f"lease_ttl={lease_ttl!r} tick={tick!r} debounce={debounce!r}"
            )
        self.node_id = node_id
        self._set = policies
        self._store = store
        self._clock = clock
        self._ttl = lease_ttl
        self._tick = tick
        self._debounce = debounce
        self.executor = Executor(store, aws, clock, token=self.token, actions=actions)
        self.audit = AuditWriter(store, timeout=store.timeout + 1)
        self.audit.on_outcome = lambda outcome: AUDIT_RECORDS.labels(outcome=outcome).inc()
        self._services: dict[str, _Service] = {}
        self._lease: Lease | None = None
        self._lease_deadline = 0.0  # monotonic: past it the lease may have expired
        self._leader_name: str | None = None
        self._leader_info: LeaderInfo | None = None  # what the leader announced (followers)
        self._announced: tuple[int, str, str] | None = None  # (token, api, version) we did
        # This instance's API address as clients reach it (set once the API listens);
        # announced with the lease so that followers can send clients to the leader.
        self.api_address = ""
        self._first_lease_step = asyncio.Event()
        self._announce_task: asyncio.Task[None] | None = None
        # A run was cut short (no lease window, store down) while this instance kept, or
        # got back, the lease: it is resumed once the instance acts again.
        self._resume_pending = False
        self._store_ok = False
        self._evaluated = False
        self._stopping = False
        self._resuming = False
        # Cleared while a new leader has not read the services' states back from the store:
        # what it holds may be a follower's stale view, never to be saved or acted on.
        self._states_fresh = asyncio.Event()
        self._states_fresh.set()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._resume_task: asyncio.Task[None] | None = None
        self.on_tick: list[Callable[[], None]] = []  # e.g. the systemd watchdog ping
        # Called with each decision that differs from the service's last one (e.g. the MQTT
        # event stream); must not block. A hook that raises is logged and skipped.
        self.on_decision: list[Callable[[Decision], object]] = []
        self._readiness: dict[str, ReadinessReport] = {}
        self.recorder: FlightRecorder | None = None  # set by the daemon: hooks below feed it
        self.intake = IntakeLedger(clock)

    # -- Control: reads ------------------------------------------------------------------
    @property
    def policy_version(self) -> str:
        return self._set.version

    @property
    def policy_set(self) -> PolicySet:
        return self._set

    @property
    def evaluated(self) -> bool:
        """True once every service has been through the engine once."""
        return self._evaluated

    def token(self) -> int | None:
        """The fencing token while we hold an unexpired lease (the executor's provider)."""
        if self._lease is None or self._clock.monotonic() >= self._lease_deadline:
            return None
        return self._lease.token

    def is_leader(self) -> bool:
        return self.token() is not None

    @property
    def store_reachable(self) -> bool:
        """Whether the last store call (lease step, state save or read) reached the store."""
        return self._store_ok

    def leader(self) -> str | None:
        return self.node_id if self.is_leader() else self._leader_name

    def leader_api(self) -> str | None:
        if self.is_leader():
            return self.api_address or None
        info = self._leader_info
        if info is None or info.holder != self._leader_name:
            return None
        return info.api or None

    def leader_policy_version(self) -> str | None:
        if self.is_leader():
            return self._set.version
        info = self._leader_info
        if info is None or info.holder != self._leader_name:
            return None
        return info.policy_version or None

    def readiness(self) -> Readiness:
        problems: list[str] = []
        if not self._set.policies:
            problems.append("no policies loaded")
        if not self._store_ok:
            problems.append("the state store is not reachable")
        if self.leader() is None:
            problems.append("no leader is known")
        if not self._evaluated:
            problems.append("the first evaluation has not finished")
        return Readiness(ready=not problems, problems=tuple(problems))

    def services(self) -> Sequence[str]:
        return sorted(self._services)

    def snapshot(self, service: str, *, evidence: bool = True) -> ServiceSnapshot | None:
        """The service as the front doors show it; ``evidence=False`` skips the per-vantage
        evidence (the costly part), for readers that only need verdicts and the run."""
        svc = self._services.get(service)
        if svc is None:
            return None
        p, now = svc.policy, self._clock.now()
        d = svc.decision
        return ServiceSnapshot(
            service=service,
            at=now,
            policy_version=self._set.version,
            mode=p.mode.value,
            regions=tuple(p.regions),
            active_region=svc.state.active_region,
            phase=d.phase.value if d else "unknown",
            reasons=tuple(r.value for r in d.reasons) if d else (),
            paused=svc.state.paused,
            rto=p.rto,
            rpo=p.rpo,
            verdicts=dict(svc.verdicts),
            evidence={r: svc.book.evidence(r, now) for r in p.regions} if evidence else {},
            lag=dict(svc.lag),
            decision=d,
            run=svc.progress,
            recent_decisions=tuple(svc.recent),
            state_problem=svc.state_problem,
        )

    def readiness_report(self) -> Mapping[str, ReadinessReport]:
        """The latest readiness evaluation per service (the daemon's periodic job), or
        nothing for a service not evaluated yet."""
        return dict(self._readiness)

    def record_readiness(self, service: str, report: ReadinessReport | None) -> None:
        """Keep ``report`` as the service's latest readiness (None forgets it)."""
        if report is None:
            self._readiness.pop(service, None)
        else:
            self._readiness[service] = report

    async def run_progress(self, run_id: str) -> RunProgress | None:
        try:
            return await self.executor.progress(run_id)
        except (StoreError, JournalError) as exc:
            log.warning("run_progress_unavailable", run_id=run_id, error=str(exc))
            return None

    async def audit_entries(
        self,
        service: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> Sequence[AuditEntry]:
        async with asyncio.timeout(self._store.timeout + 1):
            records = await self._store.read_journal(service, since=since, until=until, limit=limit)
        return entries(records)

    async def run_report(self, run_id: str) -> ReportData | None:
        async with asyncio.timeout(3 * (self._store.timeout + 1)):  # three bounded reads
            run = list(await self._store.read_run(run_id))
            if not run:
                return None
            service, start = run[0].service, run[0].at
            ended = run[-1].status in (JournalStatus.RUN_SUCCEEDED, JournalStatus.RUN_FAILED)
            end = run[-1].at if ended else None  # a run still going: up to now
            # Two windows, so that a long run's own records cannot crowd out the decisions
            # that led to it: the lead-up, then what happened while it ran.
            before = await self._store.read_journal(service, until=start, limit=REPORT_LEAD_UP)
            during = await self._store.read_journal(
                service, since=start, until=end, limit=REPORT_CONTEXT
            )
        svc = self._services.get(service)
        # A record at `start` is in both windows: keep the first window's.
        around = [r for r in (*before, *(r for r in during if r.at > start)) if r.run_id != run_id]
        return ReportData(
            run=run,
            around=around,
            rpo=None if svc is None else svc.policy.rpo,
            now=self._clock.now(),
        )

    # -- sinks (called by the signal sources on the event loop; never block or raise) ----
    def put(self, obs: Observation) -> None:
        svc = self._services.get(obs.service)
        note = None if self.recorder is None else self.recorder.observation
        intake = Intake.UNEXPECTED if svc is None else svc.book.observe(obs, note)
        self.intake.record(obs, intake)  # counted there, accepted or rejected
        if intake is Intake.ACCEPTED:
            self._wake.set()

    def put_lag(self, service: str, region: str, reading: LagReading) -> None:
        svc = self._services.get(service)
        if svc is not None:
            svc.lag[region] = reading
            if self.recorder is not None:
                self.recorder.lag(service, region, reading)

    def service_view(self, service: str) -> ServiceView | None:
        """What the flight recorder reads of a service."""
        svc = self._services.get(service)
        if svc is None:
            return None
        return ServiceView(
            svc.policy, svc.book, svc.state, svc.lag, svc.progress, self._set.version
        )

    # -- lifecycle -------------------------------------------------------------------------
    async def load(self) -> None:
        """Read every service's state from the store (raises StoreError when unreachable)."""
        for policy in self._set:
            self._services[policy.service] = await self._new_service(policy)
        self._store_ok = True

    async def _new_service(self, policy: Policy) -> _Service:
        try:
            state = await self._store.load_state(policy.service)
        except CorruptState as exc:
            svc = _Service(
                policy=policy,
                book=HealthBook(policy),
                state=ServiceState(policy.service, policy.primary),
            )
            await self._hold_corrupt(svc, exc, known=False)
            return svc
        if state is None or state.active_region not in policy.regions:
            if state is not None:
                log.warning(
                    "active_region_not_in_policy",
                    service=policy.service,
                    active_region=state.active_region,
                )
            state = ServiceState(policy.service, policy.primary)
        return _Service(policy=policy, book=HealthBook(policy), state=state)

    async def _hold_corrupt(self, svc: _Service, exc: CorruptState, *, known: bool) -> None:
        """The service's stored state is corrupt (the store has quarantined it): hold the
        service paused, so that nothing is done on a guess, with the best guess of its
        active region — the one in memory (``known``), else the journal's last finished
        run, else the primary — until an operator checks and resumes it (which saves a good
        state over the corrupt one)."""
        if svc.state_problem is not None:
            return
        service = svc.policy.service
        region, source = svc.state.active_region, "the last state read"
        if not known:
            region, source = await self._region_from_journal(svc.policy)
        svc.state = replace(svc.state, active_region=region, paused=True)
        svc.state_problem = (
            f"the stored state is corrupt and was quarantined ({exc.key}): the service is"
            f" paused; its active region {region} comes from {source}. Check it, then resume"
            " (or switch over after resuming) to save a good state."
        )
        log.error("service_state_corrupt", service=service, key=exc.key, active_region=region)

    async def _region_from_journal(self, policy: Policy) -> tuple[str, str]:
        try:
            runs = await self._store.recent_runs(policy.service, 20)
            for run_id in runs:
                records = await self._store.read_run(run_id)
                if not records or records[0].status is not JournalStatus.RUN_STARTED:
                    continue
                start, end = records[0], records[-1]
                if end.status is JournalStatus.RUN_SUCCEEDED and start.target_region:
                    return start.target_region, f"run {run_id} (succeeded)"
                if end.status is JournalStatus.RUN_FAILED and start.source_region:
                    return start.source_region, f"run {run_id} (failed)"
        except StoreError as exc:
            log.warning("journal_unreadable_for_state", service=policy.service, error=str(exc))
        return policy.primary, "the policy (no finished run in the journal)"

    async def run(self) -> None:
        """The lease and engine loops, and every run, until cancelled. The first engine pass
        waits for the first lease step (bounded by the store's timeout): a single instance
        decides as the leader from its first pass, instead of as a follower for one tick."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self.audit.run())
            tg.create_task(self._lease_loop())
            await self._first_lease_step.wait()
            tg.create_task(self._tick_loop())

    async def drain(self, grace: float) -> None:
        """Stop taking decisions; give running runs ``grace`` seconds to reach their end or
        next journal point. A run cut short stays unfinished in the journal and is resumed
        by the next leader."""
        self._stopping = True
        tasks = [s.run_task for s in self._services.values() if s.run_task is not None]
        if self._resume_task is not None:
            tasks.append(self._resume_task)
        tasks = [t for t in tasks if not t.done()]
        if tasks:
            log.info("draining_runs", runs=len(tasks), grace=grace)
            await asyncio.wait(tasks, timeout=grace)
        if self.audit.pending and not await self.audit.flush(min(grace, self._store.timeout)):
            log.warning("audit_records_not_flushed", pending=self.audit.pending)

    async def close(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                async with asyncio.timeout(self._store.timeout + 1):
                    await self._store.release_lease(lease)
                log.info("leader_lease_released", node_id=self.node_id)
            except (StoreError, TimeoutError) as exc:
                log.warning("leader_lease_release_failed", error=str(exc))

    # -- reload ----------------------------------------------------------------------------
    async def swap(self, new: PolicySet) -> None:
        """Swap in a validated policy set at once: unchanged services keep their books,
        changed ones get new books (state kept), new ones get state from the store."""
        services: dict[str, _Service] = {}
        for policy in new:
            old = self._services.get(policy.service)
            if old is None:
                services[policy.service] = await self._new_service(policy)
            elif old.policy == policy:
                services[policy.service] = old
            else:
                services[policy.service] = replace(old, policy=policy, book=HealthBook(policy))
        async with self._lock:
            self._services = services
            self._set = new
        self._wake.set()
        await self._announce_soon()  # followers show the version the leader acts on

    # -- the engine ------------------------------------------------------------------------
    async def evaluate_all(self) -> None:
        for name in list(self._services):
            await self.evaluate(name)
        self._evaluated = True

    async def evaluate(self, service: str, operator: OperatorCommand | None = None) -> Decision:
        async with self._lock:
            d, _ = await self._evaluate(self._services[service], operator, asked=operator)
            return d

    async def _evaluate(
        self,
        svc: _Service,
        operator: OperatorCommand | None,
        *,
        asked: OperatorCommand | None = None,
    ) -> tuple[Decision, CommandResult | None]:
        """One engine pass for ``svc``. ``operator`` is handed to ``decide()``; ``asked`` is
        the command this pass answers (``operator`` for a move or an approval, the pause or
        resume just applied): its result is returned and journaled with the decision."""
        await self._refresh_run(svc)
        now = self._clock.now()
        svc.verdicts = svc.book.verdicts(now)
        state = svc.state
        d = decide(
            svc.policy,
            state,
            svc.verdicts,
            svc.lag,
            now,
            operator,
            leader=self.is_leader() and not self._stopping,
            policy_version=self._set.version,
        )
        busy = self._resuming or (svc.run_task is not None and not svc.run_task.done())
        starting = d.starts_run and d.target is not None and self._tg is not None and not busy
        run_id = new_run_id(svc.policy.service) if starting else ""
        result = None if asked is None else self._answer(svc, asked, d, run_id)
        self._record(svc, d, run_id, asked, result)
        if starting and self._tg is not None:
            svc.state = apply_decision(state, d, run_id)
            facts = self._run_facts(svc, d, state, now)
            svc.run_task = self._tg.create_task(self._drive(svc, d, state, run_id, facts))
            return d, result
        if d.starts_run:
            return d, result  # a run is being driven or resumed; the executor owns the state
        new = apply_decision(state, d, "")
        if new is not state:
            svc.state = new
            await self._save(svc)
        return d, result

    def _answer(
        self, svc: _Service, asked: OperatorCommand, d: Decision, run_id: str
    ) -> CommandResult:
        """What the operator is told about ``asked``, given the decision it led to."""
        service = svc.policy.service
        if asked.command in (Command.PAUSE, Command.RESUME):
            return CommandResult(True, f"{service} {asked.command.value}d", decision=d)
        if asked.command is Command.ABORT:
            run = svc.state.run
            if run is None or run.status is RunStatus.RUNNING:
                aborting = "aborting: the run's steps in flight are being cancelled"
                return CommandResult(True, aborting, d, None if run is None else run.id)
            return CommandResult(
                True,
                f"run {run.id} aborted; {service} stays in {svc.state.active_region}, failed,"
                " until an operator acts (resume hands it back to the engine)",
                d,
                run.id,
            )
        if run_id:
            return CommandResult(True, f"{d.action.value} to {d.target} started", d, run_id)
        run = svc.state.run
        if d.starts_run and run is not None:  # the run already under way answers it
            return CommandResult(True, f"{d.action.value} to {d.target} started", d, run.id)
        why = "; ".join([*(r.value for r in d.reasons), *d.notes]) or d.phase.value
        return CommandResult(False, f"refused: {why}", d)

    def _record(
        self,
        svc: _Service,
        d: Decision,
        run_id: str = "",
        asked: OperatorCommand | None = None,
        result: CommandResult | None = None,
    ) -> None:
        prev = svc.decision
        svc.decision = d
        changed = prev is None or prev.key() != d.key()
        if changed or run_id or asked is not None:
            # A run can start on an unchanged decision (held back while another run was
            # resumed): its start is audited all the same; so is the decision an operator
            # command led to, changed or not (it names the command).
            answer = None
            if asked is not None and result is not None:
                answer = command_answer(
                    asked, accepted=result.accepted, message=result.message, run_id=result.run_id
                )
            self._audit_decision(svc, d, run_id, answer)
        if not changed:
            return
        svc.recent.append(d)
        log.info(
            "decision_changed",
            service=d.service,
            phase=d.phase.value,
            action=d.action.value,
            target=d.target,
            reasons=[r.value for r in d.reasons],
            policy_version=d.policy_version,
        )
        for hook in self.on_decision:
            try:
                hook(d)
            except Exception:  # a listener must not stop the engine
                log.exception("decision_hook_failed", service=d.service)

    def _audit_decision(
        self,
        svc: _Service,
        d: Decision,
        run_id: str,
        command: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue the decision record (the leader's only: followers' views are not acted on);
        ``command``: the operator command it answers (:func:`command_answer`)."""
        token = self.token()
        if token is None:
            return
        try:
            p = svc.policy
            detail = decision_detail(
                d,
                verdicts=svc.verdicts,
                evidence={r: svc.book.evidence(r, d.at) for r in p.regions},
                lag=svc.lag,
                regions=p.regions,
                rto=p.rto,
                rpo=p.rpo,
                run_id=run_id or None,
                command=command,
            )
        except Exception:  # the record is for humans: it must never stop the engine
            log.exception("audit_record_unbuildable", service=d.service)
            return
        record = decision_record(d, token=token, detail=detail)
        if svc.audit_hold is not None:
            svc.audit_held.append(record)
            return
        done = self.audit.submit(record)
        if run_id:
            svc.audit_hold, svc.start_audit = run_id, done

    def _release_audit(self, svc: _Service, run_id: str) -> None:
        """The run's run_started is journaled (or never will be): let the held records go."""
        if svc.audit_hold != run_id:
            return
        svc.audit_hold, svc.start_audit = None, None
        while svc.audit_held:
            self.audit.submit(svc.audit_held.popleft())

    async def _await_start_audit(self, svc: _Service) -> None:
        # The run's first journal write must follow its decision record; the run waits for
        # that record at most one bounded store call, and starts anyway after it.
        done = svc.start_audit
        if done is None:
            return
        try:
            async with asyncio.timeout(self._store.timeout + 1):
                await asyncio.shield(done)
        except TimeoutError:
            log.warning("audit_decision_not_written_before_run", service=svc.policy.service)

    async def _refresh_run(self, svc: _Service) -> None:
        """While a run is recorded, the executor owns the state: read it back, and the run's
        progress for snapshots."""
        if svc.audit_hold is not None and (svc.run_task is None or svc.run_task.done()):
            self._release_audit(svc, svc.audit_hold)  # e.g. a service object replaced by a reload
        ending = svc.progress is not None and svc.progress.status is RunStatus.RUNNING
        if svc.state.run is None and not ending:
            return
        driving = svc.run_task is not None and not svc.run_task.done()
        try:
            if svc.state.run is not None:
                stored = await self._store.load_state(svc.policy.service)
                # Until the executor's first write, the run exists only in memory: keep it.
                if stored is not None and (stored.run is not None or not driving):
                    svc.state = stored
            if svc.state.run is not None:
                svc.progress = await self.executor.progress(svc.state.run.id) or svc.progress
                if svc.progress is not None:
                    self._release_audit(svc, svc.progress.run_id)
            elif svc.progress is not None and svc.progress.status is RunStatus.RUNNING:
                # A run resumed without a _drive of ours ends unseen; and the executor settles
                # the state before the run's end reaches the journal, so a pass in between
                # reads "running" with no run left in the state: ask the journal until it
                # has the end.
                svc.progress = await self.executor.progress(svc.progress.run_id) or svc.progress
            # No `_store_ok = True` here: a read that works says nothing of a store that
            # refuses writes (a full disk, a lock held elsewhere); the lease step tells.
        except (StoreError, JournalError) as exc:
            log.warning("run_refresh_failed", service=svc.policy.service, error=str(exc))

    def _run_facts(
        self, svc: _Service, d: Decision, state: ServiceState, now: float
    ) -> dict[str, Any]:
        """What the run's steps know about the move (orchestrator.actions.moves): the source
        region's verdict at decision time and the target's last lag reading."""
        verdict = svc.verdicts.get(state.active_region)
        lag = svc.lag.get(d.target) if d.target is not None else None
        return run_facts(
            d.action.value,
            source_region=state.active_region,
            source_verdict=None if verdict is None else verdict.verdict.value,
            target_lag_seconds=None if lag is None else lag.seconds,
            target_lag_age_seconds=None if lag is None else round(now - lag.observed_at, 3),
        )

    async def _drive(
        self,
        svc: _Service,
        d: Decision,
        before: ServiceState,
        run_id: str,
        facts: Mapping[str, Any] | None = None,
    ) -> None:
        service = svc.policy.service
        await self._await_start_audit(svc)
        try:
            await self.executor.start_run(svc.policy, d, before, run_id=run_id, facts=facts)
        except StoreError as exc:  # fenced out, not leader, store down: resumed later
            log.warning("run_interrupted", service=service, run_id=run_id, error=str(exc))
            self._resume_pending = True
        except RunRejected as exc:
            log.error("run_rejected", service=service, run_id=run_id, error=str(exc))
        except Exception:
            log.exception("run_crashed", service=service, run_id=run_id)
        finally:
            self._release_audit(svc, run_id)
        try:
            stored = await self._store.load_state(service)
            if stored is not None:
                svc.state = stored
            svc.progress = await self.executor.progress(run_id) or svc.progress
        except (StoreError, JournalError) as exc:
            log.warning("run_refresh_failed", service=service, error=str(exc))
        self._wake.set()

    async def _save(self, svc: _Service) -> None:
        token = self.token()
        if token is None:
            return  # followers keep state in memory only; the leader's is the truth
        if not self._states_fresh.is_set():
            # A new leader has not read the store's states yet: what it holds may be a
            # follower's stale view, which must never overwrite the last leader's.
            return
        try:
            await self._store.save_state(svc.state, token)
            self._store_ok = True
            if svc.state_problem is not None:
                log.info("service_state_rewritten", service=svc.policy.service)
                svc.state_problem = None
        except StoreError as exc:
            self._store_ok = False
            log.warning("state_save_failed", service=svc.policy.service, error=str(exc))

    async def _tick_loop(self) -> None:
        while True:
            healthy = True
            # Cleared before the pass, not after it: an observation or a run's end arriving
            # during the pass must bring the next one forward, not wait a whole tick.
            self._wake.clear()
            if not self._stopping:
                try:
                    await self.evaluate_all()
                except StoreError:
                    # Degraded, not wedged: keep observing without acting (DESIGN principle
                    # 2); a restart would only throw the health windows away.
                    log.warning("engine_tick_store_unavailable")
                except Exception:  # one bad pass must not stop the engine...
                    log.exception("engine_tick_failed")
                    healthy = False  # ...but a loop that only fails must not feed the watchdog
            if healthy:
                for ping in self.on_tick:
                    ping()
            await self._wait_for_tick()

    async def _wait_for_tick(self) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(self._tick))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, woken):
                t.cancel()
            await asyncio.gather(sleeper, woken, return_exceptions=True)
        if woken.done() and not woken.cancelled() and self._debounce:
            # A batch of observations arrives as many puts: evaluate once after it.
            await self._clock.sleep(self._debounce)

    # -- leadership --------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        followed = -math.inf
        while True:
            await self.lease_step()
            if self._lease is not None:
                await self._clock.sleep(self._ttl / 3)
                continue
            if self._clock.monotonic() - followed >= self._ttl / 3:
                followed = self._clock.monotonic()
                await self.follow_store()
            # A follower asks again soon: a dead leader's lease ends at an instant unknown
            # here, and waiting a whole ttl/3 after it would add up to ttl/3 to a takeover.
            await self._clock.sleep(min(self._ttl / 3, FOLLOWER_RETRY))

    async def follow_store(self) -> bool:
        """Adopt the leader's service states from the store (a follower's, and a new
        leader's before it decides anything): a warm standby must show, and take over from,
        where the leader left things — not its own memory of before the last failover."""
        for svc in list(self._services.values()):
            try:
                stored = await self._store.load_state(svc.policy.service)
            except CorruptState as exc:
                # One bad record takes out its service, held paused, not the leadership.
                await self._hold_corrupt(svc, exc, known=True)
                continue
            except StoreError as exc:
                log.warning("state_refresh_failed", service=svc.policy.service, error=str(exc))
                return False
            driving = svc.run_task is not None and not svc.run_task.done()
            if stored is not None and stored.active_region in svc.policy.regions and not driving:
                svc.state = stored
                svc.state_problem = None
        return True

    async def lease_step(self) -> None:
        """Acquire or renew the lease once (a leader every ttl/3, a follower every second)."""
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(self._store.timeout + 1):
                if self._lease is None:
                    lease = await self._store.acquire_lease(self.node_id, self._ttl)
                    if lease is None:
                        info = await self._store.leader_info()
                        self._leader_info = info
                        self._leader_name = None if info is None else info.holder
                    else:
                        self._became_leader(lease, started)
                else:
                    renewed = await self._store.renew_lease(self._lease)
                    if renewed is None:
                        self._lost("renew_refused")
                    else:
                        self._lease, self._lease_deadline = renewed, self._deadline(started)
                        self._resume_interrupted()
            self._store_ok = True
        except (StoreError, TimeoutError) as exc:
            self._store_ok = False
            log.warning("leader_lease_store_error", error=str(exc) or type(exc).__name__)
            if self._lease is not None and self._clock.monotonic() >= self._lease_deadline:
                self._lost("renew_deadline_passed")
        finally:
            self._first_lease_step.set()
        await self._announce_soon()

    async def _announce_soon(self) -> None:
        """Announce what changed, off the lease loop while it runs: a slow announcement
        must never delay the next renewal (the leader's acting window hangs on it)."""
        lease = self._lease
        if lease is None or self._announced == (lease.token, self.api_address, self._set.version):
            return
        if self._tg is None:  # not running (a test stepping the lease by hand): right away
            await self.announce()
        elif self._announce_task is None or self._announce_task.done():
            self._announce_task = self._tg.create_task(self.announce())

    async def announce(self) -> None:
        """Publish with our lease our API address and the policy version we act on, when
        they changed (after an acquisition, a reload, the API coming up). Best effort: a
        failure is logged and tried again at the next lease step."""
        lease = self._lease
        if lease is None or self.token() is None:
            return
        wanted = (lease.token, self.api_address, self._set.version)
        if self._announced == wanted:
            return
        try:
            async with asyncio.timeout(self._store.timeout + 1):
                await self._store.announce(lease, self.api_address, self._set.version)
            self._announced = wanted
            log.info("leader_announced", api=self.api_address or None, version=wanted[2])
        except (StoreError, TimeoutError) as exc:
            log.warning("leader_announce_failed", error=str(exc) or type(exc).__name__)

    def _deadline(self, started: float) -> float:
        # Stop acting a margin before the lease can expire in the store: the store's expiry
        # counts from when it received the call (later than `started`), and local clocks
        # drift; a leader that acts a little less long is safe, one that acts too long is not.
        return started + self._ttl * LEASE_SAFETY

    def _resume_interrupted(self) -> None:
        """Resume the runs cut short while this instance could not act (its lease window
        closed during a slow renewal, or the store failed a write) now that it acts again,
        as a new leader would. Only when no run of this instance is still being driven: a
        resumed run must never be driven twice; otherwise at a later lease step."""
        if not self._resume_pending or self._tg is None or self._stopping:
            return
        if self.token() is None or self._resuming:
            return
        if any(s.run_task is not None and not s.run_task.done() for s in self._services.values()):
            return
        self._resume_pending = False
        self._resuming = True
        log.info("runs_resuming_after_interruption", node_id=self.node_id)
        self._resume_task = self._tg.create_task(self._resume())

    def _became_leader(self, lease: Lease, started: float) -> None:
        self._lease, self._lease_deadline = lease, self._deadline(started)
        self._leader_name = self.node_id
        log.info("leader_lease_acquired", node_id=self.node_id, token=lease.token)
        if self.recorder is not None:
            self.recorder.leadership(True)
        if self._tg is not None and not self._stopping:
            self._resume_pending = False  # the resume below covers every unfinished run
            self._resuming = True
            self._states_fresh.clear()
            self._resume_task = self._tg.create_task(self._resume())

    def _lost(self, why: str) -> None:
        self._lease = None
        self._leader_name = None
        self._leader_info = None
        log.warning("leader_lease_lost", node_id=self.node_id, why=why)
        if self.recorder is not None:
            self.recorder.leadership(False)

    async def _resume(self) -> None:
        try:
            async with self._lock:
                if not await self.follow_store():
                    # Acting on states we could not read back would undo the last leader's
                    # work: give the lease up; the next lease step tries again.
                    self._lost("state_reload_failed")
                    return
                self._states_fresh.set()
            resumed = await self.executor.resume_unfinished()
            if resumed:
                log.info("runs_resumed", runs=resumed)
        except StoreError as exc:
            log.warning("resume_interrupted", error=str(exc))
            self._resume_pending = True
        except Exception:
            log.exception("resume_crashed")
        finally:
            self._resuming = False
            self._states_fresh.set()  # read, or the lease given up: nobody waits in vain
            for svc in self._services.values():
                await self._refresh_run(svc)
            self._wake.set()

    # -- Control: commands -------------------------------------------------------------
    async def command(self, service: str, command: OperatorCommand) -> CommandResult:
        """Journal ``command`` (an ``operator_command`` record: who, why, from where) before
        it takes effect, apply it, and journal the decision it led to (a ``decision`` record
        naming the command's id, with what the operator is told)."""
        svc = self._services.get(service)
        if svc is None:
            return CommandResult(False, f"unknown service {service!r}")
        if self.token() is not None and not self._states_fresh.is_set():
            # Just became leader: act on the states the last leader left, not on our view.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._store.timeout + 1):
                    await self._states_fresh.wait()
        token = self.token()
        if token is None:
            raise NotLeaderError(self.leader(), self.leader_api())
        if self._stopping:
            return CommandResult(False, "the daemon is shutting down")
        if not self._states_fresh.is_set():
            return CommandResult(False, "the new leader is still reading the state; try again")
        command = with_command_id(command)
        now = self._clock.now()
        try:
            if command.command is Command.APPROVE:
                if self.recorder is not None:
                    self.recorder.command(service, command, now)
                return await self._approve(svc, command, token, now)
            if command.command is Command.ABORT:
                if self.recorder is not None:
                    self.recorder.command(service, command, now)
                return await self._abort(svc, command, token, now)
            await self._journal(svc, command, token, now)
        except StoreError as exc:
            return CommandResult(False, f"not journaled, nothing done: {exc}")
        if self.recorder is not None:
            self.recorder.command(service, command, now)
        if command.command in (Command.PAUSE, Command.RESUME):
            async with self._lock:
                svc.state = apply_command(svc.state, command)
                await self._save(svc)
                _, result = await self._evaluate(svc, None, asked=command)
        elif command.command in MOVE_COMMANDS:
            async with self._lock:
                _, result = await self._evaluate(svc, command, asked=command)
        else:
            return CommandResult(False, f"unsupported command {command.command.value!r}")
        assert result is not None
        return result

    async def _approve(
        self, svc: _Service, command: OperatorCommand, token: int, now: float
    ) -> CommandResult:
        run = svc.state.run
        service = svc.policy.service
        if run is not None and run.status is RunStatus.RUNNING:
            step = await self._waiting_approval_step(run.id)
            if step is None:
                await self._journal(svc, command, token, now)
                result = CommandResult(False, f"run {run.id} is not waiting for an approval")
            else:
                await self._journal(svc, command, token, now, run_id=run.id, step=step)
                await self._store.record_approval(
                    ApprovalRecord(service, run.id, step, command.by, command.reason, now)
                )
                result = CommandResult(
                    True, f"approved step {step} of run {run.id}", svc.decision, run.id
                )
            if svc.decision is not None:  # the decision in force answers the approval
                answer = command_answer(
                    command, accepted=result.accepted, message=result.message, run_id=run.id
                )
                # Restated at the approval's time: the record follows the command's.
                self._audit_decision(svc, replace(svc.decision, at=now), "", answer)
            return result
        await self._journal(svc, command, token, now)
        await self._store.record_approval(
            ApprovalRecord(service, "", "", command.by, command.reason, now)
        )
        async with self._lock:
            _, answered = await self._evaluate(svc, command, asked=command)
        assert answered is not None
        return answered

    async def _abort(
        self, svc: _Service, command: OperatorCommand, token: int, now: float
    ) -> CommandResult:
        """Abort the service's running run: journaled in the run (who, why) before the
        executor cancels its steps in flight and ends it as failed; answered by the decision
        after it (the service's phase is ``failed``, as after any failed run)."""
        service = svc.policy.service
        run_id = self.executor.driving(service)
        result: CommandResult | None = None
        if run_id is None:
            await self._journal(svc, command, token, now)
            run = svc.state.run
            if run is not None and run.status is RunStatus.RUNNING:
                why = (
                    f"run {run.id} is not being driven right now (interrupted, it resumes as"
                    " soon as this leader can act again); try again in a few seconds"
                )
            else:
                why = f"no run of {service} is running"
            result = CommandResult(False, why, svc.decision)
        else:
            await self._journal(svc, command, token, now, run_id=run_id)
            if not self.executor.abort(run_id, abort_error(command)):
                result = CommandResult(False, f"run {run_id} ended before the abort", svc.decision)
        if result is not None:
            if svc.decision is not None:  # the decision in force answers the refusal
                answer = command_answer(command, accepted=False, message=result.message)
                self._audit_decision(svc, replace(svc.decision, at=now), "", answer)
            return result
        assert run_id is not None
        await self.executor.wait_finished(run_id, ABORT_WAIT)
        async with self._lock:
            _, answered = await self._evaluate(svc, None, asked=command)
        assert answered is not None
        return answered

    async def _waiting_approval_step(self, run_id: str) -> str | None:
        """The approval key of what the run waits for: an ``approval`` step's name, or
        ``<step>/<sub-step>`` for a step's own step waiting for approval (e.g. a manual
        approval step of an ARC Region switch plan the step drives)."""
        progress = await self.executor.progress(run_id)
        if progress is None:
            return None
        for step in progress.steps:
            if step.action == APPROVAL_ACTION and step.status in _WAITING:
                return step.name
            if step.status in _WAITING and step.awaiting_approval:
                return approval_key(step.name, step.awaiting_approval[0])
        return None

    async def record_command(
        self,
        service: str,
        command: str,
        *,
        by: str,
        reason: str,
        source: CommandSource,
        user: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Journal a command that is not an :class:`OperatorCommand` (a drill) before it
        starts: its id, or None when this instance does not lead (nothing is written)."""
        token = self.token()
        if token is None or service not in self._services:
            return None
        command_id = new_command_id()
        await self._store.append_journal(
            command_record(
                service,
                command,
                by=by,
                reason=reason,
                source=source,
                command_id=command_id,
                at=self._clock.now(),
                token=token,
                policy_version=self._set.version,
                user=user,
                extra=extra,
            )
        )
        log.info(
            "operator_command",
            service=service,
            command=command,
            command_id=command_id,
            by=by,
            source=source.value,
            reason=reason,
            **dict(extra or {}),
        )
        return command_id

    async def journal_drill(self, service: str, mode: str, detail: Mapping[str, Any]) -> bool:
        """Record a drill's result in the journal (a dry-run is not a run, so it gets a record
        of its own); False when this instance does not lead (the leader records drills)."""
        token = self.token()
        svc = self._services.get(service)
        if token is None or svc is None:
            return False
        await self._store.append_journal(
            JournalRecord(
                run_id="",
                service=service,
                status=JournalStatus.DRILL_FINISHED,
                at=self._clock.now(),
                token=token,
                policy_version=self._set.version,
                step=f"drill.{mode}",
                kind=mode,
                detail=json.dumps(dict(detail), sort_keys=True),
            )
        )
        return True

    async def _journal(
        self,
        svc: _Service,
        command: OperatorCommand,
        token: int,
        now: float,
        *,
        run_id: str = "",
        step: str = "",
    ) -> None:
        # Before the command takes effect, fenced like every journal write: who, what, why,
        # from where (run_id and step name the gate an approval opens).
        await self._store.append_journal(
            operator_command_record(
                svc.policy.service,
                command,
                at=now,
                token=token,
                policy_version=self._set.version,
                run_id=run_id,
                step=step,
            )
        )
        log.info(
            "operator_command",
            service=svc.policy.service,
            command=command.command.value,
            command_id=command.id,
            to=command.to,
            force=command.force,
            by=command.by,
            user=command.user or None,
            source=command.source.value,
            reason=command.reason,
        )

    async def pause_all(
        self, by: str, reason: str, *, source: CommandSource = CommandSource.API, user: str = ""
    ) -> None:
        for service in self.services():
            pause = OperatorCommand(Command.PAUSE, by=by, reason=reason, source=source, user=user)
            await self.command(service, pause)

    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        parts = []
        for name in self.services():
            svc = self._services[name]
            phase = svc.decision.phase.value if svc.decision else "unknown"
            parts.append(f"{name}={phase}@{svc.state.active_region}")
        role = "leader" if self.is_leader() else "follower"
        return f"{role}; policies {self._set.version}; " + ", ".join(parts)
