"""A fake :class:`~orchestrator.daemon.control.Control` whose snapshots come from the real engine.

The example policies are loaded with the real loader; a real :class:`HealthBook` is fed
observations (webapp: two of three vantage points see us-east-1 failing, so it is *down*;
catalog: all healthy) and the real ``decide()`` produces the decision, so verdicts, evidence
and reasons have the shapes the daemon will really serve. Commands are recorded, not acted on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.audit import AuditEntry, entries
from orchestrator.daemon.control import (
    CommandResult,
    NotLeaderError,
    Readiness,
    ServiceSnapshot,
)
from orchestrator.engine.decide import decide
from orchestrator.engine.healthbook import HealthBook
from orchestrator.engine.observation import FailureKind, Observation
from orchestrator.engine.state import (
    CommandSource,
    LagReading,
    OperatorCommand,
    RunStatus,
    ServiceState,
)
from orchestrator.incident_report import ReportData
from orchestrator.policy.loader import PolicySet, load_policy_set
from orchestrator.policy.models import AWS_HEALTH_VANTAGE, AwsHealthSignal, Policy
from orchestrator.readiness import ReadinessReport
from orchestrator.runbook.journal import StepStatus
from orchestrator.runbook.rto import AttemptProgress, RunProgress, StepProgress
from orchestrator.store.base import JournalRecord, check_journal_query, in_window
from tests.unit import audit_records

POLICIES = Path(__file__).resolve().parents[3] / "policies"
NOW = 1_700_000_000.0
RUN_ID = "run-0001"


def load_policies() -> PolicySet:
    return load_policy_set([POLICIES / "webapp" / "webapp.yaml", POLICIES / "catalog"])


def _feed(book: HealthBook, policy: Policy, down: set[str], now: float) -> None:
    """Ten rounds of observations at the detection interval, ending at ``now``: in the
    ``down`` regions the first two probe vantage points fail, everything else succeeds."""
    interval = policy.detection.interval
    failing_vantages = set(policy.vantage_points[:2])
    for i in range(10):
        at = now - (9 - i) * interval
        for region, signal, vantage in book.cells():
            sig = next(s for s in policy.signals if s.name == signal)
            if isinstance(sig, AwsHealthSignal) or vantage == AWS_HEALTH_VANTAGE:
                ok, detail = True, ""
            else:
                fails = region in down and vantage in failing_vantages
                ok, detail = (not fails), (FailureKind.CONNECT.value if fails else "")
            book.observe(
                Observation(policy.service, region, signal, vantage, ok, at, detail=detail)
            )


def run_progress(service: str = "webapp", run_id: str = RUN_ID) -> RunProgress:
    """A run half-way: the first step done after one retry, the second running."""
    start = NOW - 90.0
    return RunProgress(
        run_id=run_id,
        service=service,
        kind="failover",
        source="us-east-1",
        target="us-west-2",
        policy_version="v-test",
        status=RunStatus.RUNNING,
        error="",
        steps=(
            StepProgress(
                name="notify-start",
                action="notify.sns",
                after=(),
                status=StepStatus.SUCCEEDED,
                attempts=(
                    AttemptProgress(1, start, start + 1.0, 1.0, "throttled", True),
                    AttemptProgress(2, start + 2.0, start + 2.5, 0.5),
                ),
                started_at=start,
                finished_at=start + 2.5,
                duration=2.5,
            ),
            StepProgress(
                name="promote-db",
                action="rds.promote_replica",
                after=("notify-start",),
                status=StepStatus.RUNNING,
                attempts=(AttemptProgress(1, start + 3.0, None, 87.0),),
                started_at=start + 3.0,
                finished_at=None,
                duration=87.0,
            ),
        ),
        detected_at=NOW - 120.0,
        decided_at=start,
        started_at=start,
        finished_at=None,
        rto=900.0,
        elapsed=120.0,
        rto_remaining=780.0,
    )


def build_snapshots(policies: PolicySet, now: float = NOW) -> dict[str, ServiceSnapshot]:
    out: dict[str, ServiceSnapshot] = {}
    for policy in policies:
        down = {policy.regions[0]} if policy.service == "webapp" else set()
        book = HealthBook(policy)
        _feed(book, policy, down, now)
        verdicts = book.verdicts(now)
        lag = {r: LagReading(12.0, now - 20.0) for r in policy.regions[1:]}
        state = ServiceState(policy.service, policy.regions[0])
        decision = decide(policy, state, verdicts, lag, now, policy_version=policies.version)
        out[policy.service] = ServiceSnapshot(
            service=policy.service,
            at=now,
            policy_version=policies.version,
            mode=str(policy.mode),
            regions=tuple(policy.regions),
            active_region=policy.regions[0],
            phase=str(decision.phase),
            reasons=tuple(str(r) for r in decision.reasons),
            paused=False,
            rto=policy.rto,
            rpo=policy.rpo,
            verdicts=verdicts,
            evidence={r: book.evidence(r, now) for r in policy.regions},
            lag=lag,
            decision=decision,
            run=run_progress(policy.service) if policy.service == "webapp" else None,
            recent_decisions=(decision,),
        )
    return out


@dataclass
class FakeControl:
    """Control with real snapshots; records commands. Set ``leader_id`` to another node to
    make commands raise :class:`NotLeaderError`, ``result`` to choose the answer, ``fail``
    to make every call raise (for the 500 path)."""

    node_id: str = "node-a"
    leader_id: str | None = "node-a"
    ready: Readiness = field(default_factory=lambda: Readiness(True))
    result: CommandResult = field(
        default_factory=lambda: CommandResult(True, "failover started", run_id="run-0002")
    )
    fail: Exception | None = None
    commands: list[tuple[str, OperatorCommand]] = field(default_factory=list)
    paused_all: list[tuple[str, str]] = field(default_factory=list)
    paused_all_from: list[tuple[CommandSource, str]] = field(default_factory=list)
    leader_url: str | None = None  # the leader's API address, as announced
    leader_version: str | None = None  # the policy version the leader announced
    policies: PolicySet = field(default_factory=load_policies)
    snapshots: dict[str, ServiceSnapshot] = field(default_factory=dict)
    runs: dict[str, RunProgress] = field(default_factory=lambda: {RUN_ID: run_progress()})
    readiness_reports: dict[str, ReadinessReport] = field(default_factory=dict)
    journal: list[JournalRecord] = field(default_factory=audit_records.journal)
    audit_fail: Exception | None = None  # raised by the audit reads (a store error)
    audit_queries: list[tuple[str | None, float | None, float | None, int]] = field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        if not self.snapshots:
            self.snapshots = build_snapshots(self.policies)

    @property
    def policy_version(self) -> str:
        return self.policies.version

    def leader(self) -> str | None:
        return self.leader_id

    def leader_api(self) -> str | None:
        return self.leader_url

    def leader_policy_version(self) -> str | None:
        return self.leader_version if self.leader_id is not None else None

    def is_leader(self) -> bool:
        return self.leader_id == self.node_id

    def readiness_report(self) -> Mapping[str, ReadinessReport]:
        return self.readiness_reports

    def readiness(self) -> Readiness:
        return self.ready

    def services(self) -> Sequence[str]:
        if self.fail is not None:
            raise self.fail
        return sorted(self.snapshots)

    def snapshot(self, service: str, *, evidence: bool = True) -> ServiceSnapshot | None:
        return self.snapshots.get(service)

    async def run_progress(self, run_id: str) -> RunProgress | None:
        return self.runs.get(run_id)

    async def audit_entries(
        self,
        service: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> Sequence[AuditEntry]:
        """As the store's read_journal: the newest ``limit`` in the window, oldest first."""
        self.audit_queries.append((service, since, until, limit))
        if self.audit_fail is not None:
            raise self.audit_fail
        check_journal_query(since, until, limit)
        found = [
            r
            for r in self.journal
            if (service is None or r.service == service) and in_window(r, since, until)
        ]
        return entries(found[-limit:])

    async def run_report(self, run_id: str) -> ReportData | None:
        if self.audit_fail is not None:
            raise self.audit_fail
        run = [r for r in self.journal if r.run_id == run_id]
        if not run:
            return None
        around = [r for r in self.journal if r.run_id == "" and r.at <= run[-1].at]
        return ReportData(run=run, around=around, rpo=60.0, now=run[-1].at + 60.0)

    async def command(self, service: str, command: OperatorCommand) -> CommandResult:
        if not self.is_leader():
            raise NotLeaderError(self.leader_id, self.leader_api())
        self.commands.append((service, command))
        return self.result

    async def pause_all(
        self, by: str, reason: str, *, source: CommandSource = CommandSource.API, user: str = ""
    ) -> None:
        if not self.is_leader():
            raise NotLeaderError(self.leader_id, self.leader_api())
        self.paused_all.append((by, reason))
        self.paused_all_from.append((source, user))
