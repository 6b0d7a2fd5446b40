"""A small emulator of what moto lacks for Aurora global databases: FailoverGlobalCluster,
SwitchoverGlobalCluster, and a notion of *replicated position* that makes the difference
between the two visible.

Each global cluster (moto's object, so a moto reset forgets it all) gets a replication log:
the writer commits numbered writes (:meth:`AuroraEmulator.write`), and a write reaches the
secondaries ``lag`` seconds after its commit — unless the writer's region is down
(:meth:`AuroraEmulator.region_down`), in which case nothing committed after that moment
ever ships. What AWS does with that, emulated here (Aurora User Guide, "Using switchover or
failover in an Amazon Aurora global database"; the RDS API reference of both calls):

* ``SwitchoverGlobalCluster`` (and ``FailoverGlobalCluster`` without ``AllowDataLoss``):
  writes to the primary stop at once, the global cluster is ``switching-over`` (its
  ``FailoverState`` ``pending``) until the chosen secondary has caught up with every
  committed write, then the roles swap: **no write is lost**. It needs the primary to take
  part: with the primary's region down the call is refused
  (``InvalidGlobalClusterStateFault``).
* ``FailoverGlobalCluster`` with ``AllowDataLoss``: the secondary is promoted with what it
  has; every write after its replicated position **is gone** (counted in ``lost_writes``),
  the global cluster is ``failing-over`` for a moment, then the target is the writer and
  the old primary a secondary.

Time is the emulator's :class:`~orchestrator.clock.Clock` (tests inject a virtual one). The
state is readable with :meth:`AuroraEmulator.state` (the sandbox's control endpoint shows it
under ``aurora``), so a test or the demo can see how many writes a move lost.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from orchestrator.clock import SYSTEM_CLOCK, Clock

DEFAULT_LAG = 1.0  # seconds for a write to reach the secondaries (storage replication)
SWITCHOVER_SECONDS = 2.0  # the role swap itself, once the secondary has caught up
FAILOVER_SECONDS = 1.0  # promoting the secondary
_ATTRIBUTE = "_failoverd_replication"


@dataclass
class Replication:
    """The replication log of one global cluster."""

    writes: list[float] = field(default_factory=list)  # commit time of write n+1
    stopped_at: float | None = None  # the writer's region went down: nothing ships after
    lost_writes: int = 0  # writes a failover with AllowDataLoss threw away, in all
    operation: dict[str, Any] | None = None  # a switchover or failover under way
    history: list[dict[str, Any]] = field(default_factory=list)

    def replicated(self, now: float, lag: float) -> int:
        """The position the secondaries have: writes committed at least ``lag`` ago, and
        before shipping stopped."""
        horizon = now - lag
        if self.stopped_at is not None:
            horizon = min(horizon, self.stopped_at - lag)
        return sum(1 for t in self.writes if t <= horizon)


class GlobalClusterStateError(Exception):
    """The global cluster cannot do that now (AWS: InvalidGlobalClusterStateFault)."""


class AuroraEmulator:
    """Replication, switchover and failover of the Aurora global clusters in moto's
    backend. Thread-safe (moto serves requests from its own threads)."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, lag: float = DEFAULT_LAG) -> None:
        self.clock = clock
        self.lag = lag
        self.down: set[str] = set()
        self._lock = threading.RLock()

    # -- what the sandbox and tests drive ------------------------------------------------
    def write(self, global_cluster: Any, n: int = 1) -> int:
        """Commit ``n`` writes on the writer; the writer's position after them. Nothing is
        committed while a switchover or failover is under way, or while the writer's region
        is down (the application there cannot reach it): returns the position unchanged."""
        with self._lock:
            self.advance(global_cluster)
            log = replication(global_cluster)
            writer = _writer(global_cluster)
            if log.operation is not None or writer is None or _region(writer) in self.down:
                return len(log.writes)
            now = self.clock.now()
            log.writes.extend([now] * n)
            return len(log.writes)

    def region_down(self, region: str) -> None:
        """The region is out: its writer stops shipping (what it committed since ``lag``
        ago never reaches a secondary) and takes no more writes."""
        with self._lock:
            self.down.add(region)
            for gc in _all_global_clusters():
                writer = _writer(gc)
                log = replication(gc)
                if writer is not None and _region(writer) == region and log.stopped_at is None:
                    log.stopped_at = self.clock.now()

    def region_up(self, region: str) -> None:
        with self._lock:
            self.down.discard(region)

    def state(self, global_cluster: Any) -> dict[str, Any]:
        """Writer, positions and losses of one global cluster (JSON values)."""
        with self._lock:
            self.advance(global_cluster)
            log = replication(global_cluster)
            writer = _writer(global_cluster)
            return {
                "writer": None if writer is None else writer.db_cluster_arn,
                "status": global_cluster.status,
                "position": len(log.writes),
                "replicated": log.replicated(self.clock.now(), self.lag),
                "lost_writes": log.lost_writes,
                "history": list(log.history),
            }

    def states(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {gc.global_cluster_identifier: self.state(gc) for gc in _all_global_clusters()}

    # -- the API calls ---------------------------------------------------------------------
    def switchover(self, global_cluster: Any, target: Any) -> None:
        with self._lock:
            self.advance(global_cluster)
            log = replication(global_cluster)
            source = self._check_move(global_cluster, target)
            if _region(source) in self.down or log.stopped_at is not None:
                raise GlobalClusterStateError(
                    f"the primary cluster {source.db_cluster_arn} is unavailable: a switchover"
                    " needs it; fail over with AllowDataLoss instead"
                )
            log.operation = {
                "kind": "switchover",
                "from": source,
                "to": target,
                "started": self.clock.now(),
            }
            global_cluster.status = "switching-over"
            global_cluster.failover_state = _failover_state(source, target, loss=False)

    def failover(self, global_cluster: Any, target: Any) -> int:
        """Promote ``target`` with what it has; the writes lost."""
        with self._lock:
            self.advance(global_cluster)
            log = replication(global_cluster)
            source = self._check_move(global_cluster, target)
            now = self.clock.now()
            kept = log.replicated(now, self.lag)
            lost = len(log.writes) - kept
            del log.writes[kept:]
            log.lost_writes += lost
            log.operation = {"kind": "failover", "from": source, "to": target, "started": now}
            log.history.append({"kind": "failover", "at": now, "lost_writes": lost})
            global_cluster.status = "failing-over"
            global_cluster.failover_state = _failover_state(source, target, loss=True)
            return lost

    def advance(self, global_cluster: Any) -> None:
        """Move an operation under way forward to the clock's now (called on every read)."""
        with self._lock:
            log = replication(global_cluster)
            op = log.operation
            if op is None:
                return
            now = self.clock.now()
            if op["kind"] == "switchover":
                if log.replicated(now, self.lag) < len(log.writes):
                    return  # the secondary is still catching up; writes are blocked
                # Caught up when the last write arrived (writes stopped at the call).
                caught_up = max(op["started"], (log.writes or [0.0])[-1] + self.lag)
                global_cluster.failover_state["Status"] = "failing-over"
                if now - caught_up < SWITCHOVER_SECONDS:
                    return
                log.history.append({"kind": "switchover", "at": now, "lost_writes": 0})
            elif now - op["started"] < FAILOVER_SECONDS:
                global_cluster.failover_state["Status"] = "failing-over"
                return
            op["from"].is_writer = False
            op["to"].is_writer = True
            log.operation = None
            log.stopped_at = self.clock.now() if _region(op["to"]) in self.down else None
            global_cluster.status = "available"
            global_cluster.failover_state = None

    def _check_move(self, global_cluster: Any, target: Any) -> Any:
        log = replication(global_cluster)
        if log.operation is not None:
            raise GlobalClusterStateError(
                f"global cluster {global_cluster.global_cluster_identifier} is already"
                f" {global_cluster.status}"
            )
        if target not in global_cluster.members:
            raise GlobalClusterStateError(
                f"{target.db_cluster_arn} is not a member of"
                f" {global_cluster.global_cluster_identifier}"
            )
        source = _writer(global_cluster)
        if source is None or source is target:
            raise GlobalClusterStateError(
                f"{target.db_cluster_arn} is already the primary of"
                f" {global_cluster.global_cluster_identifier}"
            )
        return source


EMULATOR = AuroraEmulator()


def aurora_region(region: str, up: bool) -> None:
    """The sandbox's region faults, as the emulator hears them."""
    if up:
        EMULATOR.region_up(region)
    else:
        EMULATOR.region_down(region)


@contextmanager
def emulator_settings(*, clock: Clock | None = None, lag: float | None = None) -> Iterator[None]:
    """The emulator on another clock or lag for a block (tests), restored afterwards."""
    before = (EMULATOR.clock, EMULATOR.lag, set(EMULATOR.down))
    if clock is not None:
        EMULATOR.clock = clock
    if lag is not None:
        EMULATOR.lag = lag
    try:
        yield
    finally:
        EMULATOR.clock, EMULATOR.lag, EMULATOR.down = before


def replication(global_cluster: Any) -> Replication:
    log = getattr(global_cluster, _ATTRIBUTE, None)
    if log is None:
        log = Replication()
        setattr(global_cluster, _ATTRIBUTE, log)
    return log


def _writer(global_cluster: Any) -> Any:
    return next((m for m in global_cluster.members if m.is_writer), None)


def _region(cluster: Any) -> str:
    return str(cluster.db_cluster_arn.split(":")[3])


def _failover_state(source: Any, target: Any, *, loss: bool) -> dict[str, Any]:
    return {
        "Status": "pending",
        "FromDbClusterArn": source.db_cluster_arn,
        "ToDbClusterArn": target.db_cluster_arn,
        "IsDataLossAllowed": loss,
    }


def _all_global_clusters() -> list[Any]:
    from moto.rds.models import rds_backends

    from orchestrator.sandbox.moto_fixups import GLOBAL_CLUSTERS_REGION

    out: list[Any] = []
    for account in list(rds_backends.keys()):
        backend = rds_backends[account].get(GLOBAL_CLUSTERS_REGION)
        if backend is not None:
            out.extend(backend.global_clusters.values())
    return out


def find_global_cluster(identifier: str, account: str | None = None) -> Any:
    """moto's global cluster ``identifier`` (case-insensitive); KeyError when absent."""
    for gc in _all_global_clusters():
        same_account = account is None or gc.account_id == account
        if same_account and gc.global_cluster_identifier == identifier.lower():
            return gc
    raise KeyError(identifier)
