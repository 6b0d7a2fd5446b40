"""``aurora.global_failover``: move the writer of an Aurora global database to the target
region's cluster.

Modes (``params.mode``):

* ``switchover`` — planned (SwitchoverGlobalCluster): Aurora waits until the secondary has
  caught up, then swaps roles; no data is lost, and the old primary stays in the global
  database as a secondary. Needs both regions healthy.
* ``failover`` — unplanned (FailoverGlobalCluster with ``AllowDataLoss``): the secondary is
  promoted at once; writes not yet replicated are lost (RPO = the replication lag). What an
  outage of the primary region calls for.
* ``detach_and_promote`` — RemoveFromGlobalCluster: the target leaves the global database
  and becomes a standalone, writable cluster. The last resort when the global database
  itself cannot be operated on; replication has to be rebuilt afterwards.
* ``auto`` — graceful or not by the run itself (:func:`orchestrator.actions.moves.move_style`):
  a switchover, a failback or a drill uses ``switchover``; a failover with the source region
  down (or of unknown health) uses ``failover``; a failover away from a region that still
  answers uses ``switchover``.

A planned move never loses data: a step with ``mode: failover`` in a switchover, failback or
drill (a runbook reused for them) switches over instead. Which call was made, and why, is the
step's detail in the journal (and the ``aurora_global_writer_moved`` log event).

Every call goes to the target cluster's region (taken from ``target_cluster_arn``), the one
that is up. Just before changing anything, ``execute`` tags the target cluster
``failoverd:promoted-by=<run id>``, so that a step re-entered after a crash can tell "this
run already made it the writer" (ready) from "it already was the writer" (readiness flags it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from orchestrator.actions.base import (
    Action,
    ActionFailed,
    ApiDependency,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    RetryableError,
    StepContext,
    typed_params,
)
from orchestrator.actions.errors import aws_errors, transient_as_pending
from orchestrator.actions.moves import DRILL, move_style
from orchestrator.actions.rds import PROMOTED_BY_TAG, RdsArn, parse_rds_arn, tags_of
from orchestrator.actions.wait import poll_until
from orchestrator.partitions import partition_of
from orchestrator.policy.actions import AuroraGlobal
from orchestrator.signals.aws_clients import error_code
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions")

SERVICE = "rds"
SWITCHOVER = "switchover"
FAILOVER = "failover"
DETACH = "detach_and_promote"
# FailoverState.Status while a failover or switchover is under way.
IN_PROGRESS = frozenset({"pending", "failing-over", "switching-over", "cancelling"})
_NOT_FOUND = frozenset({"GlobalClusterNotFoundFault", "DBClusterNotFoundFault"})


CALLS = {SWITCHOVER: "SwitchoverGlobalCluster", FAILOVER: "FailoverGlobalCluster(AllowDataLoss)"}


def choose_mode(mode: str, kind: str, facts: Mapping[str, Any]) -> tuple[str, str]:
    """The mode a run of ``kind`` with ``facts`` uses, and why (see the module docstring):
    ``auto`` follows :func:`move_style`; an explicit ``failover`` in a planned move is a
    switchover (a planned move never loses data); any other mode is the policy's."""
    if mode == DETACH:
        return mode, "mode detach_and_promote in the policy"
    style = move_style(kind, facts)
    if mode == "auto":
        return (SWITCHOVER if style.graceful else FAILOVER), style.reason
    if mode == FAILOVER and style.graceful and (kind != "failover" or facts.get(DRILL)):
        return SWITCHOVER, f"{style.reason} (mode failover applies to failovers only)"
    return mode, f"mode {mode} in the policy"


def global_cluster_id(value: str) -> str:
    """``name`` from ``name`` or ``arn:aws:rds::123456789012:global-cluster:name``."""
    value = value.strip()
    if value.startswith("arn:"):
        parts = value.split(":")
        if len(parts) != 7 or parts[5] != "global-cluster" or not parts[6]:
            raise ActionFailed(f"not a global cluster ARN: {value!r}")
        return parts[6].lower()
    return value.lower()


def target_arn(p: AuroraGlobal) -> RdsArn:
    arn = parse_rds_arn(p.target_cluster_arn)
    if arn is None or arn.kind != "cluster":
        raise ActionFailed(
            f"target_cluster_arn must be an Aurora cluster ARN "
            f"(arn:<partition>:rds:<region>:<account>:cluster:<name>), got "
            f"{p.target_cluster_arn!r}"
        )
    return arn


def _same_arn(a: str | None, b: str) -> bool:
    return a is not None and a.strip().lower() == b.strip().lower()


async def describe_global(client: Any, identifier: str) -> dict[str, Any] | None:
    """The global cluster, or None when it does not exist."""
    try:
        async with aws_errors():
            response = await client.describe_global_clusters(GlobalClusterIdentifier=identifier)
    except ActionFailed as exc:
        if error_code(exc.__cause__ or exc) in _NOT_FOUND:
            return None
        raise
    for cluster in response.get("GlobalClusters") or []:
        if str(cluster.get("GlobalClusterIdentifier", "")).lower() == identifier:
            return dict(cluster)
    return None


async def describe_cluster(client: Any, arn: str) -> dict[str, Any] | None:
    try:
        async with aws_errors():
            response = await client.describe_db_clusters(DBClusterIdentifier=arn)
    except ActionFailed as exc:
        if error_code(exc.__cause__ or exc) in _NOT_FOUND:
            return None
        raise
    clusters = response.get("DBClusters") or []
    return dict(clusters[0]) if clusters else None


def member(global_cluster: dict[str, Any] | None, arn: str) -> dict[str, Any] | None:
    for m in (global_cluster or {}).get("GlobalClusterMembers") or []:
        if _same_arn(m.get("DBClusterArn"), arn):
            return dict(m)
    return None


def writer_of(global_cluster: dict[str, Any] | None) -> str | None:
    for m in (global_cluster or {}).get("GlobalClusterMembers") or []:
        if m.get("IsWriter"):
            return str(m.get("DBClusterArn"))
    return None


def failover_in_progress(global_cluster: dict[str, Any]) -> dict[str, Any] | None:
    state = global_cluster.get("FailoverState") or {}
    return dict(state) if state.get("Status") in IN_PROGRESS else None


def is_standalone(cluster: dict[str, Any] | None) -> bool:
    """A cluster that writes for itself: in no global database, replicating from nothing."""
    return (
        cluster is not None
        and not cluster.get("GlobalClusterIdentifier")
        and not cluster.get("ReplicationSourceIdentifier")
    )


class GlobalFailover(Action):
    """Make the target cluster the writer of the global database (switchover or failover),
    or detach it as a standalone writer; see the module docstring for the modes. ``verify``
    waits until DescribeGlobalClusters shows the target as the writer with no failover under
    way (or, detached: out of the global database, standalone and ``available``)."""

    name = "aurora.global_failover"
    params_model = AuroraGlobal

    async def check(self, ctx: StepContext) -> CheckReport:
        p = typed_params(ctx, AuroraGlobal)
        try:
            target = target_arn(p)
            gc_id = global_cluster_id(p.global_cluster)
        except ActionFailed as exc:
            return CheckReport(ready=False, findings=(str(exc),))
        arn = p.target_cluster_arn.strip()
        async with ctx.aws.client(SERVICE, target.region) as client:
            global_cluster = await describe_global(client, gc_id)
            cluster = await describe_cluster(client, arn)
        findings: list[str] = []
        ours = cluster is not None and tags_of(cluster).get(PROMOTED_BY_TAG) == ctx.run_id

        def report(*extra: str) -> CheckReport:
            all_findings = tuple(findings) + extra
            return CheckReport(
                ready=not findings, findings=all_findings, control_plane_region=target.region
            )

        if cluster is None:
            findings.append(f"cluster {arn} not found")
        elif cluster.get("Status") != "available":
            findings.append(f"cluster {arn} is {cluster.get('Status')}, not available")
        if cluster is not None and not cluster.get("DBClusterMembers"):
            # A headless secondary (storage only) is promoted all the same, but the new
            # writer has no instance to take writes until one is created and available.
            findings.append(
                f"cluster {arn} has no DB instances: promoted, it would be a writer with"
                " nothing to serve writes (add an instance to it first)"
            )
        in_global = member(global_cluster, arn)
        if p.mode == DETACH and in_global is None and is_standalone(cluster):
            if ours:
                return report(f"{arn} already detached by this run")
            findings.append(f"{arn} is already standalone, not in global cluster {gc_id}")
            return report()
        if global_cluster is None:
            findings.append(f"global cluster {gc_id} not found")
            return report()
        if in_global is None:
            findings.append(f"{arn} is not a member of global cluster {gc_id}")
            return report()
        if in_global.get("IsWriter"):
            if ours:
                return report(f"{arn} already made the writer by this run")
            findings.append(f"{arn} is already the writer of {gc_id}: nothing to move")
        in_progress = failover_in_progress(global_cluster)
        if in_progress and not _same_arn(in_progress.get("ToDbClusterArn"), arn):
            findings.append(
                f"{gc_id} is {in_progress.get('Status')} to {in_progress.get('ToDbClusterArn')}"
            )
        if not findings and p.mode != DETACH:
            mode, why = choose_mode(p.mode, ctx.kind, ctx.facts)
            if ctx.facts or p.mode != "auto" or ctx.kind != "failover":
                return report(f"a {ctx.kind} would call {CALLS[mode]}: {why}")
            # Readiness has no decision to judge the source by: say both.
            return report(
                f"a failover would call {CALLS[FAILOVER]} with the source region down or"
                f" unknown, {CALLS[SWITCHOVER]} while it still answers"
            )
        return report()

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, AuroraGlobal)
        target = target_arn(p)
        gc_id = global_cluster_id(p.global_cluster)
        arn = p.target_cluster_arn.strip()
        async with ctx.aws.client(SERVICE, target.region) as client:
            global_cluster = await describe_global(client, gc_id)
            in_global = member(global_cluster, arn)
            if p.mode == DETACH:
                if in_global is None:
                    cluster = await describe_cluster(client, arn)
                    if not is_standalone(cluster):
                        raise ActionFailed(
                            f"{arn} is neither in global cluster {gc_id} nor standalone"
                        )
                    return ExecuteOutcome(changed=False, detail=f"{arn} already detached")
                await self._mark(client, ctx, arn)
                async with aws_errors():
                    await client.remove_from_global_cluster(
                        GlobalClusterIdentifier=gc_id, DbClusterIdentifier=arn
                    )
                return self._changed(ctx, DETACH, gc_id, arn, "mode detach_and_promote")
            if global_cluster is None:
                raise ActionFailed(f"global cluster {gc_id} not found")
            if in_global is None:
                raise ActionFailed(f"{arn} is not a member of global cluster {gc_id}")
            if in_global.get("IsWriter"):
                return ExecuteOutcome(changed=False, detail=f"{arn} already the writer")
            in_progress = failover_in_progress(global_cluster)
            if in_progress is not None:
                if _same_arn(in_progress.get("ToDbClusterArn"), arn):
                    return ExecuteOutcome(
                        changed=False, detail=f"{in_progress.get('Status')} to {arn} under way"
                    )
                raise RetryableError(
                    f"{gc_id} is {in_progress.get('Status')} to "
                    f"{in_progress.get('ToDbClusterArn')}; waiting for it to end"
                )
            mode, why = choose_mode(p.mode, ctx.kind, ctx.facts)
            await self._mark(client, ctx, arn)
            async with aws_errors():
                if mode == SWITCHOVER:
                    await client.switchover_global_cluster(
                        GlobalClusterIdentifier=gc_id, TargetDbClusterIdentifier=arn
                    )
                else:
                    await client.failover_global_cluster(
                        GlobalClusterIdentifier=gc_id,
                        TargetDbClusterIdentifier=arn,
                        AllowDataLoss=True,
                    )
        return self._changed(ctx, mode, gc_id, arn, why, previous=writer_of(global_cluster))

    async def verify(self, ctx: StepContext) -> None:
        p = typed_params(ctx, AuroraGlobal)
        target = target_arn(p)
        gc_id = global_cluster_id(p.global_cluster)
        arn = p.target_cluster_arn.strip()
        async with ctx.aws.client(SERVICE, target.region) as client:

            async def writer() -> tuple[bool, str]:
                global_cluster = await describe_global(client, gc_id)
                if global_cluster is None:
                    raise ActionFailed(f"global cluster {gc_id} disappeared")
                in_global = member(global_cluster, arn)
                if in_global is None:
                    raise ActionFailed(f"{arn} is no longer a member of {gc_id}")
                in_progress = failover_in_progress(global_cluster)
                done = (
                    bool(in_global.get("IsWriter"))
                    and in_progress is None
                    and global_cluster.get("Status") == "available"
                )
                state = (
                    f"{gc_id} {global_cluster.get('Status')}, writer {writer_of(global_cluster)}"
                )
                if in_progress:
                    state += f", {in_progress.get('Status')}"
                return done, state

            async def detached() -> tuple[bool, str]:
                in_global = member(await describe_global(client, gc_id), arn)
                cluster = await describe_cluster(client, arn)
                if cluster is None:
                    raise ActionFailed(f"cluster {arn} disappeared")
                done = (
                    in_global is None
                    and is_standalone(cluster)
                    and cluster.get("Status") == "available"
                )
                where = f"in {gc_id}" if in_global else "detached"
                return done, f"{where}, {cluster.get('Status')}"

            probe, what = (
                (detached, f"{arn} standalone and available")
                if p.mode == DETACH
                else (writer, f"{arn} the writer of {gc_id}")
            )
            await poll_until(
                ctx, transient_as_pending(probe), what=what, first_delay=1.0, max_delay=15.0
            )

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        p = typed_params(params, AuroraGlobal)
        arn = parse_rds_arn(p.target_cluster_arn)
        region = arn.region if arn is not None else target_region
        return (ApiDependency(SERVICE, "FailoverGlobalCluster", region, "control"),)

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        p = typed_params(params, AuroraGlobal)
        partition = partition_of(target_arn(p).region)
        gc_arn = partition.arn(
            "rds", "", account, f"global-cluster:{global_cluster_id(p.global_cluster)}"
        )
        cluster_arn = p.target_cluster_arn.strip()
        moves = {
            "auto": ("rds:FailoverGlobalCluster", "rds:SwitchoverGlobalCluster"),
            SWITCHOVER: ("rds:SwitchoverGlobalCluster",),
            FAILOVER: ("rds:FailoverGlobalCluster",),
            DETACH: ("rds:RemoveFromGlobalCluster",),
        }[p.mode]
        return [
            IamStatement(actions=("rds:DescribeGlobalClusters",), resources=(gc_arn,)),
            IamStatement(
                actions=("rds:AddTagsToResource", "rds:DescribeDBClusters"),
                resources=(cluster_arn,),
            ),
            # These act on both: the global cluster and the cluster that becomes the writer.
            IamStatement(actions=moves, resources=(gc_arn, cluster_arn)),
        ]

    async def _mark(self, client: Any, ctx: StepContext, arn: str) -> None:
        async with aws_errors():
            await client.add_tags_to_resource(
                ResourceName=arn, Tags=[{"Key": PROMOTED_BY_TAG, "Value": ctx.run_id[:256]}]
            )

    def _changed(
        self,
        ctx: StepContext,
        mode: str,
        gc_id: str,
        arn: str,
        why: str,
        previous: str | None = None,
    ) -> ExecuteOutcome:
        call = CALLS.get(mode, "RemoveFromGlobalCluster")
        log.info(
            "aurora_global_writer_moved",
            service=ctx.service,
            run_id=ctx.run_id,
            step=ctx.step,
            mode=mode,
            call=call,
            why=why,
            global_cluster=gc_id,
            target=arn,
            previous_writer=previous,
        )
        return ExecuteOutcome(changed=True, detail=f"{call} of {gc_id} to {arn}: {why}")
