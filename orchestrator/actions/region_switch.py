"""``arc.region_switch``: execute an ARC Region switch plan and follow it to its end.

failoverd decides (quorum of vantage points, staleness, RPO guards, policy tests); the plan
moves the application (its own execution blocks: Aurora, scaling, routing controls...). The
step:

* **starts one execution** (``StartPlanExecution``: the plan, its target region,
  ``activate``/``deactivate``, ``graceful`` or ``ungraceful``) with a client token derived from
  the run id and the step name, and a comment carrying the same token. Before starting, it
  looks for the execution it may already have started: first in its own journaled notes
  (the execution id and region are journaled before any waiting), then, on a re-entered
  attempt, with ``ListPlanExecutions`` in each region (the comment's token). A re-entered
  step — a retry, or a resume after the daemon was killed — follows that execution; it
  never starts a second.
* **calls Region switch where the plan is executed from**: the region being recovered into
  (the run's target region), the other region of the plan as the fallback. Every call it
  makes is a regional data-plane call (``GetPlanInRegion``, not ``GetPlan``, which
  botocore's endpoint rules send to the control plane in us-east-1), so neither the failing
  region nor us-east-1 is needed. ``StartPlanExecution`` moves to the fallback region only
  when the first region could not be connected to at all (the request never left): after
  any other failure the execution may exist there, and client tokens are regional, so the
  step retries the same region instead (the next attempt looks for the execution first).
  Executions are regional too: an execution is followed, approved and cancelled in the
  region it was started in.
* **follows** it (``GetPlanExecution``, ``ListPlanExecutionEvents``) until it ends, journaling
  each new event as a progress note of the step: the plan's steps with their status and
  times reach the API, the status page, the metrics and the post-incident report.
* **passes approvals on**: a plan step pending manual approval shows as the run waiting for
  an approval; ``failoverd approve`` records it (under ``<step>/<plan step>``), and the step
  calls ``ApprovePlanExecutionStep`` with the approver and their reason as the comment.
* **cancels** the execution (``CancelPlanExecution``) when the run gives the step up: its
  last attempt timed out. A daemon that stops or loses its lease leaves it running: the
  resumed step follows it.
* ``check`` reads the plan (``GetPlanInRegion``) and its evaluation
  (``GetPlanEvaluationStatus``): active warnings, or an evaluation that is not ``passed``,
  make the step not ready, with the warnings as findings; a plan without a workflow for the
  move, or with another execution under way, is not ready either.

``completed``, ``completedWithExceptions`` and ``completedMonitoringApplicationHealth`` end
the step successfully (the last two say so in its detail); ``failed``, ``canceled`` and
``planExecutionTimedOut`` fail it (not retryable: a new execution is an operator's call); a
paused execution (``pausedByFailedStep``, ``pausedByOperator``) is followed until someone
resumes it in Region switch or the step's timeout ends the wait.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import (  # type: ignore[import-untyped]
    ConnectTimeoutError,
    EndpointConnectionError,
)
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
from orchestrator.actions.errors import aws_errors
from orchestrator.actions.moves import move_style_of
from orchestrator.policy.actions import ArcRegionSwitch as Params
from orchestrator.runbook.journal import approval_key
from orchestrator.signals.aws_clients import error_code
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions.region_switch")

SERVICE = "arc-region-switch"
SUCCEEDED = frozenset(
    {"completed", "completedWithExceptions", "completedMonitoringApplicationHealth"}
)
FAILED = frozenset({"failed", "canceled", "planExecutionTimedOut"})
ACTIVE = frozenset(
    {"pending", "inProgress", "pendingManualApproval", "pausedByFailedStep", "pausedByOperator"}
)
COMMENT_MAX = 1024
MAX_PAGES = 50  # 100 items a page: far more than any plan has steps or events
CANCEL_WITHIN = 10.0  # seconds a cancellation may take once the step is given up
# A Region switch event type -> the sub-step status it means for the plan step it names.
EVENT_STATUS = {
    "stepStarted": "running",
    "stepPendingApproval": "waiting_approval",
    "stepSucceeded": "succeeded",
    "stepFailed": "failed",
    "stepPausedByError": "failed",
    "stepSkipped": "skipped",
    "stepCanceled": "cancelled",
}
# Operations whose failure to connect moves the call to the plan's other region.
_UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError)


def client_token(run_id: str, step: str) -> str:
    """The StartPlanExecution client token of a run's step: the same on every attempt and
    after a restart, different for every run and step (1-128 printable ASCII characters)."""
    digest = hashlib.sha256(f"{run_id}\0{step}".encode()).hexdigest()[:32]
    return f"failoverd-{digest}"


def planned_move(ctx: StepContext) -> tuple[bool, str]:
    """Whether the run's move must be graceful (no data may be lost), and why: the one rule
    every action with both flavours follows (:func:`orchestrator.actions.moves.move_style`):
    a switchover, a failback or a drill is planned; a failover is graceful only when the
    decision saw the source region still up (``source_verdict`` healthy or degraded); a
    source down, or of unknown health (no facts), makes it ungraceful."""
    style = move_style_of(ctx)
    return style.graceful, style.reason


def execution_mode(mode: str, ctx: StepContext) -> str:
    if mode != "auto":
        return mode
    return "graceful" if planned_move(ctx)[0] else "ungraceful"


def plan_target(p: Params, ctx: StepContext) -> str:
    """The execution's targetRegion: the step's ``target_region``, else the region activated
    (the run's target) or deactivated (the run's source)."""
    if p.target_region is not None:
        return p.target_region
    return ctx.target_region if p.action == "activate" else ctx.source_region


def call_regions(ctx: StepContext) -> list[str]:
    """Where to call Region switch, in order: the region recovered into, then the other."""
    return list(dict.fromkeys([ctx.target_region, ctx.source_region]))


def comment_for(ctx: StepContext, p: Params) -> str:
    text = (
        f"failoverd {ctx.kind} of {ctx.service} {ctx.source_region}->{ctx.target_region},"
        f" run {ctx.run_id} step {ctx.step} [{client_token(ctx.run_id, ctx.step)}]"
    )
    if p.comment:
        text += f": {p.comment}"
    return text[:COMMENT_MAX]


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass(frozen=True)
class Execution:
    id: str
    region: str


def journaled_execution(history: Sequence[Mapping[str, Any]]) -> Execution | None:
    """The execution an earlier attempt of the step journaled, if any."""
    for note in reversed(history):
        ex_id, region = note.get("execution_id"), note.get("region")
        if isinstance(ex_id, str) and isinstance(region, str) and note.get("execution"):
            return Execution(ex_id, region)
    return None


def event_note(event: Mapping[str, Any]) -> dict[str, Any]:
    """The progress note journaled for one Region switch execution event."""
    kind = str(event.get("type", "unknown"))
    step = event.get("stepName")
    at = _epoch(event.get("timestamp"))
    words = [kind]
    if isinstance(step, str):
        words.append(step)
    text = " ".join(words)
    extra = event.get("error") or event.get("description")
    if isinstance(extra, str) and extra:
        text += f": {extra}"
    note: dict[str, Any] = {"event_id": str(event.get("eventId")), "event": kind, "note": text}
    if at is not None:
        note["at"] = at
    status = EVENT_STATUS.get(kind)
    if isinstance(step, str) and status is not None:
        sub: dict[str, Any] = {"name": step, "status": status}
        if at is not None:
            sub["at"] = at
        block = event.get("executionBlockType")
        if isinstance(block, str):
            sub["kind"] = block
        error = event.get("error")
        if isinstance(error, str) and error:
            sub["error"] = error
        note["substep"] = sub
        if status == "waiting_approval":
            note["awaiting_approval"] = step
    return note


class RegionSwitch(Action):
    """See the module docstring."""

    name = "arc.region_switch"
    params_model = Params

    # -- check -------------------------------------------------------------------------------
    async def check(self, ctx: StepContext) -> CheckReport:
        p = typed_params(ctx, Params)
        target = plan_target(p, ctx)
        unreachable: list[str] = []
        for region in call_regions(ctx):
            try:
                async with self._client(ctx, region) as client:
                    async with aws_errors():
                        plan = (await client.get_plan_in_region(arn=p.plan_arn))["plan"]
                    warnings, state = await _evaluation(client, p.plan_arn)
                    executions = await _executions(client, p.plan_arn)
            except RetryableError as exc:
                unreachable.append(f"{region}: {exc}")
                continue
            except ActionFailed as exc:
                if error_code(exc.__cause__ or exc) == "ResourceNotFoundException":
                    return CheckReport(
                        ready=False, findings=(f"plan {p.plan_arn} not found in {region}",)
                    )
                raise
            return self._judge(ctx, p, target, region, plan, state, warnings, executions)
        raise RetryableError(
            "Region switch could not be reached in any region of the move: "
            + "; ".join(unreachable)
        )

    def _judge(
        self,
        ctx: StepContext,
        p: Params,
        target: str,
        region: str,
        plan: Mapping[str, Any],
        state: str,
        warnings: Sequence[Mapping[str, Any]],
        executions: Sequence[Mapping[str, Any]],
    ) -> CheckReport:
        problems: list[str] = []
        info: list[str] = []
        regions = list(plan.get("regions") or [])
        if target not in regions:
            problems.append(f"{target} is not one of the plan's regions {regions}")
        steps = _workflow_steps(plan, p.action, target)
        if steps is None:
            problems.append(f"the plan has no {p.action} workflow for {target}")
        else:
            for step in steps:
                if step.get("executionBlockType") == "ManualApproval":
                    info.append(
                        f"plan step {step.get('name')} waits for a manual approval:"
                        f" failoverd approve {ctx.service}"
                    )
        if state != "passed":
            problems.append(f"plan evaluation is {state} (read in {region})")
        for w in warnings:
            where = f" (plan step {w['stepName']})" if w.get("stepName") else ""
            problems.append(f"plan evaluation warning{where}: {w.get('warningMessage', '?')}")
        marker = client_token(ctx.run_id, ctx.step)
        for ex in executions:
            if ex.get("executionState") not in ACTIVE:
                continue
            if marker in str(ex.get("comment", "")):
                info.append(f"execution {ex.get('executionId')} of this step is under way")
            else:
                problems.append(
                    f"execution {ex.get('executionId')} of the plan is"
                    f" {ex.get('executionState')} in {region}: Region switch runs one at a time"
                )
        return CheckReport(ready=not problems, findings=tuple(problems + info))

    # -- execute -----------------------------------------------------------------------------
    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, Params)
        mode = execution_mode(p.mode, ctx)
        why = f"mode {p.mode}" if p.mode != "auto" else planned_move(ctx)[1]
        target = plan_target(p, ctx)
        execution = journaled_execution(ctx.history)
        started = False
        if execution is None:
            # The step's first attempt ever cannot have started anything: no lookups (with
            # the source region down, each would cost a connect timeout or more).
            execution = None if ctx.attempt <= 1 else await self._find(ctx, p)
            if execution is None:
                execution = await self._start(ctx, p, target, mode)
                started = True
            verb = "started" if started else "found"
            await self._note(
                ctx,
                {
                    "execution": verb,
                    "execution_id": execution.id,
                    "region": execution.region,
                    "plan_arn": p.plan_arn,
                    "action": p.action,
                    "target_region": target,
                    "mode": mode,
                    "mode_reason": why,
                    "note": f"execution {execution.id} {verb} in {execution.region}:"
                    f" {p.action} {target}, {mode} ({why})",
                },
            )
        else:
            log.info(
                "region_switch_execution_resumed",
                service=ctx.service,
                run_id=ctx.run_id,
                step=ctx.step,
                execution=execution.id,
                region=execution.region,
            )
        try:
            state = await self._follow(ctx, p, execution)
        except asyncio.CancelledError:
            reason = ctx.cancel_reason()
            if reason is not None:
                await self._cancel(ctx, p, execution, reason)
            raise
        detail = f"execution {execution.id} in {execution.region} {state}"
        if state != "completed":
            log.warning(
                "region_switch_execution_ended",
                service=ctx.service,
                run_id=ctx.run_id,
                execution=execution.id,
                state=state,
            )
        return ExecuteOutcome(changed=True, detail=detail)

    async def _find(self, ctx: StepContext, p: Params) -> Execution | None:
        """This step's execution, if one was started (its comment carries the token)."""
        marker = client_token(ctx.run_id, ctx.step)
        for region in call_regions(ctx):
            try:
                async with self._client(ctx, region) as client:
                    for ex in await _executions(client, p.plan_arn):
                        if marker in str(ex.get("comment", "")):
                            return Execution(str(ex["executionId"]), region)
            except RetryableError as exc:
                log.warning(
                    "region_switch_lookup_failed",
                    service=ctx.service,
                    run_id=ctx.run_id,
                    region=region,
                    error=str(exc),
                )
        return None

    async def _start(self, ctx: StepContext, p: Params, target: str, mode: str) -> Execution:
        regions = call_regions(ctx)
        for i, region in enumerate(regions):
            try:
                async with self._client(ctx, region) as client, aws_errors():
                    answer = await client.start_plan_execution(
                        planArn=p.plan_arn,
                        targetRegion=target,
                        action=p.action,
                        mode=mode,
                        comment=comment_for(ctx, p),
                        clientToken=client_token(ctx.run_id, ctx.step),
                    )
            except RetryableError as exc:
                if isinstance(exc.__cause__, _UNREACHABLE) and i + 1 < len(regions):
                    log.warning(
                        "region_switch_region_unreachable",
                        service=ctx.service,
                        run_id=ctx.run_id,
                        region=region,
                        fallback=regions[i + 1],
                        error=str(exc),
                    )
                    continue
                raise
            execution = Execution(str(answer["executionId"]), region)
            log.info(
                "region_switch_execution_started",
                service=ctx.service,
                run_id=ctx.run_id,
                step=ctx.step,
                execution=execution.id,
                region=region,
                plan=p.plan_arn,
                action=p.action,
                target=target,
                mode=mode,
            )
            return execution
        raise ActionFailed("no region to start the Region switch execution in")  # unreachable

    async def _follow(self, ctx: StepContext, p: Params, execution: Execution) -> str:
        """Journal the execution's events and pass approvals on until it ends; its final
        state, or ActionFailed for a failed one."""
        seen = {str(n["event_id"]) for n in ctx.history if "event_id" in n}
        approved = {str(n["approved"]) for n in ctx.history if isinstance(n.get("approved"), str)}
        last_error = ""
        async with self._client(ctx, execution.region) as client:
            while True:
                try:
                    async with aws_errors():
                        got = await _paged(
                            client.get_plan_execution,
                            "stepStates",
                            planArn=p.plan_arn,
                            executionId=execution.id,
                        )
                        listed = await _paged(
                            client.list_plan_execution_events,
                            "items",
                            planArn=p.plan_arn,
                            executionId=execution.id,
                        )
                    events: list[Mapping[str, Any]] = list(listed["items"])
                except RetryableError as exc:
                    log.warning(
                        "region_switch_poll_failed",
                        service=ctx.service,
                        run_id=ctx.run_id,
                        execution=execution.id,
                        error=str(exc),
                    )
                else:
                    fresh = [e for e in events if str(e.get("eventId")) not in seen]
                    fresh.sort(key=lambda e: _epoch(e.get("timestamp")) or 0.0)
                    for event in fresh:
                        await self._note(ctx, event_note(event))
                        seen.add(str(event.get("eventId")))
                        if event.get("error"):
                            last_error = str(event["error"])
                    state = str(got.get("executionState", ""))
                    if state in SUCCEEDED:
                        return state
                    if state in FAILED:
                        why = f": {last_error}" if last_error else ""
                        raise ActionFailed(
                            f"Region switch execution {execution.id} in {execution.region}"
                            f" ended {state}{why}"
                        )
                    pending = [
                        str(s.get("name"))
                        for s in got.get("stepStates") or []
                        if s.get("status") == "pendingApproval"
                    ]
                    for name in pending:
                        if name not in approved and await self._pass_approval(
                            ctx, p, client, execution, name
                        ):
                            approved.add(name)
                remaining = ctx.remaining()
                if remaining <= 0:
                    raise RetryableError(
                        f"Region switch execution {execution.id} still running at the step's"
                        " deadline"
                    )
                await ctx.clock.sleep(min(p.poll_interval, remaining))

    async def _pass_approval(
        self, ctx: StepContext, p: Params, client: Any, execution: Execution, name: str
    ) -> bool:
        """Approve plan step ``name`` when an operator has approved it in failoverd."""
        if ctx.approvals is None:
            return False
        record = await ctx.approvals.approval(ctx.service, ctx.run_id, approval_key(ctx.step, name))
        if record is None:
            return False
        comment = f"{record.reason or 'approved'} (approved by {record.by} with failoverd"
        comment = f"{comment}, run {ctx.run_id})"[:COMMENT_MAX]
        try:
            async with aws_errors():
                await client.approve_plan_execution_step(
                    planArn=p.plan_arn,
                    executionId=execution.id,
                    stepName=name,
                    approval="approve",
                    comment=comment,
                )
        except ActionFailed as exc:
            if error_code(exc.__cause__ or exc) != "ResourceNotFoundException":
                raise
            # No longer pending (approved already, e.g. by an attempt cut short after the
            # call): the execution's events say what became of it.
            log.info("region_switch_step_not_pending", run_id=ctx.run_id, plan_step=name)
            return True
        except RetryableError as exc:
            log.warning("region_switch_approve_failed", run_id=ctx.run_id, error=str(exc))
            return False
        await self._note(
            ctx,
            {
                "approved": name,
                "by": record.by,
                "reason": record.reason,
                "note": f"plan step {name} approved by {record.by}: {record.reason}",
            },
        )
        log.info(
            "region_switch_step_approved",
            service=ctx.service,
            run_id=ctx.run_id,
            execution=execution.id,
            plan_step=name,
            by=record.by,
            reason=record.reason,
        )
        return True

    async def _cancel(self, ctx: StepContext, p: Params, execution: Execution, why: str) -> None:
        """Stop the execution the run has given up on (bounded; never raises)."""
        try:
            async with (
                asyncio.timeout(CANCEL_WITHIN),
                self._client(ctx, execution.region) as client,
                aws_errors(),
            ):
                await client.cancel_plan_execution(
                    planArn=p.plan_arn,
                    executionId=execution.id,
                    comment=f"failoverd: {why}"[:COMMENT_MAX],
                )
                await self._note(
                    ctx,
                    {
                        "cancelled": execution.id,
                        "note": f"execution {execution.id} cancelled: {why}",
                    },
                )
        except Exception as exc:  # the step fails either way; say what could not be done
            log.error(
                "region_switch_cancel_failed",
                service=ctx.service,
                run_id=ctx.run_id,
                execution=execution.id,
                error=str(exc) or type(exc).__name__,
            )
            return
        log.warning(
            "region_switch_execution_cancelled",
            service=ctx.service,
            run_id=ctx.run_id,
            execution=execution.id,
            why=why,
        )

    # -- verify ------------------------------------------------------------------------------
    async def verify(self, ctx: StepContext) -> None:
        """Read back, independently of ``execute``, that this step's execution completed."""
        p = typed_params(ctx, Params)
        marker = client_token(ctx.run_id, ctx.step)
        for region in call_regions(ctx):
            try:
                async with self._client(ctx, region) as client:
                    executions = await _executions(client, p.plan_arn)
            except RetryableError:
                continue
            for ex in executions:
                if marker in str(ex.get("comment", "")):
                    state = ex.get("executionState")
                    if state in SUCCEEDED:
                        return
                    raise ActionFailed(f"execution {ex.get('executionId')} is {state}")
        raise RetryableError("this step's Region switch execution could not be read back")

    # -- IAM ---------------------------------------------------------------------------------
    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        # Region switch's regional data plane in the region recovered into (the other region
        # of the plan only as a fallback): neither the region left nor us-east-1 is needed.
        return (ApiDependency(SERVICE, "StartPlanExecution", target_region, "data"),)

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        p = typed_params(params, Params)
        return [
            IamStatement(
                actions=(
                    "arc-region-switch:ApprovePlanExecutionStep",
                    "arc-region-switch:CancelPlanExecution",
                    "arc-region-switch:GetPlanEvaluationStatus",
                    "arc-region-switch:GetPlanExecution",
                    "arc-region-switch:GetPlanInRegion",
                    "arc-region-switch:ListPlanExecutionEvents",
                    "arc-region-switch:ListPlanExecutions",
                    "arc-region-switch:StartPlanExecution",
                ),
                resources=(p.plan_arn,),
            )
        ]

    # -- helpers -----------------------------------------------------------------------------
    @asynccontextmanager
    async def _client(self, ctx: StepContext, region: str) -> AsyncIterator[Any]:
        async with ctx.aws.client(SERVICE, region) as client:
            yield client

    async def _note(self, ctx: StepContext, detail: Mapping[str, Any]) -> None:
        if ctx.progress is not None:
            await ctx.progress(detail)


async def _paged(call: Any, key: str, **params: Any) -> dict[str, Any]:
    """Every page of ``call`` merged: ``key``'s lists joined, the rest from the first page."""
    first: dict[str, Any] = {}
    items: list[Any] = []
    token: str | None = None
    for _ in range(MAX_PAGES):
        page = await call(**params, **({"nextToken": token} if token else {}))
        if not first:
            first = dict(page)
        items.extend(page.get(key) or [])
        token = page.get("nextToken")
        if not token:
            break
    first[key] = items
    return first


async def _evaluation(client: Any, arn: str) -> tuple[list[Mapping[str, Any]], str]:
    async with aws_errors():
        status = await _paged(client.get_plan_evaluation_status, "warnings", planArn=arn)
    active = [w for w in status["warnings"] if w.get("warningStatus", "active") == "active"]
    return active, str(status.get("evaluationState", "unknown"))


async def _executions(client: Any, arn: str) -> list[Mapping[str, Any]]:
    async with aws_errors():
        listed = await _paged(client.list_plan_executions, "items", planArn=arn)
    return list(listed["items"])


def _workflow_steps(
    plan: Mapping[str, Any], action: str, target: str
) -> list[Mapping[str, Any]] | None:
    generic: list[Mapping[str, Any]] | None = None
    for workflow in plan.get("workflows") or []:
        if workflow.get("workflowTargetAction") != action:
            continue
        region = workflow.get("workflowTargetRegion")
        if region == target:
            return list(workflow.get("steps") or [])
        if region is None and generic is None:
            generic = list(workflow.get("steps") or [])
    return generic
