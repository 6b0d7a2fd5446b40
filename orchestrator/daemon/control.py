"""The contract between the daemon and its front doors (HTTP API, CLI, MQTT commands).

The daemon implements :class:`Control`; the API, the MQTT command topic and tests use it.
Reads are cheap, synchronous snapshots of immutable data (safe to call from any handler);
commands are async because they are journaled in the store before they take effect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from orchestrator.audit import AuditEntry
from orchestrator.engine.healthbook import RegionVerdict, VantageView
from orchestrator.engine.state import CommandSource, Decision, LagReading, OperatorCommand
from orchestrator.incident_report import ReportData
from orchestrator.readiness import ReadinessReport
from orchestrator.runbook.rto import RunProgress


@dataclass(frozen=True)
class ServiceSnapshot:
    """Everything an on-call engineer needs about one service, at one moment."""

    service: str
    at: float  # wall clock of the snapshot
    policy_version: str
    mode: str  # automatic | advisory
    regions: tuple[str, ...]  # priority order; the first is the primary
    active_region: str
    phase: str
    reasons: tuple[str, ...]
    paused: bool
    rto: float
    rpo: float
    verdicts: Mapping[str, RegionVerdict]
    evidence: Mapping[str, tuple[VantageView, ...]]
    lag: Mapping[str, LagReading]
    decision: Decision | None
    run: RunProgress | None  # the current run, or the last one
    recent_decisions: tuple[Decision, ...] = ()  # newest last; only changes are kept
    state_problem: str | None = None  # the stored state could not be used (corrupt): why


@dataclass(frozen=True)
class CommandResult:
    """What became of an operator command: accepted (and journaled) or refused, and why."""

    accepted: bool
    message: str
    decision: Decision | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class Readiness:
    ready: bool
    problems: tuple[str, ...] = field(default=())  # why not ready, in words


class NotLeaderError(Exception):
    """A mutating command reached an instance that does not lead; ``leader`` says who does
    and ``leader_api`` where its API is (as it published it with its lease; None unknown)."""

    def __init__(self, leader: str | None, leader_api: str | None = None) -> None:
        super().__init__(f"not the leader; the leader is {leader or 'unknown'}")
        self.leader = leader
        self.leader_api = leader_api


class Control(Protocol):
    """The daemon as its front doors see it.

    Contract: ``snapshot``/``services``/``readiness`` never block and never raise for a
    known service; ``command`` journals who/what/why/where (``OperatorCommand.by``,
    ``reason``, ``source``) as an ``operator_command`` record before acting and the decision
    it led to after, returns within a few seconds (it does not wait for a run to finish),
    and raises :class:`NotLeaderError` (naming the leader and its API) on a follower.
    """

    node_id: str

    @property
    def policy_version(self) -> str: ...

    def leader(self) -> str | None:
        """The node id holding the leader lease, if known."""
        ...

    def leader_api(self) -> str | None:
        """The leader's API address, as it published it with its lease (None: unknown)."""
        ...

    def leader_policy_version(self) -> str | None:
        """The policy set version the leader acts on, as it published it (None: unknown)."""
        ...

    def is_leader(self) -> bool: ...

    def readiness(self) -> Readiness:
        """Policies loaded, store reachable, leader known."""
        ...

    def services(self) -> Sequence[str]: ...

    def snapshot(self, service: str, *, evidence: bool = True) -> ServiceSnapshot | None: ...

    async def run_progress(self, run_id: str) -> RunProgress | None: ...

    async def audit_entries(
        self,
        service: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> Sequence[AuditEntry]:
        """The audit log from the shared store (any instance answers): the newest ``limit``
        journal records (of ``service``, or all) with ``since <= at <= until``, oldest
        first. Read-only; bounded by the store's timeout (``TimeoutError``); raises
        ``StoreError`` when the store cannot answer and ``ValueError`` for a bad window."""
        ...

    async def run_report(self, run_id: str) -> ReportData | None:
        """What the post-incident report of ``run_id`` is made of (its records, the
        service's records around it, the RPO); None for an unknown run. Read-only; errors
        as :meth:`audit_entries`."""
        ...

    def readiness_report(self) -> Mapping[str, ReadinessReport]:
        """The latest periodic readiness evaluation per service (none before the first)."""
        ...

    async def command(self, service: str, command: OperatorCommand) -> CommandResult: ...

    async def pause_all(
        self, by: str, reason: str, *, source: CommandSource = CommandSource.API, user: str = ""
    ) -> None:
        """The global brake: pause every service (each pause journaled as a command)."""
        ...
