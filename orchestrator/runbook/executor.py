"""The runbook executor: a run's steps as a DAG, journaled, resumable, timed against the RTO.

A run is the steps of one runbook (failover, switchover or failback) for one decision.
Every step waits for the steps in its ``after``; steps whose dependencies have ended run
concurrently, each in its own task of the run's :class:`asyncio.TaskGroup`.

One attempt of a step:

1. ``step_started`` (intent, with the attempt number) is committed to the store;
2. ``check`` (on a step's first attempt ever, a check that is not ready fails the step
   before anything is touched; on a re-entry the world may already show the step's own
   effect, so the idempotent ``execute`` decides), then ``execute`` and ``verify``, all
   under the step's ``timeout`` (on the injected clock; the same deadline is in the
   :class:`~orchestrator.actions.base.StepContext`);
3. ``step_succeeded`` (with what execute changed) or ``step_failed`` (error, retryable).

Retryable failures (throttling, 5xx, timeouts, connection errors) are retried up to the
step's ``retries`` with exponential backoff and full jitter; others are final at once. A
step that fails for good with ``on_failure: abort`` fails the run: steps that have not
started are journaled ``step_skipped``, steps in flight finish (cancelling an RDS promotion
halfway would leave the world in a state nobody planned for). With ``continue`` the
dependents still run and the run can succeed.

Aborting (:meth:`Executor.abort`, an operator's ``abort``): the run ends as failed with the
abort's error whatever the steps' ``on_failure``. Steps in flight are cancelled at once (the
action sees :attr:`~orchestrator.actions.base.StepContext.cancel_reason` say why, e.g. to
cancel a Region switch execution) and journaled ``step_failed``, their effect perhaps landed;
a step waiting to retry is failed without retrying; steps not started are ``step_skipped``.
The abort is journaled in the run (see :mod:`orchestrator.runbook.journal`) before it takes
effect, so a run resumed after a crash mid-abort ends the same way, re-entering nothing.
Unlike a shutdown or a lost lease, which leave the run unfinished for the next leader.

Fencing: every record carries the token from the ``token`` provider (the daemon's leader
lease). A :class:`~orchestrator.store.base.FencedOut` or
:class:`~orchestrator.store.base.StoreUnavailable` stops the whole run at once (the other
steps' tasks are cancelled) and is raised to the caller: without a journal nothing may touch
the world. The run stays unfinished in the journal, and the next leader resumes it.

Resuming (:meth:`Executor.resume_unfinished`): each unfinished run is rebuilt from its
journal (see :mod:`orchestrator.runbook.journal`). Succeeded, failed and skipped steps are
not redone; an interrupted step (``step_started`` with no end) is re-entered with the next
attempt number through ``check``/``execute``, which read the world and act only if needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from orchestrator.actions.base import Action, ActionFailed, ExecuteOutcome, StepContext
from orchestrator.actions.moves import KIND, run_facts
from orchestrator.actions.registry import get_action
from orchestrator.actions.render import render_params
from orchestrator.clock import Clock
from orchestrator.engine.state import (
    Decision,
    Initiator,
    RunInfo,
    RunStatus,
    ServiceState,
    apply_decision,
    finish_run,
    set_waiting_approval,
)
from orchestrator.engine.vocabulary import Action as RunKind
from orchestrator.policy.actions import APPROVAL_ACTION
from orchestrator.policy.durations import format_duration
from orchestrator.policy.models import OnFailure, Policy, Step
from orchestrator.runbook.deadline import clock_timeout
from orchestrator.runbook.journal import (
    FINAL_STEP_STATUSES,
    JournalError,
    RunHeader,
    RunJournal,
    StepHistory,
    StepStatus,
    fold,
)
from orchestrator.runbook.retry import Backoff, Failure, classify
from orchestrator.runbook.rto import (
    RunProgress,
    progress_from_records,
    rto_clock_start,
    rto_remaining,
)
from orchestrator.signals.aws_clients import AwsClients
from orchestrator.store.base import (
    CorruptState,
    FencedOut,
    JournalRecord,
    JournalStatus,
    Store,
    StoreError,
    StoreUnavailable,
)
from orchestrator.telemetry import (
    RUN_DURATION,
    RUNBOOK_STEP_ATTEMPTS,
    RUNBOOK_STEP_DURATION,
    RUNS_FINISHED,
    RUNS_STARTED,
    get_logger,
)

log = get_logger("failoverd.runbook")

TokenProvider = Callable[[], int | None]
ActionLookup = Callable[[str], Action]

_RUN_KINDS = frozenset({RunKind.FAILOVER.value, RunKind.SWITCHOVER.value, RunKind.FAILBACK.value})
T = TypeVar("T")


class NotLeader(FencedOut):
    """The token provider has no lease: this instance must not write or act."""


class RunRejected(ValueError):
    """``start_run`` was asked for something that is not a valid run."""


def new_run_id(service: str) -> str:
    return f"{service}-{uuid.uuid4().hex[:16]}"


@dataclass
class _Run:
    """A run being driven: its plan, its steps' histories (kept in step with the journal),
    and whether it was aborted (the abort's error, for ``run_failed``): by a failed step, or
    by an operator (``aborted``, with ``stop`` set to cut the steps in flight short)."""

    header: RunHeader
    steps: dict[str, StepHistory]
    ended: dict[str, asyncio.Event] = field(default_factory=dict)
    abort_error: str | None = None
    log: Any = None
    aborted: str | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def abort(self, why: str) -> None:
        if self.aborted is not None:
            return
        self.aborted = why
        self.abort_error = why if self.abort_error is None else f"{self.abort_error}; then {why}"
        self.stop.set()


class Executor:
    """Runs and resumes runbook runs. One instance per daemon; runs may overlap (different
    services). Methods raise :class:`FencedOut` (including :class:`NotLeader`) and
    :class:`StoreUnavailable` when the journal cannot be written; everything an action
    raises is journaled as that step's failure instead."""

    def __init__(
        self,
        store: Store,
        aws: AwsClients,
        clock: Clock,
        *,
        token: TokenProvider,
        actions: ActionLookup = get_action,
        rng: random.Random | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._store = store
        self._aws = aws
        self._clock = clock
        self._token = token
        self._actions = actions
        self._rng = rng or random.Random()
        self._backoff = backoff or Backoff()
        self._runs: dict[str, _Run] = {}  # the runs being driven now, by id

    # -- public API ----------------------------------------------------------------------
    async def start_run(
        self,
        policy: Policy,
        decision: Decision,
        state: ServiceState,
        *,
        run_id: str | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> str:
        """Journal ``run_started`` for ``decision`` (a failover, switchover or failback of
        ``policy``'s service away from ``state.active_region``), record the run in the
        service state, and drive the run to its end. Returns the run id; the outcome is in
        :meth:`progress` and the service state. ``facts`` (JSON values, see
        :func:`orchestrator.actions.moves.run_facts`: drill, the source's verdict, the
        target's lag) reach every step's context with the run's kind, e.g. for Aurora's
        choice between a switchover and a failover."""
        header = self._plan(policy, decision, state, run_id or new_run_id(policy.service), facts)
        if state.run is None or state.run.id != header.run_id:
            state = apply_decision(state, decision, header.run_id)
        record = await self._append(header, JournalStatus.RUN_STARTED, detail=header.detail())
        RUNS_STARTED.labels(header.service, header.kind, decision.initiated_by.value).inc()
        await self._save_state(state)
        run = self._new_run(fold([record]))
        run.log.info(
            "run_started",
            kind=header.kind,
            source=header.source,
            target=header.target,
            steps=len(header.steps),
            rto_remaining=self._rto_remaining(header),
        )
        await self._drive(run)
        return header.run_id

    async def resume_unfinished(self) -> list[str]:
        """Resume every run the journal shows unfinished, concurrently; returns their ids
        when all have ended. Call it on becoming leader, before starting new runs."""
        run_ids = list(await self._guard(self._store.unfinished_runs()))
        runs: list[_Run] = []
        for run_id in run_ids:
            records = await self._guard(self._store.read_run(run_id))
            try:
                journal = fold(records)
            except JournalError as exc:
                await self._fail_unreadable(run_id, records, exc)
                continue
            if journal.corrupt:
                log.warning(
                    "run_resumed_without_corrupt_records",
                    run_id=run_id,
                    records=[r.detail for r in journal.corrupt],
                )
            run = self._new_run(journal)
            await self._adopt_state(journal.header)
            run.log.info(
                "run_resumed",
                kind=journal.header.kind,
                steps={name: h.status.value for name, h in journal.steps.items()},
                rto_remaining=self._rto_remaining(journal.header),
            )
            runs.append(run)
        await _first_store_error(self._drive_all(runs))
        return run_ids

    def driving(self, service: str) -> str | None:
        """The id of the run of ``service`` this executor drives now, if any."""
        for run in self._runs.values():
            if run.header.service == service and not run.finished.is_set():
                return run.header.run_id
        return None

    def abort(self, run_id: str, why: str) -> bool:
        """End the run as failed with the error ``why`` (journal the abort first, see
        :mod:`orchestrator.runbook.journal`): its steps in flight are cancelled with ``why``
        as their cancel reason, its other steps end without running. Returns at once; False
        when this executor drives no such run (never started here, or ended)."""
        run = self._runs.get(run_id)
        if run is None or run.finished.is_set():
            return False
        run.log.warning("run_aborting", why=why)
        run.abort(why)
        return True

    async def wait_finished(self, run_id: str, within: float) -> bool:
        """Wait up to ``within`` seconds (loop time) for the run to end; True when it has
        (or this executor does not drive it)."""
        run = self._runs.get(run_id)
        if run is None:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await run.finished.wait()
        return run.finished.is_set()

    async def progress(self, run_id: str) -> RunProgress | None:
        """The run's progress now, from its journal; None for an unknown run id."""
        records = await self._guard(self._store.read_run(run_id))
        if not records:
            return None
        return progress_from_records(records, self._clock.now())

    # -- planning ------------------------------------------------------------------------
    def _plan(
        self,
        policy: Policy,
        decision: Decision,
        state: ServiceState,
        run_id: str,
        facts: Mapping[str, Any] | None,
    ) -> RunHeader:
        kind = str(decision.action)
        if kind not in _RUN_KINDS or decision.target is None:
            raise RunRejected(
                f"decision for {decision.service!r} does not start a run "
                f"(action {kind!r}, target {decision.target!r})"
            )
        if not (policy.service == decision.service == state.service):
            raise RunRejected(
                f"policy, decision and state name different services: {policy.service!r}, "
                f"{decision.service!r}, {state.service!r}"
            )
        if decision.target not in policy.regions:
            raise RunRejected(
                f"target {decision.target!r} is not one of {policy.service}'s regions "
                f"{policy.regions}"
            )
        if decision.target == state.active_region:
            raise RunRejected(f"{decision.target!r} is already {policy.service}'s active region")
        if state.running and state.run is not None and state.run.id != run_id:
            raise RunRejected(f"{policy.service} already has run {state.run.id} in progress")
        # Every run has its kind and the drill flag among its facts, whoever started it (see
        # orchestrator.actions.moves); the caller's facts add to them (verdict, lag).
        given = {**run_facts(kind, source_region=state.active_region), **dict(facts or {})}
        given[KIND] = kind
        try:
            facts_json = json.loads(json.dumps(given))
        except (TypeError, ValueError) as exc:
            raise RunRejected(f"run facts must be JSON values: {exc}") from exc
        # Each step carries the role it acts as (its own, or the policy's), so that the plan
        # in the journal says who did what, and a reload cannot change it mid-run.
        steps = tuple(
            s
            if s.aws is not None or policy.aws is None
            else s.model_copy(update={"aws": policy.aws})
            for s in policy.runbooks.for_kind(kind)
        )
        _check_dag(policy.service, kind, steps)
        return RunHeader(
            run_id=run_id,
            service=policy.service,
            kind=kind,
            source=state.active_region,
            target=decision.target,
            primary=policy.primary,
            policy_version=decision.policy_version,
            rto=policy.rto,
            decided_at=decision.at,
            detected_at=decision.detected_at,
            steps=steps,
            facts=facts_json,
        )

    def _new_run(self, journal: RunJournal) -> _Run:
        header = journal.header
        run = _Run(header, dict(journal.steps))
        run.ended = {s.name: asyncio.Event() for s in header.steps}
        run.log = log.bind(
            run_id=header.run_id, service=header.service, policy_version=header.policy_version
        )
        if journal.aborted is not None:
            run.abort(journal.aborted)  # a crash mid-abort: end it as aborted
            return run
        for s in header.steps:
            history = run.steps[s.name]
            if history.status is StepStatus.FAILED and s.on_failure is OnFailure.ABORT:
                run.abort_error = _abort_error(s, history.error)
        return run

    # -- driving a run -------------------------------------------------------------------
    async def _drive_all(self, runs: Sequence[_Run]) -> None:
        async with asyncio.TaskGroup() as tg:
            for run in runs:
                tg.create_task(self._drive(run), name=f"run-{run.header.run_id}")

    async def _drive(self, run: _Run) -> None:
        self._runs[run.header.run_id] = run
        try:
            await self._finish(run)
        finally:
            run.finished.set()
            self._runs.pop(run.header.run_id, None)

    async def _finish(self, run: _Run) -> None:
        try:
            await _first_store_error(self._steps(run))
        except StoreError as exc:
            run.log.error("run_interrupted", error=type(exc).__name__, detail=str(exc))
            raise
        header = run.header
        ok = run.abort_error is None
        error = run.abort_error or ""
        await self._settle_state(header, ok, error)
        status = JournalStatus.RUN_SUCCEEDED if ok else JournalStatus.RUN_FAILED
        await self._append(header, status, error=error)
        outcome = "succeeded" if ok else "failed"
        RUNS_FINISHED.labels(header.service, header.kind, outcome).inc()
        elapsed = self._clock.now() - rto_clock_start(header.detected_at, header.decided_at)
        RUN_DURATION.labels(header.service, header.kind, outcome).observe(max(elapsed, 0.0))
        event = "run_succeeded" if ok else "run_failed"
        (run.log.info if ok else run.log.error)(
            event, target=header.target, error=error, rto_remaining=self._rto_remaining(header)
        )

    async def _steps(self, run: _Run) -> None:
        async with asyncio.TaskGroup() as tg:
            for step in run.header.steps:
                tg.create_task(self._step(run, step), name=f"{run.header.run_id}:{step.name}")

    async def _step(self, run: _Run, step: Step) -> None:
        history = run.steps[step.name]
        try:
            if history.status in FINAL_STEP_STATUSES:
                return
            for dep in step.after:
                await run.ended[dep].wait()
            if history.status is StepStatus.PENDING and run.abort_error is not None:
                record = await self._append(
                    run.header,
                    JournalStatus.STEP_SKIPPED,
                    step=step.name,
                    error=f"not started: {run.abort_error}",
                )
                history.apply(record, step)
                run.log.warning("step_skipped", step=step.name, reason=run.abort_error)
                return
            await self._attempts(run, step, history)
        finally:
            run.ended[step.name].set()

    async def _attempts(self, run: _Run, step: Step, history: StepHistory) -> None:
        while history.status not in FINAL_STEP_STATUSES:
            if run.aborted is not None:
                await self._give_up(run, step, history, run.aborted)
                break
            if history.status is StepStatus.RETRYING:
                delay = self._backoff.delay(history.failed_attempts, self._rng)
                run.log.info(
                    "step_retry_scheduled",
                    step=step.name,
                    failed_attempts=history.failed_attempts,
                    retries=step.retries,
                    delay=round(delay, 3),
                    error=history.error,
                )
                await _sleep_unless(self._clock.sleep(delay), run.stop)
                if run.aborted is not None:
                    continue
            await self._attempt(run, step, history, history.last_attempt + 1)
        if history.status is StepStatus.FAILED and step.on_failure is OnFailure.ABORT:
            run.abort_error = run.abort_error or _abort_error(step, history.error)

    async def _give_up(self, run: _Run, step: Step, history: StepHistory, why: str) -> None:
        """An aborted run's step that is not in flight now: waiting to retry, or interrupted
        by a crash mid-abort (the resumed run re-enters nothing)."""
        if history.status is StepStatus.PENDING:
            status, error = JournalStatus.STEP_SKIPPED, f"not started: {why}"
        elif history.status is StepStatus.RUNNING:
            status, error = JournalStatus.STEP_FAILED, _interrupted(why)
        else:
            status, error = JournalStatus.STEP_FAILED, f"not retried; {why}"
        attempt = history.last_attempt
        record = await self._append(
            run.header, status, step=step.name, attempt=attempt, error=error, retryable=False
        )
        history.apply(record, step)
        run.log.warning(status.value, step=step.name, attempt=attempt, error=error)

    async def _attempt(self, run: _Run, step: Step, history: StepHistory, attempt: int) -> None:
        header = run.header
        record = await self._append(
            header, JournalStatus.STEP_STARTED, step=step.name, attempt=attempt
        )
        history.apply(record, step)
        run.log.info(
            "step_started",
            step=step.name,
            action=step.action,
            attempt=attempt,
            rto_remaining=self._rto_remaining(header),
        )
        approval = step.action == APPROVAL_ACTION
        if approval:
            await self._set_waiting_approval(header, True)
        started = self._clock.monotonic()
        outcome: ExecuteOutcome | None = None
        failure: Failure | None = None
        # If this attempt fails, the step has failed for good.
        last = history.failed_attempts >= step.retries
        # Whether the service state says "waiting for an approval": an approval step, or a
        # step whose earlier attempt left a sub-step waiting (a resume after a crash).
        waiting = [approval or bool(history.awaiting_approval)]
        if waiting[0] and not approval:
            await self._set_waiting_approval(header, True)
        try:
            async with clock_timeout(self._clock, step.timeout, run.stop) as expiry:

                def cancel_reason() -> str | None:
                    if run.aborted is not None:
                        return run.aborted  # an operator aborted the run
                    if expiry.expired and last:
                        return (
                            f"step {step.name} timed out after {format_duration(step.timeout)}"
                            " on its last attempt"
                        )
                    return None

                outcome = await self._run_action(
                    run,
                    step,
                    attempt,
                    started + step.timeout,
                    history,
                    cancel_reason,
                    waiting,
                )
        except StoreError:
            raise  # the approvals read failed: no journal, no further step
        except Exception as exc:
            if expiry.interrupted and run.aborted is not None:
                failure = Failure(_interrupted(run.aborted), False)
            elif expiry.expired:
                failure = Failure(f"attempt timed out after {format_duration(step.timeout)}", True)
            else:
                failure = classify(exc)
        elapsed = self._clock.monotonic() - started
        RUNBOOK_STEP_DURATION.labels(step.action).observe(elapsed)
        if waiting[0]:
            await self._set_waiting_approval(header, False)
        if failure is None and outcome is not None:
            changed = "changed" if outcome.changed else "unchanged"
            detail = f"{changed}: {outcome.detail}" if outcome.detail else changed
            record = await self._append(
                header, JournalStatus.STEP_SUCCEEDED, step=step.name, attempt=attempt, detail=detail
            )
            history.apply(record, step)
            RUNBOOK_STEP_ATTEMPTS.labels(header.service, step.action, "succeeded").inc()
            run.log.info(
                "step_succeeded",
                step=step.name,
                attempt=attempt,
                changed=outcome.changed,
                duration=round(elapsed, 3),
                rto_remaining=self._rto_remaining(header),
            )
            return
        assert failure is not None
        record = await self._append(
            header,
            JournalStatus.STEP_FAILED,
            step=step.name,
            attempt=attempt,
            error=failure.error,
            retryable=failure.retryable,
        )
        history.apply(record, step)
        label = (
            "aborted"
            if expiry.interrupted
            else "timeout"
            if expiry.expired
            else "retryable"
            if failure.retryable
            else "failed"
        )
        RUNBOOK_STEP_ATTEMPTS.labels(header.service, step.action, label).inc()
        run.log.warning(
            "step_failed",
            step=step.name,
            attempt=attempt,
            error=failure.error,
            retryable=failure.retryable,
            final=history.status is StepStatus.FAILED,
            duration=round(elapsed, 3),
        )

    async def _run_action(
        self,
        run: _Run,
        step: Step,
        attempt: int,
        deadline: float,
        history: StepHistory,
        cancel_reason: Callable[[], str | None],
        waiting: list[bool],
    ) -> ExecuteOutcome:
        header = run.header
        earlier = tuple(note.detail for note in history.progress)

        async def progress(detail: Mapping[str, Any]) -> None:
            try:
                text = json.dumps(dict(detail), sort_keys=True, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise ActionFailed(f"step {step.name}: progress note is not JSON: {exc}") from exc
            record = await self._append(
                header, JournalStatus.STEP_PROGRESS, step=step.name, attempt=attempt, detail=text
            )
            history.apply(record, step)
            if {"awaiting_approval", "approved", "substep"} & detail.keys():
                now_waiting = bool(history.awaiting_approval)
                if now_waiting != waiting[0]:
                    await self._set_waiting_approval(header, now_waiting)
                    waiting[0] = now_waiting

        try:
            action = self._actions(step.action)
        except KeyError as exc:
            raise ActionFailed(f"no implementation for action {step.action!r}") from exc
        try:
            params = render_params(
                step,
                service=header.service,
                source_region=header.source,
                target_region=header.target,
                primary_region=header.primary,
            )
        except ValueError as exc:
            raise ActionFailed(f"invalid parameters for {step.action}: {exc}") from exc
        ctx = StepContext(
            service=header.service,
            run_id=header.run_id,
            step=step.name,
            attempt=attempt,
            kind=header.kind,
            source_region=header.source,
            target_region=header.target,
            primary_region=header.primary,
            params=params,
            aws=self._aws.with_role(step.aws),
            clock=self._clock,
            deadline=deadline,
            approvals=self._store,
            facts=header.facts,
            progress=progress,
            history=earlier,
            cancel_reason=cancel_reason,
        )
        report = await action.check(ctx)
        if not report.ready and attempt == 1:
            findings = "; ".join(report.findings) or "no reason given"
            raise ActionFailed(f"precondition not met: {findings}")
        outcome = await action.execute(ctx)
        await action.verify(ctx)
        return outcome

    # -- the store -----------------------------------------------------------------------
    async def _append(
        self, header: RunHeader, status: JournalStatus, **fields: Any
    ) -> JournalRecord:
        token = self._token()
        if token is None:
            raise NotLeader(f"not the leader: run {header.run_id} cannot write its journal")
        record = JournalRecord(
            run_id=header.run_id,
            service=header.service,
            status=status,
            at=self._clock.now(),
            token=token,
            policy_version=header.policy_version,
            kind=header.kind if status is JournalStatus.RUN_STARTED else "",
            source_region=header.source if status is JournalStatus.RUN_STARTED else "",
            target_region=header.target if status is JournalStatus.RUN_STARTED else "",
            **fields,
        )
        await self._guard(self._store.append_journal(record))
        return record

    async def _guard(self, call: Awaitable[T]) -> T:
        """A store call, bounded even if the implementation does not bound itself."""
        # A margin over the store's own timeout, so its own (clearer) error wins the race.
        limit = max(self._store.timeout, 0.0) * 2 + 1.0
        try:
            async with asyncio.timeout(limit):
                return await call
        except TimeoutError as exc:
            raise StoreUnavailable(f"the store did not answer within {limit:g}s") from exc

    async def _save_state(self, state: ServiceState) -> None:
        token = self._token()
        if token is None:
            raise NotLeader(f"not the leader: {state.service}'s state cannot be saved")
        await self._guard(self._store.save_state(state, token))

    async def _load_state(self, header: RunHeader) -> ServiceState | None:
        """The service's state; a corrupt one (quarantined by the store) counts as none, so
        the run's own record, which is the truth while it runs, replaces it."""
        try:
            return await self._guard(self._store.load_state(header.service))
        except CorruptState as exc:
            log.warning(
                "service_state_corrupt_replaced_by_run",
                run_id=header.run_id,
                service=header.service,
                key=exc.key,
            )
            return None

    async def _set_waiting_approval(self, header: RunHeader, waiting: bool) -> None:
        state = await self._load_state(header)
        if state is None or state.run is None or state.run.id != header.run_id:
            return
        updated = set_waiting_approval(state, waiting)
        if updated is not state:
            await self._save_state(updated)

    async def _adopt_state(self, header: RunHeader) -> None:
        """A resumed run must show in the service state (API, status page) and block other
        runs while it moves things, even if the crash came before the first state write."""
        state = await self._load_state(header)
        if state is None:
            state = ServiceState(header.service, active_region=header.source)
        run = state.run
        if run is not None and run.id == header.run_id:
            return
        if run is None and state.active_region == header.target:
            return  # settled already: the crash came between the state write and run end
        if run is not None and run.status is RunStatus.RUNNING:
            log.warning(
                "run_state_superseded",
                run_id=header.run_id,
                service=header.service,
                other_run=run.id,
            )
            return
        await self._save_state(replace(state, run=_run_info(header)))

    async def _settle_state(self, header: RunHeader, ok: bool, error: str) -> None:
        """Record the run's end in the service state (idempotent: a resume after a crash
        between this and ``run_succeeded`` finds it already done)."""
        now = self._clock.now()
        state = await self._load_state(header)
        if state is None:
            state = ServiceState(header.service, active_region=header.source)
        run = state.run
        if run is not None and run.id == header.run_id:
            if run.status is not RunStatus.RUNNING:
                return
        elif ok and run is None and state.active_region == header.target:
            return
        elif run is not None and run.status is RunStatus.RUNNING:
            log.warning(
                "run_state_superseded",
                run_id=header.run_id,
                service=header.service,
                other_run=run.id,
            )
            return
        else:
            # The state never learned of this run (a crash between run_started and the
            # first state write): put it in so that finish_run moves the active region.
            state = replace(state, run=_run_info(header))
        await self._save_state(finish_run(state, now, ok, error))

    async def _fail_unreadable(
        self, run_id: str, records: Sequence[JournalRecord], exc: JournalError
    ) -> None:
        """A run whose journal cannot be read back is failed, not retried forever."""
        log.error("run_journal_unreadable", run_id=run_id, error=str(exc))
        if not records:
            return
        first = records[0]
        token = self._token()
        if token is None:
            raise NotLeader(f"not the leader: run {run_id} cannot be closed")
        await self._guard(
            self._store.append_journal(
                JournalRecord(
                    run_id=run_id,
                    service=first.service,
                    status=JournalStatus.RUN_FAILED,
                    at=self._clock.now(),
                    token=token,
                    policy_version=first.policy_version,
                    error=f"journal unreadable, run abandoned: {exc}",
                )
            )
        )

    def _rto_remaining(self, header: RunHeader) -> float:
        remaining = rto_remaining(
            header.rto, header.detected_at, header.decided_at, self._clock.now()
        )
        return round(remaining, 3)


def _abort_error(step: Step, error: str) -> str:
    return f"step {step.name} failed: {error}"


def _interrupted(why: str) -> str:
    """A step in flight when the run was aborted: it may have done what it was doing."""
    return f"interrupted in flight, its effect may have landed; {why}"


async def _sleep_unless(sleep: Awaitable[None], stop: asyncio.Event) -> None:
    """``sleep``, cut short when ``stop`` is set (both tasks owned and ended here)."""
    sleeper = asyncio.ensure_future(sleep)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleeper, stopped):
            t.cancel()
        await asyncio.gather(sleeper, stopped, return_exceptions=True)


def _run_info(header: RunHeader) -> RunInfo:
    return RunInfo(
        id=header.run_id,
        kind=RunKind(header.kind),
        source=header.source,
        target=header.target,
        started_at=header.decided_at,
        initiated_by=_initiator(header),
    )


def _initiator(header: RunHeader) -> Initiator:
    # Only the engine's own decisions carry a detection time; an operator's command need not.
    return Initiator.OPERATOR if header.detected_at is None else Initiator.POLICY


def _check_dag(service: str, kind: str, steps: Sequence[Step]) -> None:
    """Every ``after`` names a step of the same runbook, and there is no cycle (policy
    validation checks the same; a run must not hang on a plan that slipped through)."""
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise RunRejected(f"{service} {kind} runbook has duplicate step names: {names}")
    pending = {s.name: set(s.after) for s in steps}
    for s in steps:
        unknown = set(s.after) - set(names)
        if unknown:
            raise RunRejected(
                f"{service} {kind} runbook: step {s.name!r} waits for unknown steps "
                f"{sorted(unknown)}"
            )
    while pending:
        ready = [n for n, deps in pending.items() if not deps]
        if not ready:
            raise RunRejected(f"{service} {kind} runbook has a cycle among steps {sorted(pending)}")
        for n in ready:
            del pending[n]
        for deps in pending.values():
            deps.difference_update(ready)


async def _first_store_error(call: Awaitable[None]) -> None:
    """Await ``call``; a store error from any of its tasks is raised as itself (FencedOut
    first: losing the lease outranks a slow store), not wrapped in an exception group."""
    try:
        await call
    except BaseExceptionGroup as group:
        for kind in (FencedOut, StoreUnavailable, StoreError):
            match, _ = group.split(kind)
            if match is not None:
                raise _leaf(match) from group
        raise


def _leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first
