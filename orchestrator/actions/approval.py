"""The ``approval`` action: a gate that holds a run until an operator approves the step.

Approvals arrive from any daemon instance (API, CLI, MQTT) and are recorded in the store;
this action only reads them, through ``ctx.approvals``. It changes nothing in the world, so
re-entering it after a crash simply looks again (an approval already recorded still counts).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from orchestrator.actions.base import (
    Action,
    ActionFailed,
    ApiDependency,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    StepContext,
    typed_params,
)
from orchestrator.policy.actions import Approval as ApprovalParams
from orchestrator.policy.durations import format_duration
from orchestrator.store.base import StoreUnavailable
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions.approval")

# Humans approve in seconds to minutes: a look every second is prompt enough and costs the
# store next to nothing.
POLL_INTERVAL = 1.0


class Approval(Action):
    """Wait until ``ctx.approvals.approved(service, run_id, step)`` holds, or fail with
    "approval timed out" at ``ctx.deadline``. A store that cannot be read counts as "not
    approved yet" (never as approved): the gate keeps waiting and says so in the log."""

    name = "approval"
    params_model = ApprovalParams

    async def check(self, ctx: StepContext) -> CheckReport:
        typed_params(ctx, ApprovalParams)
        return CheckReport(ready=True)

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        params = typed_params(ctx, ApprovalParams)
        approvals = ctx.approvals
        if approvals is None:
            raise ActionFailed("approval step has no approval store to read from")
        log.info(
            "approval_waiting",
            service=ctx.service,
            run_id=ctx.run_id,
            step=ctx.step,
            message=params.message,
        )
        started = ctx.clock.monotonic()
        store_down = False
        while True:
            try:
                if await approvals.approved(ctx.service, ctx.run_id, ctx.step):
                    break
                store_down = False
            except StoreUnavailable as exc:
                if not store_down:  # once per outage, not once per look
                    log.warning(
                        "approval_store_unavailable",
                        service=ctx.service,
                        run_id=ctx.run_id,
                        step=ctx.step,
                        error=str(exc),
                    )
                store_down = True
            remaining = ctx.remaining()
            if remaining <= 0:
                waited = format_duration(ctx.clock.monotonic() - started)
                raise ActionFailed(f"approval timed out after {waited}: {params.message!r}")
            await ctx.clock.sleep(min(POLL_INTERVAL, remaining))
        log.info("approval_granted", service=ctx.service, run_id=ctx.run_id, step=ctx.step)
        return ExecuteOutcome(changed=False, detail="approved")

    async def verify(self, ctx: StepContext) -> None:
        return None

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        return ()  # the state store and an operator

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        return []
