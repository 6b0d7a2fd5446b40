"""Keeps the engine-state, run and leadership metrics in step with the controller.

The engine stays free of metrics: :class:`MetricsExporter` reads the controller's public
state (``snapshot``, ``token``, ``store_reachable``, ``policy_version``) after each engine
pass (``Controller.on_tick``) and on each decision change (``Controller.on_decision``)
and sets the gauges of :mod:`orchestrator.telemetry`. It remembers what it set, so that the
series of a service, region, vantage point or step that went away (a reload) are removed
rather than left frozen, and a pass that changes nothing costs a few comparisons per
service, not a ``labels()`` lookup per series.

Also here: the event-loop lag monitor (:func:`watch_loop_lag`), the engine
pass timer, the policy/build info and reload gauges (:func:`record_reload`,
:func:`record_build_info`), and :func:`metrics_reference`, which generates docs/metrics.md
from the metric definitions.

Contract: every hook here is cheap, never blocks and never raises into the controller (a
failure is logged and the next pass retries from scratch).
"""

from __future__ import annotations

import asyncio
import platform
from dataclasses import dataclass, field

from prometheus_client.metrics import MetricWrapperBase

import orchestrator
from orchestrator import telemetry
from orchestrator.clock import Clock
from orchestrator.daemon.control import ServiceSnapshot
from orchestrator.daemon.controller import Controller
from orchestrator.engine.state import Decision, RunStatus
from orchestrator.engine.vocabulary import Phase, Reason, Verdict
from orchestrator.policy.actions import APPROVAL_ACTION
from orchestrator.runbook.journal import SUBSTEP_STATUSES, StepStatus
from orchestrator.runbook.rto import RunProgress, rto_remaining
from orchestrator.telemetry import (
    ACTIVE_REGION,
    ASYNCIO_TASKS,
    BUILD_INFO,
    DECISION_CHANGES,
    DECISION_REASON,
    ENGINE_TICK_DURATION,
    EVENT_LOOP_LAG,
    FENCING_TOKEN,
    IS_LEADER,
    LEADER_TRANSITIONS,
    POLICY_DIFFERS_FROM_LEADER,
    POLICY_INFO,
    POLICY_LAST_RELOAD_SUCCESSFUL,
    POLICY_LAST_RELOAD_TIMESTAMP,
    REGION_VERDICT,
    RPO_SECONDS,
    RTO_SECONDS,
    RUN_AWAITING_APPROVAL,
    RUN_IN_PROGRESS,
    RUN_RTO_BUDGET_REMAINING,
    RUN_STEP_STATE,
    RUN_SUBSTEP_DURATION,
    RUN_SUBSTEP_STATE,
    SERVICE_PHASE,
    STORE_UP,
    VANTAGE_UP,
    get_logger,
)

log = get_logger("failoverd.metrics")

LOOP_LAG_INTERVAL = 0.25
MIN_INTERVAL = 1.0  # between two full exports (the default engine tick)
SERIES_PER_SERVICE = 36  # measured by bench/metrics.py; shown in docs/metrics.md

VERDICTS = tuple(v.value for v in Verdict)
PHASES = tuple(p.value for p in Phase)
STEP_STATES = ("pending", "running", "succeeded", "failed", "skipped")
SUBSTEP_STATES = SUBSTEP_STATUSES
# A step waiting for its next attempt is still the step in progress.
_STEP_STATE = {s: ("running" if s is StepStatus.RETRYING else s.value) for s in StepStatus}
_WAITING = frozenset({StepStatus.RUNNING, StepStatus.RETRYING})
# Bound once: an Enum member lookup costs ~100 ns on 3.11, paid per service per pass.
_RUN_RUNNING = RunStatus.RUNNING
_AWAITING_APPROVAL = Phase.AWAITING_APPROVAL.value

# The series a service's removal takes away. Run counters and histograms stay: they are
# history, and Prometheus reads a series that stops as the end of it.
_PER_SERVICE: tuple[MetricWrapperBase, ...] = (
    REGION_VERDICT,
    SERVICE_PHASE,
    DECISION_REASON,
    DECISION_CHANGES,
    ACTIVE_REGION,
    RTO_SECONDS,
    RPO_SECONDS,
    VANTAGE_UP,
    RUN_IN_PROGRESS,
    RUN_AWAITING_APPROVAL,
    RUN_RTO_BUDGET_REMAINING,
    RUN_STEP_STATE,
    RUN_SUBSTEP_STATE,
    RUN_SUBSTEP_DURATION,
)


@dataclass
class _Series:
    """What the exporter last set for one service (so it can skip and remove)."""

    regions: tuple[str, ...] = ()
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    phase: Phase | None = None
    reason_codes: tuple[Reason, ...] | None = None
    reasons: frozenset[str] = frozenset()
    active: str | None = None
    objectives: tuple[float, float] | None = None
    vantages: dict[tuple[str, str], float] = field(default_factory=dict)
    views: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)
    in_progress: float | None = None
    awaiting: float | None = None
    budget: bool = False  # the RTO budget series exists
    steps: dict[str, str] = field(default_factory=dict)
    substeps: dict[tuple[str, str], str] = field(default_factory=dict)


class MetricsExporter:
    """Exports one controller's state; ``install()`` hooks it in."""

    def __init__(
        self,
        controller: Controller,
        clock: Clock,
        *,
        backend: str,
        min_interval: float = MIN_INTERVAL,
    ) -> None:
        self._controller = controller
        self._clock = clock
        self._backend = backend
        self._min_interval = min_interval
        self._last_update: float | None = None
        self._series: dict[str, _Series] = {}
        self._leader: bool | None = None
        self._version: str | None = None

    def install(self) -> None:
        """Hook into the controller and export the state it starts with."""
        c = self._controller
        c.on_tick.append(self.ticked)
        c.on_decision.append(self.decision_changed)
        self._time_engine_passes()
        record_build_info()
        record_reload(True, c.policy_version, self._clock.now())  # the load at start
        self.update()

    # -- the hooks -----------------------------------------------------------------------
    def ticked(self) -> None:
        """The on_tick hook: after an engine pass, export everything, at most once per
        ``min_interval`` (passes also follow observation batches, many a second with many
        services; decision changes still show at once through :meth:`decision_changed`)."""
        now = self._clock.monotonic()
        last = self._last_update
        if last is not None and now - last < self._min_interval:
            return
        self.update()

    def update(self) -> None:
        """Export everything now."""
        self._last_update = self._clock.monotonic()
        try:
            self._update()
        except Exception:  # metrics must never stop the engine
            log.exception("metrics_update_failed")
            self._series.clear()  # the next pass sets every series again

    def decision_changed(self, decision: Decision) -> None:
        """The on_decision hook: count the change and export that service at once (its
        phase, reasons, and a run's start or end), whatever the throttle says."""
        try:
            DECISION_CHANGES.labels(decision.service).inc()
            snap = self._controller.snapshot(decision.service, evidence=False)
            if snap is not None:
                self._service(snap, self._clock.now())
        except Exception:
            log.exception("metrics_update_failed", service=decision.service)

    # -- engine pass timing --------------------------------------------------------------
    def _time_engine_passes(self) -> None:
        # The controller has no "pass started" hook: its engine loop calls evaluate_all
        # through the instance, so a timing wrapper set on the instance sees every pass
        # without any metric code in controller.py. It looks the method up on the class at
        # each call, so that it always times what the class does now.
        c, clock = self._controller, self._clock
        cls = type(c)

        async def timed_evaluate_all() -> None:
            started = clock.monotonic()
            try:
                await cls.evaluate_all(c)
            finally:
                ENGINE_TICK_DURATION.observe(max(0.0, clock.monotonic() - started))

        setattr(c, "evaluate_all", timed_evaluate_all)  # noqa: B010 (a method: mypy refuses =)

    # -- one pass ------------------------------------------------------------------------
    def _update(self) -> None:
        c = self._controller
        self._leadership(c)
        version = c.policy_version
        if version != self._version:
            self._version = version
            POLICY_INFO.info({"version": version})
        acting = c.leader_policy_version()
        POLICY_DIFFERS_FROM_LEADER.set(1 if acting and acting != version else 0)
        names = c.services()
        for gone in set(self._series) - set(names):
            self._remove_service(gone)
        now = self._clock.now()
        for name in names:
            snap = c.snapshot(name, evidence=False)
            if snap is not None:
                self._service(snap, now)

    def _leadership(self, c: Controller) -> None:
        token = c.token()
        leading = token is not None
        if leading != self._leader:
            if leading:
                LEADER_TRANSITIONS.labels("acquired").inc()
            elif self._leader is not None:
                LEADER_TRANSITIONS.labels("lost").inc()
            self._leader = leading
            IS_LEADER.set(1 if leading else 0)
        FENCING_TOKEN.set(token or 0)
        STORE_UP.labels(self._backend).set(1 if c.store_reachable else 0)

    def _service(self, snap: ServiceSnapshot, now: float) -> None:
        name = snap.service
        series = self._series.get(name)
        if series is None or series.regions != snap.regions:
            if series is not None:
                self._remove_service(name)
            series = self._series[name] = _Series(regions=snap.regions)
        objectives = (snap.rto, snap.rpo)
        if series.objectives != objectives:
            series.objectives = objectives
            RTO_SECONDS.labels(name).set(snap.rto)
            RPO_SECONDS.labels(name).set(snap.rpo)
        if series.active != snap.active_region:
            series.active = snap.active_region
            for region in snap.regions:
                ACTIVE_REGION.labels(name, region).set(1 if region == snap.active_region else 0)
        for region, rv in snap.verdicts.items():
            verdict = rv.verdict  # a StrEnum: compares equal to its value
            if series.verdicts.get(region) is not verdict:
                series.verdicts[region] = verdict
                for v in VERDICTS:
                    REGION_VERDICT.labels(name, region, v).set(1 if v == verdict else 0)
        self._vantages(name, series, snap)
        d = snap.decision
        if d is not None:
            self._decision(name, series, d)
        self._run(name, series, snap, now)

    def _vantages(self, name: str, series: _Series, snap: ServiceSnapshot) -> None:
        # The verdicts already say which vantage points pass and fail each region (local
        # probes, agents and the aws_health/cloudwatch pseudo-vantages alike): no second
        # look at the book's cells.
        views = [(region, rv.passing, rv.failing) for region, rv in snap.verdicts.items()]
        if views == series.views:
            return  # the common pass: nobody changed their mind
        series.views = views
        seen: dict[tuple[str, str], float] = {}
        for region, rv in snap.verdicts.items():
            for vantage in rv.passing:
                seen[(region, vantage)] = 1.0
            for vantage in rv.failing:
                seen[(region, vantage)] = 0.0
        old = series.vantages
        if seen == old:
            return
        for key in old.keys() - seen.keys():
            VANTAGE_UP.remove(name, *key)
        for key, up in seen.items():
            if old.get(key) != up:
                VANTAGE_UP.labels(name, *key).set(up)
        series.vantages = seen

    def _decision(self, name: str, series: _Series, d: Decision) -> None:
        if series.phase is not d.phase:
            series.phase = phase = d.phase
            for p in PHASES:
                SERVICE_PHASE.labels(name, p).set(1 if p == phase else 0)
        if series.reason_codes != d.reasons:
            series.reason_codes = d.reasons
            self._reasons(name, series, frozenset(r.value for r in d.reasons))

    def _reasons(self, name: str, series: _Series, reasons: frozenset[str]) -> None:
        if series.reasons == reasons:
            return
        for reason in series.reasons - reasons:
            DECISION_REASON.remove(name, reason)
        for reason in reasons - series.reasons:
            DECISION_REASON.labels(name, reason).set(1)
        series.reasons = reasons

    def _run(self, name: str, series: _Series, snap: ServiceSnapshot, now: float) -> None:
        run = snap.run
        running = run is not None and run.status is _RUN_RUNNING
        if series.in_progress != running:
            series.in_progress = float(running)
            RUN_IN_PROGRESS.labels(name).set(float(running))
        awaiting = float(
            snap.phase == _AWAITING_APPROVAL
            or (running and run is not None and _waiting_for_approval(run))
        )
        if series.awaiting != awaiting:
            series.awaiting = awaiting
            RUN_AWAITING_APPROVAL.labels(name).set(awaiting)
        if running and run is not None:
            # Recomputed at every pass: the run's progress is only re-read from the journal
            # when the engine refreshes it, the budget shrinks every second.
            budget = rto_remaining(run.rto, run.detected_at, run.decided_at, now)
            RUN_RTO_BUDGET_REMAINING.labels(name).set(budget)
            series.budget = True
        elif series.budget:
            RUN_RTO_BUDGET_REMAINING.remove(name)
            series.budget = False
        self._substeps(name, series, run)
        steps = {} if run is None else {s.name: _STEP_STATE[s.status] for s in run.steps}
        if steps == series.steps:
            return
        for step in series.steps.keys() - steps.keys():
            for state in STEP_STATES:
                RUN_STEP_STATE.remove(name, step, state)
        for step, state in steps.items():
            if series.steps.get(step) != state:
                for s in STEP_STATES:
                    RUN_STEP_STATE.labels(name, step, s).set(1 if s == state else 0)
        series.steps = steps

    def _substeps(self, name: str, series: _Series, run: RunProgress | None) -> None:
        """A step's own steps (a Region switch plan's): state and duration per sub-step."""
        subs = {} if run is None else {(s.name, x.name): x for s in run.steps for x in s.substeps}
        for step, sub in series.substeps.keys() - subs.keys():
            for state in SUBSTEP_STATES:
                RUN_SUBSTEP_STATE.remove(name, step, sub, state)
            RUN_SUBSTEP_DURATION.remove(name, step, sub)
        for (step, sub), x in subs.items():
            if series.substeps.get((step, sub)) != x.status:
                for state in SUBSTEP_STATES:
                    RUN_SUBSTEP_STATE.labels(name, step, sub, state).set(
                        1 if state == x.status else 0
                    )
            if x.duration is not None:
                RUN_SUBSTEP_DURATION.labels(name, step, sub).set(x.duration)
        series.substeps = {key: x.status for key, x in subs.items()}

    def _remove_service(self, name: str) -> None:
        self._series.pop(name, None)
        # By label match rather than from the cache: also right after a failed pass
        # cleared the cache.
        for metric in _PER_SERVICE:
            metric.remove_by_labels({"service": name})


def _waiting_for_approval(run: RunProgress) -> bool:
    return any(
        s.status in _WAITING and (s.action == APPROVAL_ACTION or bool(s.awaiting_approval))
        for s in run.steps
    )


async def watch_loop_lag(clock: Clock, interval: float = LOOP_LAG_INTERVAL) -> None:
    """Until cancelled: sleep ``interval`` on ``clock`` and observe how late the wake-up came
    in failoverd_event_loop_lag_seconds (time the loop spent on something else: a blocking
    call, a long engine pass)."""
    while True:
        due = clock.monotonic() + interval
        await clock.sleep(interval)
        EVENT_LOOP_LAG.observe(max(0.0, clock.monotonic() - due))
        ASYNCIO_TASKS.set(len(asyncio.all_tasks()))  # a leak shows as steady growth


# -- daemon-level metrics --------------------------------------------------------------------
def record_build_info() -> None:
    BUILD_INFO.info({"version": orchestrator.__version__, "python": platform.python_version()})


def record_reload(ok: bool, version: str, at: float) -> None:
    """A policy load or reload ended (``at``: wall clock). On success ``version`` is the set
    now in use; on failure the old set stays, and so does its info series."""
    POLICY_LAST_RELOAD_SUCCESSFUL.set(1 if ok else 0)
    if ok:
        POLICY_INFO.info({"version": version})
        POLICY_LAST_RELOAD_TIMESTAMP.set(at)


# -- the generated reference -----------------------------------------------------------------
REFERENCE_HEADER = """\
# Metrics reference

Generated from `orchestrator/telemetry.py` by `python -m orchestrator.daemon.metrics_export`
(`tests/unit/daemon/test_metrics_export.py` fails when this file is not current). Every metric has
the `failoverd_` prefix and base units; label values come from fixed vocabularies or from
the policies (service, region, vantage point, signal, step and action names), never from run
ids or error messages.

## Series per service

For a service with 3 regions watched from 3 vantage points, steady and with no run
recorded, the engine-state metrics give **{per_service} series** (measured by
`bench/metrics.py` with 1,000 such services: 36,749 service-labelled series):
`failoverd_region_verdict` 4 per region (12), `failoverd_service_phase` 7,
`failoverd_active_region` 1 per region (3), `failoverd_vantage_up` 1 per (region, vantage
point) that passes or fails (9; none while unknown), `failoverd_rto_seconds` and
`failoverd_rpo_seconds` (2), `failoverd_run_in_progress` and
`failoverd_run_awaiting_approval` (2), `failoverd_decision_changes_total` (1), and
`failoverd_decision_reason` one per reason of the current decision (0 when steady).

On top of that: a run adds `failoverd_run_rto_budget_remaining_seconds` (1, only while it
runs), `failoverd_run_step_state` (5 per step of the current or last run),
`failoverd_runs_started_total`/`failoverd_runs_finished_total` (1 each per kind and
initiator/outcome seen) and `failoverd_run_duration_seconds` (17 per kind and outcome);
local probes add `failoverd_probe_success` and `failoverd_probe_duration_seconds` per
(region, signal) (24 for 3 regions x 4 signals), plus failure counters per reason seen;
replication lag adds 2 per replica region. Daemon-wide series (leadership, store, AWS and
Health API calls, event loop, HTTP API) do not grow with services.

Rendering `/metrics` costs about 10x a `json.dumps` of the same samples (bench/metrics.py
prints the ratio measured in the same run): for 1,000 services (37k series, 2.8 MB) that
is 0.4-0.8 s of CPU per scrape on a 2-core CI machine; scrape such a daemon every 30 s or
more.
"""


def metrics_reference(per_service: int = SERIES_PER_SERVICE) -> str:
    """docs/metrics.md: every failoverd metric's name, type, labels and help, by name."""
    rows = []
    for value in vars(telemetry).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            kind = family.type
            name = family.name
            if kind == "counter":
                name += "_total"
            elif kind == "info":
                labels = telemetry.INFO_LABELS.get(family.name, ())
                name += "_info"
            if kind != "info":
                labels = tuple(getattr(value, "_labelnames", ()))
            shown = "gauge (info)" if kind == "info" else kind
            label_text = ", ".join(f"`{label}`" for label in labels) or "-"
            doc = family.documentation.replace("|", "\\|")
            rows.append(f"| `{name}` | {shown} | {label_text} | {doc} |")
    rows.sort()
    table = "\n".join(["| Name | Type | Labels | Help |", "| --- | --- | --- | --- |", *rows])
    return REFERENCE_HEADER.format(per_service=per_service) + "\n## Metrics\n\n" + table + "\n"


def main() -> int:
    print(metrics_reference(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
